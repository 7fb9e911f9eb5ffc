//! A Responses request as Chat Completions (docs/providers.md, "Responses in,
//! Chat Completions out").

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::api::ChatBody;
use crate::error::GatewayError;

/// Hosted tool types: dropped (and listed), never forced.
const HOSTED: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer_use",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "tool_search",
    "local_shell",
];

pub(super) fn hosted(kind: &str) -> bool {
    HOSTED.contains(&kind) || kind.starts_with("web_search") || kind.starts_with("computer_use")
}

pub(super) fn unsupported(param: &str, message: &str) -> GatewayError {
    GatewayError::BadParam {
        message: message.into(),
        param: param.into(),
        code: "unsupported_parameter",
    }
}

fn invalid(param: &str, message: String) -> GatewayError {
    GatewayError::BadParam {
        message,
        param: param.into(),
        code: "invalid_request",
    }
}

/// The request's top-level fields as sent, in order.
pub(super) type Fields = [(String, Box<RawValue>)];

/// A field read as a value (`Null` when absent).
pub(super) fn get(fields: &Fields, name: &str) -> Value {
    crate::api::raw_field(fields, name)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or(Value::Null)
}

/// Accepted and not passed on: state a stateless gateway keeps nothing of,
/// and hints no Chat Completions upstream reads.
const ACCEPTED: &[&str] = &[
    "store",
    "include",
    "metadata",
    "client_metadata",
    "safety_identifier",
    "prompt_cache_key",
    "background",
    "conversation",
    "previous_response_id",
    "instructions",
];

/// The chat body, what was dropped (in request order), the custom tools.
pub fn to_chat(
    fields: &Fields,
    (model, stream): (Option<String>, bool),
) -> Result<(ChatBody, Vec<String>, Vec<String>), GatewayError> {
    let mut out = Out::default();
    let mut dropped: Vec<String> = Vec::new();
    let mut custom = Vec::new();
    for (key, raw) in fields {
        let value = || serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
        match key.as_str() {
            // as sent
            "model" | "temperature" | "top_p" | "parallel_tool_calls" | "user" | "stream" => {
                out.0.push((key.clone(), raw.clone()));
            }
            "max_output_tokens" => out.0.push(("max_tokens".into(), raw.clone())),
            "input" => {
                if let Some(messages) = plain_messages(raw, fields) {
                    out.0.push(("messages".into(), messages));
                    continue;
                }
                let mut messages = Vec::new();
                let instructions = get(fields, "instructions");
                if let Some(text) = instructions.as_str().filter(|t| !t.is_empty()) {
                    messages.push(json!({"role": "system", "content": text}));
                }
                input_messages(&value(), &mut messages, &mut dropped)?;
                if messages.is_empty() {
                    return Err(GatewayError::invalid(
                        "'input' must not be empty",
                        Some("input"),
                    ));
                }
                out.insert("messages", &Value::Array(messages));
            }
            "tools" => {
                let mut tools = Vec::new();
                for t in value().as_array().into_iter().flatten() {
                    tool(t, &mut tools, &mut custom, &mut dropped);
                }
                if !tools.is_empty() {
                    out.insert("tools", &Value::Array(tools));
                }
            }
            "tool_choice" => match tool_choice(&value()) {
                Some(c) => out.insert("tool_choice", &c),
                None => dropped.push(key.clone()),
            },
            "text" => {
                if let Some(format) = response_format(&value()["format"]) {
                    out.insert("response_format", &format);
                }
            }
            "reasoning" => {
                if let Some(effort) = value()["effort"].as_str() {
                    out.insert("reasoning_effort", &effort.into());
                }
            }
            k if ACCEPTED.contains(&k) => {}
            _ => dropped.push(key.clone()),
        }
    }
    if stream {
        out.insert("stream_options", &json!({"include_usage": true}));
    }
    Ok((ChatBody::translated(out.0, model, stream), dropped, custom))
}

/// The chat body's fields, each serialized once.
#[derive(Default)]
struct Out(Vec<(String, Box<RawValue>)>);

impl Out {
    fn insert(&mut self, key: &str, v: &Value) {
        if let Ok(raw) = serde_json::value::to_raw_value(v) {
            self.0.push((key.to_string(), raw));
        }
    }
}

fn note(dropped: &mut Vec<String>, what: String) {
    if !dropped.contains(&what) {
        dropped.push(what);
    }
}

/// The text of a content value: a string, or the text of its parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or_else(|| p["refusal"].as_str()))
            .collect(),
        _ => String::new(),
    }
}

/// The assistant message calls are added to: the last message, when it is
/// an assistant's (its text, or calls before), else a new one.
fn assistant_for_calls(messages: &mut Vec<Value>) -> &mut Value {
    let reuse = messages.last().is_some_and(|m| m["role"] == "assistant");
    if !reuse {
        messages.push(json!({"role": "assistant", "content": null}));
    }
    let last = messages.len() - 1;
    &mut messages[last]
}

fn push_call(messages: &mut Vec<Value>, id: &Value, name: &Value, arguments: String) {
    let m = assistant_for_calls(messages);
    let call =
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
    match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        Some(calls) => calls.push(call),
        None => m["tool_calls"] = json!([call]),
    }
}

/// The common case, without reading `input` into values: a string, or
/// items that are all chat messages already (only `role` user, assistant
/// or system, string `content`, and `type` "message" or none). The
/// messages are then the input as sent (after `instructions`).
fn plain_messages(input: &RawValue, fields: &Fields) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Plain<'a> {
        #[serde(rename = "type", default, borrow)]
        kind: Option<&'a str>,
        #[serde(borrow)]
        role: &'a str,
        #[serde(borrow)]
        content: &'a RawValue,
    }
    let text = input.get();
    let instructions = crate::api::raw_field(fields, "instructions")
        .filter(|v| v.starts_with('"') && *v != "\"\"");
    let mut out = String::with_capacity(text.len() + 64);
    out.push('[');
    if let Some(i) = instructions {
        out.push_str(r#"{"role":"system","content":"#);
        out.push_str(i);
        out.push('}');
    }
    if text.starts_with('"') {
        if instructions.is_some() {
            out.push(',');
        }
        out.push_str(r#"{"role":"user","content":"#);
        out.push_str(text);
        out.push_str("}]");
        return RawValue::from_string(out).ok();
    }
    let items: Vec<Plain<'_>> = serde_json::from_str(text).ok()?;
    if items.is_empty() {
        return None;
    }
    for (n, item) in items.iter().enumerate() {
        let plain = matches!(item.kind, None | Some("message"))
            && matches!(item.role, "user" | "assistant" | "system")
            && item.content.get().starts_with('"');
        if !plain {
            return None;
        }
        if n > 0 || instructions.is_some() {
            out.push(',');
        }
        out.push_str(r#"{"role":""#);
        out.push_str(item.role);
        out.push_str(r#"","content":"#);
        out.push_str(item.content.get());
        out.push('}');
    }
    out.push(']');
    RawValue::from_string(out).ok()
}

fn input_messages(
    input: &Value,
    messages: &mut Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    let items = match input {
        Value::String(s) => {
            messages.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                "input",
                "'input' must be a string or a list of items".into(),
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let kind = match item["type"].as_str() {
            Some(k) => k,
            None if item.get("role").is_some() => "message",
            None => {
                return Err(invalid(
                    &format!("input[{i}].type"),
                    format!("input[{i}] has no type"),
                ))
            }
        };
        match kind {
            "message" => message(item, i, messages)?,
            "function_call" => push_call(
                messages,
                &item["call_id"],
                &item["name"],
                item["arguments"].as_str().unwrap_or("{}").to_string(),
            ),
            "custom_tool_call" => push_call(
                messages,
                &item["call_id"],
                &item["name"],
                json!({"input": item["input"]}).to_string(),
            ),
            "function_call_output" | "custom_tool_call_output" => messages.push(json!({
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": text_of(&item["output"]),
            })),
            "reasoning" => note(dropped, "input.reasoning".into()),
            "item_reference" => {
                return Err(unsupported(
                    &format!("input[{i}].type"),
                    "item_reference is not supported: this gateway stores no items; send the item itself",
                ))
            }
            other => {
                return Err(invalid(
                    &format!("input[{i}].type"),
                    format!("input[{i}] has an unknown type {other:?} (message, function_call, function_call_output, custom_tool_call, custom_tool_call_output, reasoning)"),
                ))
            }
        }
    }
    Ok(())
}

/// A message item: roles user, assistant, system, developer (sent as
/// system, which every upstream knows); text and image parts.
fn message(item: &Value, i: usize, messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = match item["role"].as_str() {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        other => {
            return Err(invalid(
                &format!("input[{i}].role"),
                format!(
                    "input[{i}] has an unknown role {other:?} (user, assistant, system, developer)"
                ),
            ))
        }
    };
    let content = &item["content"];
    let images: Vec<Value> = content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "input_image")
        .filter_map(|p| p["image_url"].as_str())
        .map(|url| json!({"type": "image_url", "image_url": {"url": url}}))
        .collect();
    let text = text_of(content);
    if role == "user" && !images.is_empty() {
        let mut parts = Vec::new();
        if !text.is_empty() {
            parts.push(json!({"type": "text", "text": text}));
        }
        parts.extend(images);
        messages.push(json!({"role": "user", "content": parts}));
    } else {
        messages.push(json!({"role": role, "content": text}));
    }
    Ok(())
}

/// One tool: functions as they are; custom (freeform) tools as a function
/// taking one string, `input`; namespaces flattened; hosted tools dropped.
fn tool(t: &Value, out: &mut Vec<Value>, custom: &mut Vec<String>, dropped: &mut Vec<String>) {
    let kind = t["type"].as_str().unwrap_or("function");
    match kind {
        "function" => {
            let mut f = json!({"name": t["name"], "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            if let Some(d) = t["description"].as_str() {
                f["description"] = d.into();
            }
            if let Some(s) = t["strict"].as_bool() {
                f["strict"] = s.into();
            }
            out.push(json!({"type": "function", "function": f}));
        }
        "custom" => {
            let name = t["name"].as_str().unwrap_or_default().to_string();
            let description = t["description"].as_str().unwrap_or_default();
            out.push(json!({"type": "function", "function": {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": {"input": {"type": "string", "description": "the tool's whole input, as free text"}},
                    "required": ["input"],
                },
            }}));
            custom.push(name);
        }
        "namespace" => {
            for inner in t["tools"].as_array().into_iter().flatten() {
                tool(inner, out, custom, dropped);
            }
        }
        k if hosted(k) => note(dropped, format!("tools.{k}")),
        k => note(dropped, format!("tools.{k}")),
    }
}

fn tool_choice(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Some(v.clone()),
        Value::Object(o)
            if matches!(
                o.get("type").and_then(Value::as_str),
                Some("function" | "custom")
            ) =>
        {
            Some(json!({"type": "function", "function": {"name": o.get("name")}}))
        }
        _ => None,
    }
}

fn response_format(format: &Value) -> Option<Value> {
    match format["type"].as_str()? {
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let mut schema = json!({"name": format.get("name").cloned().unwrap_or_else(|| "response".into()), "schema": format["schema"]});
            if let Some(strict) = format["strict"].as_bool() {
                schema["strict"] = strict.into();
            }
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => None,
    }
}
