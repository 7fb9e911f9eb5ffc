//! A Chat Completions answer as a Responses `response` object.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::Echo;
use crate::cost::Usage;

/// `prefix_` and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    crate::api::random_id(prefix)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Responses' `usage`.
#[derive(serde::Serialize)]
pub struct UsageOut {
    input_tokens: u64,
    input_tokens_details: Cached,
    output_tokens: u64,
    output_tokens_details: Reasoning,
    total_tokens: u64,
}

#[derive(serde::Serialize)]
struct Cached {
    cached_tokens: u64,
}

#[derive(serde::Serialize)]
struct Reasoning {
    reasoning_tokens: u64,
}

pub fn usage_json(u: &Usage) -> UsageOut {
    UsageOut {
        input_tokens: u.prompt,
        input_tokens_details: Cached {
            cached_tokens: u.cached.min(u.prompt),
        },
        output_tokens: u.completion,
        output_tokens_details: Reasoning {
            reasoning_tokens: 0,
        },
        total_tokens: u.prompt.saturating_add(u.completion),
    }
}

/// An output item.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        status: &'static str,
        call_id: String,
        name: String,
        arguments: String,
    },
    CustomToolCall {
        id: String,
        status: &'static str,
        call_id: String,
        name: String,
        input: String,
    },
}

#[derive(serde::Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
    annotations: [u8; 0],
    logprobs: [u8; 0],
}

impl Item {
    pub fn value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A message output item holding one output_text part.
pub fn message_item(id: &str, text: &str, status: &'static str) -> Item {
    Item::Message {
        id: id.to_string(),
        status,
        role: "assistant",
        content: vec![OutputText {
            kind: "output_text",
            text: text.to_string(),
            annotations: [],
            logprobs: [],
        }],
    }
}

/// A call output item: `custom_tool_call` for the request's custom tools
/// (the function's one `input` argument unwrapped), else `function_call`.
pub fn call_item(
    echo: &Echo,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &'static str,
) -> Item {
    if echo.custom_tools.iter().any(|t| t == name) {
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| arguments.to_string());
        return Item::CustomToolCall {
            id: new_id("ctc"),
            status,
            call_id: call_id.into(),
            name: name.into(),
            input,
        };
    }
    Item::FunctionCall {
        id: new_id("fc"),
        status,
        call_id: call_id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// Defaults of the echoed fields a request did not set, serialized once.
static DEFAULTS: std::sync::LazyLock<Vec<(&'static str, Box<RawValue>)>> =
    std::sync::LazyLock::new(|| {
        [
            ("instructions", "null"),
            ("max_output_tokens", "null"),
            ("metadata", "{}"),
            ("parallel_tool_calls", "true"),
            ("temperature", "1.0"),
            ("top_p", "1.0"),
            ("tool_choice", "\"auto\""),
            ("tools", "[]"),
            ("text", r#"{"format":{"type":"text"}}"#),
            ("reasoning", r#"{"effort":null,"summary":null}"#),
            ("store", "false"),
            ("user", "null"),
        ]
        .into_iter()
        .filter_map(|(k, v)| RawValue::from_string(v.to_string()).ok().map(|v| (k, v)))
        .collect()
    });

/// A response object, serialized straight from its parts.
pub struct Response<'a, T> {
    pub echo: &'a Echo,
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
    pub status: &'a str,
    pub output: &'a [T],
    pub usage: Option<&'a Usage>,
    pub error: Option<&'a Value>,
}

impl<T: serde::Serialize> serde::Serialize for Response<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("object", "response")?;
        m.serialize_entry("created_at", &self.created_at)?;
        m.serialize_entry("status", self.status)?;
        m.serialize_entry("error", &self.error)?;
        let incomplete =
            (self.status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        m.serialize_entry("incomplete_details", &incomplete)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("output", self.output)?;
        for (k, default) in DEFAULTS.iter() {
            match self.echo.get(k) {
                Some(v) => m.serialize_entry(k, v)?,
                None => m.serialize_entry(k, default)?,
            }
        }
        m.serialize_entry("usage", &self.usage.map(usage_json))?;
        m.end()
    }
}

/// `{"type": kind, key: "value", ...}`: string fields with constant keys.
fn object(out: &mut Vec<u8>, kind: &str, fields: &[(&str, &str)]) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    for (k, v) in fields {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
}

impl Item {
    /// The item as JSON, written directly (keys are constants).
    fn write(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, s: &str| {
            let _ = serde_json::to_writer(&mut *out, s);
        };
        match self {
            Item::Message {
                id,
                status,
                role,
                content,
            } => {
                out.extend_from_slice(b"{\"type\":\"message\",\"id\":");
                string(out, id);
                out.extend_from_slice(b",\"status\":");
                string(out, status);
                out.extend_from_slice(b",\"role\":");
                string(out, role);
                out.extend_from_slice(b",\"content\":[");
                for (i, part) in content.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"type\":\"output_text\",\"text\":");
                    string(out, &part.text);
                    out.extend_from_slice(b",\"annotations\":[],\"logprobs\":[]}");
                }
                out.extend_from_slice(b"]}");
            }
            Item::FunctionCall {
                id,
                status,
                call_id,
                name,
                arguments,
            } => {
                let fields = [
                    ("id", id.as_str()),
                    ("status", status),
                    ("call_id", call_id.as_str()),
                    ("name", name.as_str()),
                    ("arguments", arguments.as_str()),
                ];
                object(out, "function_call", &fields);
            }
            Item::CustomToolCall {
                id,
                status,
                call_id,
                name,
                input,
            } => {
                let fields = [
                    ("id", id.as_str()),
                    ("status", status),
                    ("call_id", call_id.as_str()),
                    ("name", name.as_str()),
                    ("input", input.as_str()),
                ];
                object(out, "custom_tool_call", &fields);
            }
        }
    }
}

impl Response<'_, Item> {
    /// The JSON bytes, written directly: what a request did not echo is
    /// a fragment serialized once (this runs on every non-streamed answer).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        let write = |out: &mut Vec<u8>, v: &dyn erased::Json| v.write(out);
        out.extend_from_slice(b"{\"id\":");
        write(&mut out, &self.id);
        out.extend_from_slice(b",\"object\":\"response\",\"created_at\":");
        out.extend_from_slice(self.created_at.to_string().as_bytes());
        out.extend_from_slice(b",\"status\":");
        write(&mut out, &self.status);
        out.extend_from_slice(b",\"error\":");
        write(&mut out, &self.error);
        out.extend_from_slice(if self.status == "incomplete" {
            b",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"model\":".as_slice()
        } else {
            b",\"incomplete_details\":null,\"model\":".as_slice()
        });
        write(&mut out, &self.model);
        out.extend_from_slice(b",\"output\":[");
        for (i, item) in self.output.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write(&mut out);
        }
        out.push(b']');
        for (k, fragment) in FRAGMENTS.iter() {
            match self.echo.get(k) {
                Some(v) => {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(b"\":");
                    out.extend_from_slice(v.get().as_bytes());
                }
                None => out.extend_from_slice(fragment.as_bytes()),
            }
        }
        match self.usage {
            Some(u) => {
                let cached = u.cached.min(u.prompt);
                let total = u.prompt.saturating_add(u.completion);
                out.extend_from_slice(
                    format!(
                        ",\"usage\":{{\"input_tokens\":{},\"input_tokens_details\":{{\"cached_tokens\":{cached}}},\"output_tokens\":{},\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":{total}}}}}",
                        u.prompt, u.completion
                    )
                    .as_bytes(),
                );
            }
            None => out.extend_from_slice(b",\"usage\":null}"),
        }
        out
    }
}

/// `,"key":default` for each echoed field.
static FRAGMENTS: std::sync::LazyLock<Vec<(&'static str, String)>> =
    std::sync::LazyLock::new(|| {
        DEFAULTS
            .iter()
            .map(|(k, v)| (*k, format!(",\"{k}\":{}", v.get())))
            .collect()
    });

mod erased {
    /// Anything serializable, written as JSON.
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize + ?Sized> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            let _ = serde_json::to_writer(out, self);
        }
    }
}

/// The response object around `output`, as a value.
pub fn response(
    echo: &Echo,
    (id, created_at, model): (&str, u64, &str),
    status: &str,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let r = Response {
        echo,
        id,
        created_at,
        model,
        status,
        output: &output,
        usage,
        error: None,
    };
    serde_json::to_value(&r).unwrap_or(Value::Null)
}

#[derive(serde::Deserialize)]
struct ChatAnswer<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
}

#[derive(serde::Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow, default)]
    message: Option<ChatMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ChatCall<'a>>>,
}

#[derive(serde::Deserialize)]
struct ChatCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<ChatFunction<'a>>,
}

#[derive(serde::Deserialize)]
struct ChatFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// The chat completion `body` as a response (its bytes); `usage` as priced.
pub fn from_chat(echo: &Echo, body: &[u8], usage: Option<Usage>) -> Vec<u8> {
    let answer: ChatAnswer<'_> = serde_json::from_slice(body).unwrap_or(ChatAnswer {
        model: None,
        choices: Vec::new(),
    });
    let choice = answer.choices.into_iter().next();
    let (message, finish) = match choice {
        Some(c) => (c.message, c.finish_reason),
        None => (None, None),
    };
    let mut output = Vec::new();
    if let Some(m) = message {
        if let Some(text) = m.content.filter(|t| !t.is_empty()) {
            output.push(message_item(&new_id("msg"), &text, "completed"));
        }
        for call in m.tool_calls.into_iter().flatten() {
            let f = call.function.unwrap_or(ChatFunction {
                name: None,
                arguments: None,
            });
            output.push(call_item(
                echo,
                call.id.as_deref().unwrap_or_default(),
                f.name.as_deref().unwrap_or_default(),
                f.arguments.as_deref().unwrap_or("{}"),
                "completed",
            ));
        }
    }
    let status = match finish.as_deref() {
        Some("length") => "incomplete",
        _ => "completed",
    };
    let usage = usage.unwrap_or_default();
    let r = Response {
        echo,
        id: &new_id("resp"),
        created_at: now(),
        model: answer.model.as_deref().unwrap_or_default(),
        status,
        output: &output,
        usage: Some(&usage),
        error: None,
    };
    r.to_bytes()
}
