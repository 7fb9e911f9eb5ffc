//! The Messages API passed through (POST /v1/messages to an `anthropic`
//! provider): the client's body as it came (its model set, thinking made
//! safe across tiers by `api::messages`), the answer and the events as the
//! upstream sent them. Events are classified like translated ones, so the
//! chain holds the stream until its first content delta (message_start is
//! withheld until commit) and prices it from its usage.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderValue;
use serde_json::Value;

use super::response::{error_message, AnthropicUsage};
use crate::config::Limits;
use crate::providers::call::{Forward, UpstreamError};
use crate::providers::stream::{Chunk, ChunkKind, UpstreamStream};

/// A Messages request for an anthropic provider, ready to send.
pub struct RawRequest<'a> {
    pub body: Bytes,
    pub forward: Forward<'a>,
    /// The client's `anthropic-beta`, passed on.
    pub beta: Option<&'a HeaderValue>,
    pub limits: Limits,
}

/// `event: name` and `data`, as the client will read them.
fn frame(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// How far a passed-through stream got.
#[derive(Default)]
struct Seen {
    usage: AnthropicUsage,
    /// message_delta (with the stop reason) came: the answer is complete.
    finished: bool,
}

impl Seen {
    /// One event as a chunk.
    fn classify(&mut self, name: &str, data: &str) -> Result<Chunk, UpstreamError> {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Ok(Chunk::malformed(data));
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string();
        let mut chunk = Chunk {
            data: frame(&kind, data),
            kind: ChunkKind::Preamble,
            usage: None,
            text_len: 0,
            finish: false,
        };
        match kind.as_str() {
            "message_start" => self
                .usage
                .update(v.get("message").and_then(|m| m.get("usage"))),
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                chunk.kind = ChunkKind::Content;
                chunk.text_len = ["text", "partial_json", "thinking"]
                    .iter()
                    .filter_map(|k| d.get(*k).and_then(Value::as_str))
                    .map(str::len)
                    .sum();
            }
            "content_block_stop" => chunk.kind = ChunkKind::Content,
            "message_delta" => {
                self.usage.update(v.get("usage"));
                self.finished = true;
                chunk.kind = ChunkKind::Content;
                chunk.finish = true;
                chunk.usage = self.usage.valid();
            }
            "message_stop" => chunk.kind = ChunkKind::Done,
            "error" => {
                let msg = error_message(&v).unwrap_or_else(|| "an error event".into());
                return Err(UpstreamError::ErrorInBody(msg));
            }
            // content_block_start, ping, and what a newer API adds
            _ => {}
        }
        Ok(chunk)
    }
}

/// The events of an Anthropic stream as chunks holding their own frames.
/// Ends after message_stop; a body that ends without it is an interruption,
/// unless message_delta came (then message_stop is supplied).
pub fn raw_events<S, E>(bytes: S, max_event: usize) -> UpstreamStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    struct St {
        events: crate::providers::sse::Events,
        seen: Seen,
        pending: VecDeque<Result<Chunk, UpstreamError>>,
        done: bool,
    }
    let st = St {
        events: crate::providers::sse::events(bytes, max_event),
        seen: Seen::default(),
        pending: VecDeque::new(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        if let Some(item) = st.pending.pop_front() {
            return Some((item, st));
        }
        if st.done {
            return None;
        }
        loop {
            match st.events.next().await {
                None if st.seen.finished => {
                    st.done = true;
                    let mut stop = Chunk::done();
                    stop.data = frame("message_stop", r#"{"type":"message_stop"}"#);
                    return Some((Ok(stop), st));
                }
                None => {
                    st.done = true;
                    let err = UpstreamError::MidStream(
                        "the upstream closed the stream before message_stop".into(),
                    );
                    return Some((Err(err), st));
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Some(Ok(ev)) if ev.data.is_empty() => continue,
                Some(Ok(ev)) => {
                    let chunk = st.seen.classify(&ev.event, &ev.data);
                    st.done = match &chunk {
                        Ok(c) => c.kind == ChunkKind::Done,
                        Err(_) => true,
                    };
                    return Some((chunk, st));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_pass_through_classified() {
        let body = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
        );
        let bytes = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]);
        let chunks: Vec<Chunk> = raw_events(bytes, 1 << 20)
            .map(|c| c.unwrap())
            .collect()
            .await;
        let kinds: Vec<ChunkKind> = chunks.iter().map(|c| c.kind).collect();
        use ChunkKind::*;
        assert_eq!(
            kinds,
            [Preamble, Preamble, Preamble, Content, Content, Content, Done]
        );
        assert!(chunks[0].data.starts_with(b"event: message_start\ndata: {"));
        let usage = chunks[5].usage.unwrap();
        assert_eq!((usage.prompt, usage.completion), (10, 5));
        assert_eq!(chunks[3].text_len, 2);
    }
}
