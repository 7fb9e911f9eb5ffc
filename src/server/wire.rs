//! How a stream's chunks reach the client, by the API it speaks: OpenAI
//! chat chunks (`data: ...`, `data: [DONE]` last), Anthropic events passed
//! through as the upstream framed them, or chat chunks translated to
//! Anthropic events, or as Responses events. The closing cost comment comes
//! before `[DONE]` on chat, after the terminal event (message_stop,
//! response.completed) on Messages and Responses.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::json;

use crate::api::messages::events::{error_frame, Encoder};
use crate::api::responses::events as responses;
use crate::cost::Usage;
use crate::providers::Chunk;

pub enum Wire {
    Chat,
    /// Anthropic events from an anthropic provider: each chunk holds its frame.
    Messages,
    /// Chat chunks from another provider, as Anthropic events.
    MessagesFromChat(Box<Encoder>),
    /// Chat chunks as Responses events.
    Responses(Box<responses::Encoder>),
}

/// `data: ...` and the blank line.
pub fn data_event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Wire {
    pub fn is_chat(&self) -> bool {
        matches!(self, Wire::Chat)
    }

    /// A chunk of the answer as sent to the client (`None`: nothing to send).
    pub fn chunk(&mut self, c: &Chunk) -> Option<Bytes> {
        match self {
            Wire::Chat => Some(data_event(&c.data)),
            Wire::Messages => Some(c.data.clone()),
            Wire::MessagesFromChat(enc) => {
                let out = enc.chunk(&c.data);
                (!out.is_empty()).then(|| Bytes::from(out))
            }
            Wire::Responses(enc) => {
                let out = enc.chunk(&c.data);
                (!out.is_empty()).then(|| Bytes::from(out))
            }
        }
    }

    /// The end of a complete stream (`done` is the upstream's last chunk),
    /// with the closing comment in its place.
    pub fn done(&mut self, done: &Chunk, usage: &Usage, comment: Bytes) -> VecDeque<Bytes> {
        match self {
            Wire::Chat => VecDeque::from([comment, Bytes::from_static(b"data: [DONE]\n\n")]),
            Wire::Messages => VecDeque::from([done.data.clone(), comment]),
            Wire::MessagesFromChat(enc) => {
                VecDeque::from([Bytes::from(enc.finish(usage)), comment])
            }
            Wire::Responses(enc) => VecDeque::from([Bytes::from(enc.finish(usage)), comment]),
        }
    }

    /// The event that ends a stream broken after commit.
    pub fn error(&mut self, message: &str) -> Bytes {
        match self {
            Wire::Chat => {
                let error = json!({"error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": null,
                    "code": "stream_interrupted",
                }});
                data_event(error.to_string().as_bytes())
            }
            Wire::Messages | Wire::MessagesFromChat(_) => Bytes::from(error_frame(message)),
            Wire::Responses(enc) => Bytes::from(enc.failed(message)),
        }
    }
}
