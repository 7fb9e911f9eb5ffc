//! Chat Completions chunks as Anthropic stream events: message_start (sent
//! with the first content, so withheld until commit), content blocks for
//! text and for each tool call (text_delta, input_json_delta), and at the
//! end message_delta (stop reason, usage) and message_stop. Reasoning deltas
//! are left out: Anthropic's thinking blocks carry a signature no other
//! provider can give.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::api::chunk_probe::ChunkProbe;

use super::answer::{message_id, stop_reason, usage_json};
use crate::cost::Usage;

/// One SSE event: `event: name` and its data.
pub fn frame(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The event that ends a stream broken after commit.
pub fn error_frame(message: &str) -> String {
    frame(
        "error",
        &json!({"type": "error", "error": {
            "type": "api_error",
            "message": message,
            "code": "stream_interrupted",
        }}),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool call, by its index among the chat tool calls.
    Tool(u64),
}

/// The state of one stream's translation.
pub struct Encoder {
    id: String,
    model: String,
    started: bool,
    /// The open block and its index.
    open: Option<(usize, Block)>,
    next_index: usize,
    /// Chat tool-call index -> block index.
    tools: HashMap<u64, usize>,
    stop: &'static str,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            id: message_id(),
            model: String::new(),
            started: false,
            open: None,
            next_index: 0,
            tools: HashMap::new(),
            stop: "end_turn",
        }
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        out.push_str(&frame(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
    }

    fn close(&mut self, out: &mut String) {
        if let Some((index, _)) = self.open.take() {
            out.push_str(&frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open(&mut self, block: Block, content_block: Value, out: &mut String) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, block));
        out.push_str(&frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    /// One chat chunk's payload -> the events to send (maybe none).
    pub fn chunk(&mut self, data: &[u8]) -> String {
        let mut out = String::new();
        let Ok(probe) = serde_json::from_slice::<ChunkProbe>(data) else {
            return out;
        };
        if self.model.is_empty() {
            self.model = probe.model.unwrap_or_default();
        }
        for choice in probe.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.start(&mut out);
                    let index = match self.open {
                        Some((i, Block::Text)) => i,
                        _ => self.open(Block::Text, json!({"type": "text", "text": ""}), &mut out),
                    };
                    out.push_str(&frame(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": text}}),
                    ));
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    self.start(&mut out);
                    let f = call.function.unwrap_or_default();
                    let index = match self.tools.get(&call.index) {
                        Some(&i) => i,
                        None => {
                            let block = json!({
                                "type": "tool_use",
                                "id": call.id.unwrap_or_else(|| format!("toolu_{}", call.index)),
                                "name": f.name.unwrap_or_default(),
                                "input": {},
                            });
                            let i = self.open(Block::Tool(call.index), block, &mut out);
                            self.tools.insert(call.index, i);
                            i
                        }
                    };
                    if let Some(args) = f.arguments.filter(|a| !a.is_empty()) {
                        out.push_str(&frame(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": args}}),
                        ));
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.stop = stop_reason(Some(reason));
            }
        }
        out
    }

    /// The end of a complete stream: the open block closed, message_delta
    /// with the stop reason and `usage`, message_stop.
    pub fn finish(&mut self, usage: &Usage) -> String {
        let mut out = String::new();
        self.start(&mut out);
        self.close(&mut out);
        out.push_str(&frame(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": null},
                "usage": usage_json(usage)}),
        ));
        out.push_str(&frame("message_stop", &json!({"type": "message_stop"})));
        out
    }
}
