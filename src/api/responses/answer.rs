//! A Chat Completions answer as a Responses `response` object.

use serde_json::{json, Map, Value};

use super::Echo;
use crate::cost::Usage;

/// `prefix_` and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Responses' `usage`.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached.min(u.prompt)},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt.saturating_add(u.completion),
    })
}

/// A message output item holding one output_text part.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

/// A call output item: `custom_tool_call` for the request's custom tools
/// (the function's one `input` argument unwrapped), else `function_call`.
pub fn call_item(echo: &Echo, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    if echo.custom_tools.iter().any(|t| t == name) {
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| arguments.to_string());
        return json!({
            "id": new_id("ctc"),
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "input": input,
        });
    }
    json!({
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// The response object around `output`.
pub fn response(
    echo: &Echo,
    (id, created_at, model): (&str, u64, &str),
    status: &str,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let mut r = Map::new();
    let defaults = [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("metadata", json!({})),
        ("parallel_tool_calls", json!(true)),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("text", json!({"format": {"type": "text"}})),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("store", json!(false)),
        ("user", Value::Null),
    ];
    r.insert("id".into(), id.into());
    r.insert("object".into(), "response".into());
    r.insert("created_at".into(), created_at.into());
    r.insert("status".into(), status.into());
    r.insert("error".into(), Value::Null);
    r.insert(
        "incomplete_details".into(),
        if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        },
    );
    r.insert("model".into(), model.into());
    r.insert("output".into(), Value::Array(output));
    for (k, default) in defaults {
        r.insert(k.into(), echo.fields.get(k).cloned().unwrap_or(default));
    }
    r.insert("usage".into(), usage.map_or(Value::Null, usage_json));
    Value::Object(r)
}

/// The chat completion `body` as a response; `usage` as priced.
pub fn from_chat(echo: &Echo, body: &[u8], usage: Option<Usage>) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    let mut output = Vec::new();
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&new_id("msg"), text, "completed"));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        output.push(call_item(
            echo,
            call["id"].as_str().unwrap_or_default(),
            f["name"].as_str().unwrap_or_default(),
            f["arguments"].as_str().unwrap_or("{}"),
            "completed",
        ));
    }
    let status = match choice["finish_reason"].as_str() {
        Some("length") => "incomplete",
        _ => "completed",
    };
    response(
        echo,
        (
            &new_id("resp"),
            now(),
            v["model"].as_str().unwrap_or_default(),
        ),
        status,
        output,
        Some(&usage.unwrap_or_default()),
    )
}
