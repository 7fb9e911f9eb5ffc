//! A Messages request as a Chat Completions request, for `openai` and `mock`
//! providers (docs/providers.md, "Messages to Chat Completions").

use serde_json::{json, Map, Value};

use super::MessagesBody;
use crate::api::ChatBody;

/// The request as Chat Completions, and the top-level fields (and tools, as
/// `tools.<type>`) it could not carry, in request order.
pub fn to_chat(body: &MessagesBody) -> (ChatBody, Vec<String>) {
    let mut out = Map::new();
    let mut dropped = Vec::new();
    let field = |name: &str| {
        body.raw(name)
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .unwrap_or(Value::Null)
    };
    let mut messages = Vec::new();
    let system = field("system");
    let system_text = blocks_text(&system);
    if !system_text.is_empty() {
        messages.push(json!({"role": "system", "content": system_text}));
    }
    for m in body.messages() {
        push_turn(&mut messages, m);
    }
    for (key, _) in &body.fields {
        match key.as_str() {
            "model" => {
                out.insert("model".into(), field("model"));
            }
            "messages" => {
                out.insert(
                    "messages".into(),
                    Value::Array(std::mem::take(&mut messages)),
                );
            }
            "system" => {}
            "max_tokens" | "temperature" | "top_p" | "stream" => {
                out.insert(key.clone(), field(key));
            }
            "stop_sequences" => {
                out.insert("stop".into(), field(key));
            }
            "metadata" => {
                if let Some(user) = field(key)["user_id"].as_str() {
                    out.insert("user".into(), user.into());
                }
            }
            "tools" => {
                let tools = field(key);
                let mut kept = Vec::new();
                for t in tools.as_array().into_iter().flatten() {
                    match t.get("input_schema") {
                        Some(schema) if t["type"].is_null() || t["type"] == "custom" => {
                            let mut f = json!({"name": t["name"], "parameters": schema});
                            if let Some(d) = t["description"].as_str() {
                                f["description"] = d.into();
                            }
                            kept.push(json!({"type": "function", "function": f}));
                        }
                        _ => dropped
                            .push(format!("tools.{}", t["type"].as_str().unwrap_or("unknown"))),
                    }
                }
                if !kept.is_empty() {
                    out.insert("tools".into(), Value::Array(kept));
                }
            }
            "tool_choice" => {
                let choice = field(key);
                let mapped = match choice["type"].as_str() {
                    Some("auto") => Some(json!("auto")),
                    Some("any") => Some(json!("required")),
                    Some("none") => Some(json!("none")),
                    Some("tool") => {
                        Some(json!({"type": "function", "function": {"name": choice["name"]}}))
                    }
                    _ => None,
                };
                match mapped {
                    Some(m) => {
                        out.insert("tool_choice".into(), m);
                    }
                    None => dropped.push(key.clone()),
                }
                if choice["disable_parallel_tool_use"] == true {
                    out.insert("parallel_tool_calls".into(), false.into());
                }
            }
            // thinking, top_k, output_config, context_management, service_tier, ...
            _ => dropped.push(key.clone()),
        }
    }
    if body.stream() {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let bytes = Value::Object(out).to_string();
    // what was built here is a valid chat body: it has messages
    let chat = ChatBody::parse(bytes.as_bytes()).unwrap_or_else(|_| {
        ChatBody::parse(br#"{"messages":[{"role":"user","content":""}]}"#)
            .unwrap_or_else(|_| unreachable!("a literal chat body parses"))
    });
    (chat, dropped)
}

/// The text of a string or of a list of blocks (text blocks only).
fn blocks_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => String::new(),
    }
}

/// One Anthropic turn as chat messages: a user turn's tool results become
/// `tool` messages (first, as Anthropic puts them), its text and images a
/// user message; an assistant turn's text and tool_use blocks one assistant
/// message with `tool_calls` (thinking left out).
fn push_turn(out: &mut Vec<Value>, m: &Value) {
    let role = m["role"].as_str().unwrap_or("user");
    if role == "system" {
        let text = blocks_text(&m["content"]);
        if !text.is_empty() {
            out.push(json!({"role": "system", "content": text}));
        }
        return;
    }
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return;
        }
        Value::Array(b) => b,
        _ => return,
    };
    if role == "assistant" {
        let text: String = blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        let calls: Vec<Value> = blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| {
                json!({"id": b["id"], "type": "function", "function": {
                    "name": b["name"],
                    "arguments": b.get("input").unwrap_or(&json!({})).to_string(),
                }})
            })
            .collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
        return;
    }
    let mut parts = Vec::new();
    for b in blocks {
        match b["type"].as_str() {
            Some("tool_result") => {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => blocks_text(other),
                };
                let content = if b["is_error"] == true {
                    format!("Error: {content}")
                } else {
                    content
                };
                out.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}),
                );
            }
            Some("text") => parts.push(json!({"type": "text", "text": b["text"]})),
            Some("image") => {
                let src = &b["source"];
                let url = match src["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src["media_type"].as_str().unwrap_or("image/png"),
                        src["data"].as_str().unwrap_or_default()
                    ),
                    _ => src["url"].as_str().unwrap_or_default().to_string(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return;
    }
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if only_text {
        Value::from(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        )
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
}
