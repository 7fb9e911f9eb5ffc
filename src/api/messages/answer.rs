//! A Chat Completions answer as an Anthropic message.

use serde_json::{json, Value};

use crate::cost::Usage;

/// `msg_` and 24 random hex digits.
pub fn message_id() -> String {
    crate::api::random_id("msg")
}

/// finish_reason -> stop_reason.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage`: input excludes the cached tokens.
pub fn usage_json(u: &Usage) -> Value {
    let cached = u.cached.min(u.prompt);
    let written = u.cache_write.min(u.prompt - cached);
    json!({
        "input_tokens": u.prompt - cached - written,
        "output_tokens": u.completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    })
}

/// A tool call's `arguments` string as an object (`{}` when it is not one).
pub fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// The chat completion `body` as an Anthropic message; `usage` as priced.
pub fn from_chat(body: &[u8], usage: Option<Usage>) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": f["name"],
            "input": tool_input(f["arguments"].as_str().unwrap_or_default()),
        }));
    }
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": v["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage_json(&usage.unwrap_or_default()),
    })
}

/// For tiers with `validate_output`: an Anthropic message with no
/// non-whitespace text and no tool call is not an answer.
pub fn worth_serving(body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let answered = v["content"].as_array().is_some_and(|blocks| {
        blocks.iter().any(|b| match b["type"].as_str() {
            Some("text") => b["text"].as_str().is_some_and(|t| !t.trim().is_empty()),
            Some("tool_use" | "server_tool_use") => true,
            _ => false,
        })
    });
    if answered {
        Ok(())
    } else {
        Err("the answer has no text and no tool call".into())
    }
}
