//! Anthropic Messages SSE -> OpenAI `chat.completion.chunk` events, through
//! the same classification as any other stream (so the chain holds the
//! stream until its first content and falls back before it the same way).
//!
//! message_start -> role chunk; text and thinking deltas -> content and
//! reasoning_content deltas; tool_use blocks -> tool_calls deltas (id and
//! name first, then argument fragments), indexed among the tool calls;
//! message_delta -> finish chunk; message_stop -> usage chunk, `[DONE]`;
//! ping -> nothing; error -> a failed attempt.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

use super::response::{error_message, finish_reason, now, AnthropicUsage};
use crate::providers::call::UpstreamError;
use crate::providers::stream::{classify_event, Chunk, UpstreamStream};

/// What an Anthropic content block (by its `index`) turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, with its index among the message's tool calls.
    Tool(usize),
    /// The forced `response_format` tool: its input is content.
    JsonTool,
    Other,
}

/// The state of one stream's translation.
pub struct Translator {
    json_tool: Option<String>,
    id: String,
    model: String,
    created: u64,
    usage: AnthropicUsage,
    blocks: HashMap<u64, Block>,
    tool_calls: usize,
    answered_by_json_tool: bool,
    finished: bool,
    stopped: bool,
}

impl Translator {
    pub fn new(json_tool: Option<String>) -> Self {
        Translator {
            json_tool,
            id: String::new(),
            model: String::new(),
            created: now(),
            usage: AnthropicUsage::default(),
            blocks: HashMap::new(),
            tool_calls: 0,
            answered_by_json_tool: false,
            finished: false,
            stopped: false,
        }
    }

    /// Whether `message_stop` was seen (the stream ended well).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether `message_delta` (with the stop reason) was seen: the answer
    /// is complete even if `message_stop` never comes.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// One Anthropic event (`event` is the SSE event name, used when the data
    /// carries no `type`) -> the OpenAI chunk payloads to emit, `[DONE]` last.
    pub fn event(&mut self, event: &str, data: &str) -> Result<Vec<String>, UpstreamError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| UpstreamError::BadBody(format!("malformed stream event: {e}")))?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(event);
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.id = str_of(m, "id").to_string();
                self.model = str_of(m, "model").to_string();
                self.usage.update(m.get("usage"));
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let b = v.get("content_block").unwrap_or(&Value::Null);
                let block = match str_of(b, "type") {
                    "text" => Block::Text,
                    "thinking" => Block::Thinking,
                    "tool_use" if self.json_tool.as_deref() == Some(str_of(b, "name")) => {
                        self.answered_by_json_tool = true;
                        Block::JsonTool
                    }
                    "tool_use" => {
                        let i = self.tool_calls;
                        self.tool_calls += 1;
                        out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": i,
                                "id": str_of(b, "id"),
                                "type": "function",
                                "function": {"name": str_of(b, "name"), "arguments": ""},
                            }]}),
                            None,
                        ));
                        Block::Tool(i)
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
                // a block may start with text already in it
                let first = match block {
                    Block::Text => str_of(b, "text"),
                    Block::Thinking => str_of(b, "thinking"),
                    _ => "",
                };
                out.extend(self.delta(block, first));
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = self.blocks.get(&index).copied().unwrap_or(Block::Other);
                let d = v.get("delta").unwrap_or(&Value::Null);
                let piece = match str_of(d, "type") {
                    "text_delta" => str_of(d, "text"),
                    "thinking_delta" => str_of(d, "thinking"),
                    "input_json_delta" => str_of(d, "partial_json"),
                    // signature_delta, citations_delta, ...
                    _ => "",
                };
                out.extend(self.delta(block, piece));
            }
            "message_delta" => {
                self.usage.update(v.get("usage"));
                let stop = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                out.push(self.finish(stop));
            }
            "message_stop" => {
                if !self.finished {
                    out.push(self.finish(None));
                }
                out.push(
                    json!({
                        "id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model,
                        "choices": [], "usage": self.usage.to_openai(),
                    })
                    .to_string(),
                );
                out.push("[DONE]".into());
                self.stopped = true;
            }
            "error" => {
                let msg = error_message(&v).unwrap_or_else(|| "an error event".into());
                return Err(UpstreamError::ErrorInBody(msg));
            }
            // ping, content_block_stop, and event types added later
            _ => {}
        }
        Ok(out)
    }

    /// A piece of a block as an OpenAI delta; nothing for an empty piece.
    fn delta(&self, block: Block, piece: &str) -> Option<String> {
        if piece.is_empty() {
            return None;
        }
        let delta = match block {
            Block::Text | Block::JsonTool => json!({ "content": piece }),
            Block::Thinking => json!({ "reasoning_content": piece }),
            Block::Tool(i) => {
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            }
            Block::Other => return None,
        };
        Some(self.chunk(delta, None))
    }

    fn finish(&mut self, stop: Option<&str>) -> String {
        self.finished = true;
        let reason = finish_reason(stop, self.answered_by_json_tool);
        self.chunk(json!({}), Some(reason))
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk",
            "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

struct State<E> {
    events: E,
    translator: Translator,
    pending: VecDeque<Result<Chunk, UpstreamError>>,
    done: bool,
}

/// Turn an Anthropic SSE byte stream into classified OpenAI chunks. Ends
/// after `message_stop`; a stream that ends without it is an interruption.
pub fn from_sse<S, E>(bytes: S, translator: Translator, max_event: usize) -> UpstreamStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let state = State {
        events: crate::providers::sse::events(bytes, max_event),
        translator,
        pending: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.pending.pop_front() {
                return Some((item, s));
            }
            if s.done {
                return None;
            }
            match s.events.next().await {
                // the answer was complete: end it as message_stop would
                None if s.translator.finished() => {
                    s.done = true;
                    match s
                        .translator
                        .event("message_stop", r#"{"type":"message_stop"}"#)
                    {
                        Ok(payloads) => {
                            s.pending.extend(payloads.iter().map(|p| classify_event(p)))
                        }
                        Err(e) => s.pending.push_back(Err(e)),
                    }
                }
                None => {
                    s.done = true;
                    let err = UpstreamError::MidStream(
                        "the upstream closed the stream before message_stop".into(),
                    );
                    return Some((Err(err), s));
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                Some(Ok(ev)) => {
                    if ev.data.is_empty() {
                        continue;
                    }
                    match s.translator.event(&ev.event, &ev.data) {
                        Ok(payloads) => {
                            for p in payloads {
                                let chunk = classify_event(&p);
                                let failed = chunk.is_err();
                                s.pending.push_back(chunk);
                                if failed {
                                    s.done = true;
                                    break;
                                }
                            }
                            s.done |= s.translator.stopped();
                        }
                        // not JSON: dropped after the first content, a failed
                        // attempt before it (as on OpenAI streams)
                        Err(UpstreamError::BadBody(_))
                            if serde_json::from_str::<serde::de::IgnoredAny>(&ev.data).is_err() =>
                        {
                            return Some((Ok(Chunk::malformed(&ev.data)), s));
                        }
                        Err(e) => {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                    }
                }
            }
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
