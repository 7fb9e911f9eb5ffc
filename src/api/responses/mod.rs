//! OpenAI's Responses API in (docs/api.md, POST /v1/responses), stateless:
//! the request is checked (stateful features refused by name), translated to
//! Chat Completions for every provider (`to_chat`: Anthropic's provider
//! then speaks Messages, the mock answers chat), and the answer and stream
//! are rebuilt as a `response` object and Responses events (`answer`,
//! `events`).

pub mod answer;
pub mod events;
mod to_chat;

use serde_json::{Map, Value};

use super::body::{model_field, parse_fields, raw_field};
use super::ChatBody;
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

fn hosted(kind: &str) -> bool {
    HOSTED.contains(&kind) || kind.starts_with("web_search") || kind.starts_with("computer_use")
}

/// A Responses request, read, checked and translated.
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub stream: bool,
    /// The request as Chat Completions.
    pub chat: ChatBody,
    /// Fields, tools (`tools.<type>`) and input items (`input.<type>`) left
    /// out, in request order.
    pub dropped: Vec<String>,
    /// What the answer echoes and how calls come back.
    pub echo: Echo,
}

/// What the response object repeats from the request, and the custom tools
/// (whose calls come back as `custom_tool_call`).
#[derive(Debug, Default, Clone)]
pub struct Echo {
    pub fields: Map<String, Value>,
    pub custom_tools: Vec<String>,
}

fn unsupported(param: &str, message: &str) -> GatewayError {
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

impl ResponsesRequest {
    pub fn parse(bytes: &[u8]) -> Result<ResponsesRequest, GatewayError> {
        let fields = parse_fields(bytes).map_err(|e| GatewayError::invalid(e.message, e.param))?;
        let model = model_field(&fields).map_err(|e| GatewayError::invalid(e.message, e.param))?;
        let value = |name: &str| {
            raw_field(&fields, name)
                .and_then(|v| serde_json::from_str::<Value>(v).ok())
                .unwrap_or(Value::Null)
        };
        // what a stateless gateway cannot honour, refused by name
        if !value("previous_response_id").is_null() {
            return Err(unsupported(
                "previous_response_id",
                "previous_response_id is not supported: this gateway stores no responses; send the whole conversation in input",
            ));
        }
        if !value("conversation").is_null() {
            return Err(unsupported(
                "conversation",
                "conversation is not supported: this gateway stores no conversations; send the whole conversation in input",
            ));
        }
        if value("background") == true {
            return Err(unsupported(
                "background",
                "background responses are not supported: this gateway stores no responses",
            ));
        }
        let choice = value("tool_choice");
        if choice["type"].as_str().is_some_and(hosted) {
            return Err(unsupported(
                "tool_choice",
                "a tool_choice forcing a hosted tool is not supported: hosted tools are not served by this gateway",
            ));
        }
        let stream = match value("stream") {
            Value::Null => false,
            Value::Bool(b) => b,
            _ => {
                return Err(GatewayError::invalid(
                    "'stream' must be a boolean",
                    Some("stream"),
                ))
            }
        };
        if raw_field(&fields, "input").is_none() {
            return Err(GatewayError::invalid("'input' is required", Some("input")));
        }
        let (chat, dropped, custom_tools) = to_chat::to_chat(&fields, stream)?;
        let mut echo = Echo {
            custom_tools,
            ..Echo::default()
        };
        for k in [
            "instructions",
            "max_output_tokens",
            "metadata",
            "parallel_tool_calls",
            "temperature",
            "top_p",
            "tool_choice",
            "tools",
            "text",
            "reasoning",
            "store",
            "user",
            "prompt_cache_key",
            "safety_identifier",
        ] {
            let v = value(k);
            if !v.is_null() {
                echo.fields.insert(k.into(), v);
            }
        }
        Ok(ResponsesRequest {
            model,
            stream,
            chat,
            dropped,
            echo,
        })
    }
}

#[cfg(test)]
mod tests;
