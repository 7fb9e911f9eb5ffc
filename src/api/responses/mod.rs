//! OpenAI's Responses API in (docs/api.md, POST /v1/responses), stateless:
//! the request is checked (stateful features refused by name), translated to
//! Chat Completions for every provider (`to_chat`: Anthropic's provider
//! then speaks Messages, the mock answers chat), and the answer and stream
//! are rebuilt as a `response` object and Responses events (`answer`,
//! `events`).

pub mod answer;
pub mod events;
mod to_chat;

use to_chat::{get, hosted, unsupported};

use serde_json::value::RawValue;

use super::body::{model_field, parse_fields, raw_field};
use super::ChatBody;
use crate::error::GatewayError;

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
    /// The echoed request fields, as sent.
    pub fields: Vec<(String, Box<RawValue>)>,
    pub custom_tools: Vec<String>,
}

impl Echo {
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
    }
}

impl ResponsesRequest {
    pub fn parse(bytes: &[u8]) -> Result<ResponsesRequest, GatewayError> {
        let fields = parse_fields(bytes).map_err(|e| GatewayError::invalid(e.message, e.param))?;
        let model = model_field(&fields).map_err(|e| GatewayError::invalid(e.message, e.param))?;
        let present = |name: &str| raw_field(&fields, name).is_some_and(|v| v != "null");
        // what a stateless gateway cannot honour, refused by name
        if present("previous_response_id") {
            return Err(unsupported(
                "previous_response_id",
                "previous_response_id is not supported: this gateway stores no responses; send the whole conversation in input",
            ));
        }
        if present("conversation") {
            return Err(unsupported(
                "conversation",
                "conversation is not supported: this gateway stores no conversations; send the whole conversation in input",
            ));
        }
        if raw_field(&fields, "background") == Some("true") {
            return Err(unsupported(
                "background",
                "background responses are not supported: this gateway stores no responses",
            ));
        }
        if present("tool_choice")
            && get(&fields, "tool_choice")["type"]
                .as_str()
                .is_some_and(hosted)
        {
            return Err(unsupported(
                "tool_choice",
                "a tool_choice forcing a hosted tool is not supported: hosted tools are not served by this gateway",
            ));
        }
        let stream = match raw_field(&fields, "stream") {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            _ => {
                return Err(GatewayError::invalid(
                    "'stream' must be a boolean",
                    Some("stream"),
                ))
            }
        };
        if !present("input") {
            return Err(GatewayError::invalid("'input' is required", Some("input")));
        }
        let (chat, dropped, custom_tools) = to_chat::to_chat(&fields, (model.clone(), stream))?;
        let echo = Echo {
            custom_tools,
            fields: fields
                .into_iter()
                .filter(|(k, v)| ECHOED.contains(&k.as_str()) && v.get() != "null")
                .collect(),
        };
        Ok(ResponsesRequest {
            model,
            stream,
            chat,
            dropped,
            echo,
        })
    }
}

/// The request fields a response object repeats.
const ECHOED: &[&str] = &[
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
];

#[cfg(test)]
mod tests;
