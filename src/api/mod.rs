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

/// JSON text whose floats are plain decimals (up to 9 places, trailing zeros
/// trimmed), never exponent notation: money in bodies and the closing stream
/// comment reads `0.0000075`, not `7.5e-6`.
pub fn to_plain_json(v: &Value) -> String {
    struct Plain;
    impl serde_json::ser::Formatter for Plain {
        fn write_f64<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            value: f64,
        ) -> std::io::Result<()> {
            w.write_all(plain_decimal(value).as_bytes())
        }
    }
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Plain);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".into())
}

fn plain_decimal(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "" | "-" | "-0" => "0".into(),
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_plain_decimals() {
        let v =
            json!({"a": 0.0000075, "b": 1.5, "c": 0.0, "d": 12, "e": 33.333333333333, "f": -0.25});
        assert_eq!(
            to_plain_json(&v),
            r#"{"a":0.0000075,"b":1.5,"c":0,"d":12,"e":33.333333333,"f":-0.25}"#
        );
    }
}
