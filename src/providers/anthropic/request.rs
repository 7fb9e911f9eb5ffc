//! OpenAI chat request -> Anthropic Messages request. What is translated,
//! and what is dropped, is listed in docs/providers.md.

use serde_json::{json, Map, Value};

/// `max_tokens` when neither the client nor the model's `max_output_tokens`
/// gives one (Anthropic requires it). Every Claude model can produce this many.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic's own fields, passed through when a client sends them.
const PASSTHROUGH: [&str; 2] = ["top_k", "thinking"];

/// Instruction added to `system` for `response_format: json_object`, and
/// for `json_schema` when it cannot be a forced tool.
const JSON_INSTRUCTION: &str =
    "Respond with a single valid JSON object only, with no text before or after it.";

/// Tool name used for `json_schema` when the schema names none usable.
const JSON_TOOL: &str = "json_response";

pub struct Translated {
    /// The Messages API body.
    pub body: Value,
    /// `response_format: json_schema` became this forced tool: its input is
    /// the answer's content.
    pub json_tool: Option<String>,
}

/// Translate a chat request for `model` (the upstream name);
/// `max_output_tokens` is the model's configured default for `max_tokens`.
pub fn translate(
    req: &Map<String, Value>,
    model: &str,
    max_output_tokens: Option<u64>,
) -> Translated {
    let mut system = Vec::new();
    let messages = messages(
        req.get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice),
        &mut system,
    );
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64))
        .or(max_output_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("max_tokens".into(), json!(max_tokens));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0-2, Anthropic's 0-1
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.get("top_p").filter(|v| v.is_number()) {
        out.insert("top_p".into(), p.clone());
    }
    let stops = stop_sequences(req.get("stop"));
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), json!(stops));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    for key in PASSTHROUGH {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }

    let tools = tools(req.get("tools"));
    let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
    let mut json_tool = None;
    if !tools.is_empty() {
        if let Some(choice) = tool_choice(req.get("tool_choice"), parallel) {
            out.insert("tool_choice".into(), choice);
        }
        out.insert("tools".into(), Value::Array(tools));
    }
    match response_format(req.get("response_format")) {
        Format::Text => {}
        Format::Json => system.push(text_block(JSON_INSTRUCTION)),
        Format::Schema { name, schema } => {
            let thinking = req
                .get("thinking")
                .and_then(|t| t.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t != "disabled");
            let object_schema = schema.get("type").and_then(Value::as_str) == Some("object");
            if out.contains_key("tools") || thinking || !object_schema {
                // a forced tool is impossible here: ask for the JSON instead
                system.push(text_block(&format!(
                    "{JSON_INSTRUCTION} The object must follow this JSON schema: {schema}"
                )));
            } else {
                out.insert(
                    "tools".into(),
                    json!([{
                        "name": name,
                        "description": "Give the answer as this tool's input.",
                        "input_schema": schema,
                    }]),
                );
                out.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
                json_tool = Some(name);
            }
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    Translated {
        body: Value::Object(out),
        json_tool,
    }
}

/// The top-level fields of a chat request the translation leaves out
/// (`x-cascade-dropped-params`), in request order: fields with no Anthropic
/// meaning, and non-function tools as `tools.<type>`. Nulls are not listed.
pub fn dropped(req: &Map<String, Value>) -> Vec<String> {
    const TRANSLATED: [&str; 16] = [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "user",
        "top_k",
        "thinking",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    ];
    let mut out = Vec::new();
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        if key == "tools" {
            for t in value.as_array().into_iter().flatten() {
                let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
                let name = format!("tools.{kind}");
                if kind != "function" && !out.contains(&name) {
                    out.push(name);
                }
            }
        } else if !TRANSLATED.contains(&key.as_str()) {
            out.push(key.clone());
        }
    }
    out
}

/// The conversation as Anthropic turns: system and developer messages go to
/// `system`; `tool` results join the user turn; consecutive turns of one
/// role are merged; empty turns are left out.
fn messages(list: &[Value], system: &mut Vec<Value>) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in list {
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                system.extend(
                    content_blocks(content)
                        .into_iter()
                        .filter(|b| b["type"] == "text"),
                );
                continue;
            }
            Some("user") => ("user", content_blocks(content)),
            Some("assistant") => ("assistant", assistant_blocks(m)),
            Some("tool") => ("user", vec![tool_result(m)]),
            // the deprecated "function" role and unknown roles
            _ => continue,
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    // a final assistant turn is a prefill Anthropic continues; it refuses
    // one that ends in whitespace
    if let Some(("assistant", blocks)) = turns.last_mut() {
        if let Some(Value::String(text)) = blocks.last_mut().and_then(|b| b.get_mut("text")) {
            text.truncate(text.trim_end().len());
        }
        blocks.retain(|b| b["type"] != "text" || b["text"] != "");
        if blocks.is_empty() {
            turns.pop();
        }
    }
    turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                // Anthropic wants tool results first in a user turn
                blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({ "role": role, "content": blocks })
        })
        .collect()
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// A message's content (a string or a list of parts) as Anthropic blocks.
/// Empty text is left out (Anthropic refuses it); `cache_control` on a part
/// is kept on its block.
fn content_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![text_block(s)],
        Value::Array(parts) => parts.iter().filter_map(part_block).collect(),
        _ => Vec::new(),
    }
}

fn part_block(part: &Value) -> Option<Value> {
    let mut block = match part.get("type").and_then(Value::as_str)? {
        "text" => text_block(
            part.get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())?,
        ),
        "refusal" => text_block(
            part.get("refusal")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())?,
        ),
        "image_url" => {
            let image = part.get("image_url")?;
            let url = image
                .get("url")
                .and_then(Value::as_str)
                .or(image.as_str())?;
            let source = match data_url(url) {
                Some((media_type, data)) => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                None => json!({"type": "url", "url": url}),
            };
            json!({ "type": "image", "source": source })
        }
        "file" => {
            let data = part.get("file")?.get("file_data")?.as_str()?;
            let (media_type, data) = data_url(data)?;
            json!({
                "type": "document",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            })
        }
        // input_audio and anything else: no Anthropic meaning
        _ => return None,
    };
    if let Some(cc) = part.get("cache_control").filter(|v| v.is_object()) {
        block["cache_control"] = cc.clone();
    }
    Some(block)
}

/// `data:image/png;base64,AAAA` -> ("image/png", "AAAA").
fn data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    Some((meta.strip_suffix(";base64")?, data))
}

/// An assistant turn: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(m: &Value) -> Vec<Value> {
    let mut blocks = content_blocks(m.get("content").unwrap_or(&Value::Null));
    let calls = m.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let f = call.get("function").unwrap_or(&Value::Null);
        // Anthropic wants an object; arguments that are not one become {}
        let input = f
            .get("arguments")
            .and_then(Value::as_str)
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
            "name": f.get("name").and_then(Value::as_str).unwrap_or_default(),
            "input": input,
        }));
    }
    blocks
}

/// A `tool` message as a `tool_result` block.
fn tool_result(m: &Value) -> Value {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    match m.get("content") {
        Some(Value::String(s)) => block["content"] = json!(s),
        Some(c @ Value::Array(_)) => block["content"] = Value::Array(content_blocks(c)),
        _ => {}
    }
    block
}

fn stop_sequences(stop: Option<&Value>) -> Vec<String> {
    let list = match stop {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    list.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Function tools as Anthropic tools; other tool types are left out.
fn tools(tools: Option<&Value>) -> Vec<Value> {
    let list = tools.and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
        .filter_map(|t| {
            let f = t.get("function")?;
            let name = f.get("name").and_then(Value::as_str)?;
            let schema = f
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut tool = json!({ "name": name, "input_schema": schema });
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                tool["description"] = json!(d);
            }
            if let Some(cc) = t.get("cache_control").filter(|v| v.is_object()) {
                tool["cache_control"] = cc.clone();
            }
            Some(tool)
        })
        .collect()
}

/// `tool_choice` (and `parallel_tool_calls: false`) for a request with tools.
fn tool_choice(choice: Option<&Value>, parallel: Option<bool>) -> Option<Value> {
    let mut out = match choice {
        Some(Value::String(s)) => match s.as_str() {
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => json!({"type": "auto"}),
        },
        Some(Value::Object(o)) => {
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => json!({"type": "tool", "name": name}),
                None => json!({"type": "auto"}),
            }
        }
        // absent: Anthropic's default is auto; say so only when needed
        _ if parallel == Some(false) => json!({"type": "auto"}),
        _ => return None,
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = json!(true);
    }
    Some(out)
}

enum Format {
    Text,
    Json,
    Schema { name: String, schema: Value },
}

fn response_format(v: Option<&Value>) -> Format {
    let Some(v) = v else { return Format::Text };
    match v.get("type").and_then(Value::as_str) {
        Some("json_object") => Format::Json,
        Some("json_schema") => {
            let spec = v.get("json_schema").unwrap_or(&Value::Null);
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| valid_tool_name(n))
                .unwrap_or(JSON_TOOL);
            Format::Schema {
                name: name.to_string(),
                schema: spec
                    .get("schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            }
        }
        _ => Format::Text,
    }
}

/// Anthropic tool names: 1-64 of letters, digits, `_` and `-`.
fn valid_tool_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
