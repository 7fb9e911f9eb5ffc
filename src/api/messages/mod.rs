//! Anthropic's Messages API in (docs/api.md, POST /v1/messages): the body as
//! the client sent it, checked as Anthropic checks it; passed to `anthropic`
//! providers as is (`for_anthropic`), translated to Chat Completions for the
//! others (`to_chat`) and their answers and streams back (`answer`, `events`).

pub mod answer;
pub mod events;
pub mod to_chat;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::body::{bad, model_field, parse_fields, raw_field, BodyError};

/// The content block types a request may hold.
const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
    "thinking",
    "redacted_thinking",
];

#[derive(Debug)]
pub struct MessagesBody {
    pub(super) fields: Vec<(String, Box<RawValue>)>,
    model: Option<String>,
    stream: bool,
    /// `messages`, read.
    messages: Vec<Value>,
}

impl MessagesBody {
    /// Read and check a body as Anthropic would: `model`, `max_tokens` and
    /// `messages` required, known block types, each `tool_result` answering
    /// a `tool_use` of the assistant turn before it.
    pub fn parse(bytes: &[u8]) -> Result<MessagesBody, BodyError> {
        let fields = parse_fields(bytes)?;
        let raw = |name: &str| raw_field(&fields, name);
        let model = model_field(&fields)?;
        let stream = match raw("stream") {
            None | Some("null") => false,
            Some(v) => serde_json::from_str::<bool>(v)
                .map_err(|_| bad("stream: Input should be a valid boolean", Some("stream")))?,
        };
        match raw("max_tokens") {
            None | Some("null") => {
                return Err(bad("max_tokens: Field required", Some("max_tokens")))
            }
            Some(v) if serde_json::from_str::<u64>(v).is_err() => {
                return Err(bad(
                    "max_tokens: Input should be a valid integer, at least 1",
                    Some("max_tokens"),
                ))
            }
            Some(_) => {}
        }
        let messages: Vec<Value> = match raw("messages") {
            None | Some("null") => return Err(bad("messages: Field required", Some("messages"))),
            Some(v) => serde_json::from_str(v)
                .map_err(|_| bad("messages: Input should be a valid list", Some("messages")))?,
        };
        if messages.is_empty() {
            return Err(bad(
                "messages: at least one message is required",
                Some("messages"),
            ));
        }
        check_messages(&messages)?;
        if let Some(system) = raw("system").filter(|s| *s != "null") {
            let v: Value = serde_json::from_str(system).unwrap_or(Value::Null);
            if !(v.is_string() || v.is_array()) {
                return Err(bad(
                    "system: Input should be a valid string or a list of text blocks",
                    Some("system"),
                ));
            }
        }
        Ok(MessagesBody {
            fields,
            model,
            stream,
            messages,
        })
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// A top-level field as raw JSON text.
    pub fn raw(&self, name: &str) -> Option<&str> {
        raw_field(&self.fields, name)
    }

    pub fn messages(&self) -> &[Value] {
        &self.messages
    }

    /// Characters of the prompt (system, messages, tools), for estimates.
    pub fn prompt_chars(&self) -> usize {
        ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| self.raw(k))
            .map(str::len)
            .sum()
    }

    /// What `for_anthropic` leaves out: `thinking`, when it is on and the
    /// last assistant turn that used tools has no signed thinking block.
    pub fn dropped_for_anthropic(&self) -> Vec<String> {
        if self.thinking_dropped() {
            vec!["thinking".into()]
        } else {
            Vec::new()
        }
    }

    fn thinking_dropped(&self) -> bool {
        let thinking_on = self
            .raw("thinking")
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .is_some_and(|t| t.is_object() && t["type"] != "disabled");
        if !thinking_on {
            return false;
        }
        let last_tool_turn = self.messages.iter().rev().find(|m| {
            m["role"] == "assistant"
                && m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use"))
        });
        let signed = |m: &Value| {
            m["content"].as_array().is_some_and(|c| {
                c.iter().any(|b| {
                    (b["type"] == "thinking"
                        && b["signature"].as_str().is_some_and(|s| !s.is_empty()))
                        || b["type"] == "redacted_thinking"
                })
            })
        };
        last_tool_turn.is_some_and(|m| !signed(m))
    }

    /// The body for an `anthropic` provider: as sent, `model` set to
    /// `upstream_model`, and thinking made safe across tiers (SPEC: an
    /// assistant turn served by another provider carries no signed thinking
    /// block, which Anthropic requires when `thinking` is on): unsigned
    /// thinking blocks are stripped, and `thinking` is dropped (and listed)
    /// when the last assistant turn that used tools has no signed one.
    pub fn for_anthropic(&self, upstream_model: &str) -> (Bytes, Vec<String>) {
        let unsigned = |b: &Value| {
            b["type"] == "thinking" && b["signature"].as_str().is_none_or(str::is_empty)
        };
        let strip = self
            .messages
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .any(unsigned);
        let drop_thinking = self.thinking_dropped();
        let messages = strip.then(|| {
            let cleaned: Vec<Value> = self
                .messages
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if let Some(blocks) = m.get_mut("content").and_then(Value::as_array_mut) {
                        blocks.retain(|b| !unsigned(b));
                    }
                    m
                })
                .collect();
            Value::from(cleaned).to_string()
        });
        let mut out = String::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 64,
        );
        out.push('{');
        out.push_str("\"model\":");
        out.push_str(&Value::from(upstream_model).to_string());
        let mut dropped = Vec::new();
        for (k, v) in &self.fields {
            let value = match k.as_str() {
                "model" => continue,
                "thinking" if drop_thinking => {
                    dropped.push("thinking".to_string());
                    continue;
                }
                "messages" => messages.as_deref().unwrap_or(v.get()),
                _ => v.get(),
            };
            out.push(',');
            out.push_str(&Value::from(k.as_str()).to_string());
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        (Bytes::from(out), dropped)
    }
}

/// Roles, block types, and each tool_result answering a tool_use of the
/// assistant turn just before.
fn check_messages(messages: &[Value]) -> Result<(), BodyError> {
    let mut offered: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        // Claude Code sends system messages amid the turns to newer models
        if !matches!(role, "user" | "assistant" | "system") {
            return Err(bad(
                format!("messages.{i}.role: Input should be 'user', 'assistant' or 'system'"),
                Some("messages"),
            ));
        }
        let blocks: &[Value] = match &m["content"] {
            Value::String(_) => &[],
            Value::Array(blocks) => blocks,
            _ => {
                return Err(bad(
                    format!("messages.{i}.content: Input should be a valid string or a list of content blocks"),
                    Some("messages"),
                ))
            }
        };
        for (j, b) in blocks.iter().enumerate() {
            let kind = b["type"].as_str().unwrap_or_default();
            if !BLOCK_TYPES.contains(&kind) {
                return Err(bad(
                    format!("messages.{i}.content.{j}.type: unknown content block type {kind:?}"),
                    Some("messages"),
                ));
            }
            if kind == "tool_result" {
                let id = b["tool_use_id"].as_str().unwrap_or_default();
                if role != "user" || !offered.contains(&id) {
                    return Err(bad(
                        format!("messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."),
                        Some("messages"),
                    ));
                }
            }
        }
        if role == "system" {
            continue;
        }
        offered = blocks
            .iter()
            .filter(|b| role == "assistant" && b["type"] == "tool_use")
            .filter_map(|b| b["id"].as_str())
            .collect();
    }
    Ok(())
}

/// An error body in Anthropic's shape; the gateway's `code` (and, for
/// `all_models_failed`, `attempts`) stay as extra fields of `error`.
pub fn error_body(status: u16, message: &str, code: &str) -> Value {
    json!({"type": "error", "error": {
        "type": error_type(status),
        "message": message,
        "code": code,
    }})
}

/// Anthropic's error type for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500 | 502 => "api_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests;
