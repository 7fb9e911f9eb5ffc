//! OpenAI wire types: the request body as the client sent it, usage, errors.

mod body;

pub use body::{BodyError, ChatBody};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cost::Usage;

/// `usage` of a chat completion (or of a stream's usage chunk).
#[derive(Debug, Default, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// Not OpenAI's, but some compatible servers report cache writes here.
    #[serde(default)]
    pub cache_creation_tokens: Option<u64>,
}

impl From<&WireUsage> for Usage {
    fn from(u: &WireUsage) -> Usage {
        let details = u.prompt_tokens_details.as_ref();
        Usage {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
            cached: details.and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write: details.and_then(|d| d.cache_creation_tokens).unwrap_or(0),
        }
    }
}

/// An OpenAI-shaped error object: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    })
}

/// The human message inside an upstream error body, whatever its shape:
/// `{"error": {"message": ..}}`, `{"error": ".."}`, `{"message": ..}`.
pub fn upstream_error_message(v: &Value) -> Option<String> {
    let err = v.get("error").unwrap_or(v);
    if let Some(s) = err.as_str() {
        return Some(s.to_string());
    }
    let msg = err.get("message").and_then(Value::as_str);
    let code = err
        .get("code")
        .or_else(|| err.get("type"))
        .and_then(Value::as_str);
    match (msg, code) {
        (Some(m), Some(c)) => Some(format!("{c}: {m}")),
        (Some(m), None) => Some(m.to_string()),
        (None, Some(c)) => Some(c.to_string()),
        (None, None) => None,
    }
}
