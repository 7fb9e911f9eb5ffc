//! OpenAI wire types: the request body as the client sent it, usage, errors.

mod body;
pub mod chunk_probe;
pub mod embeddings;
pub mod messages;
pub mod responses;
pub mod validate;

pub use body::{model_field, parse_fields, raw_field, BodyError, ChatBody};

/// The client API a request came in on: the ledger's `endpoint` column, the
/// report's `by_endpoint`, the request log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoint {
    #[default]
    Chat,
    Embeddings,
    Messages,
    Responses,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    /// The message of its request log line.
    pub fn log_message(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    /// Whether its requests go to chat models (else to embedding models).
    pub fn chat(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Messages | Endpoint::Responses
        )
    }
}

use serde::Deserialize;
use serde_json::{json, Value};

/// `prefix_` and 24 random hex digits: request, message and response ids.
/// Unique, not secret: a small per-thread generator seeded from the OS one
/// (a tenth of the thread generator's cost, on every request).
pub fn random_id(prefix: &str) -> String {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('_');
    let bits: u128 = IDS.with(|r| r.borrow_mut().random());
    for i in (0..24).rev() {
        id.push(char::from(HEX[((bits >> (i * 4)) & 0xf) as usize]));
    }
    id
}

use crate::cost::Usage;

/// `usage` of a chat completion (or of a stream's usage chunk).
#[derive(Debug, Default, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Tokens,
    #[serde(default)]
    pub completion_tokens: Tokens,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Tokens,
    /// Not OpenAI's, but some compatible servers report cache writes here.
    #[serde(default)]
    pub cache_creation_tokens: Tokens,
}

/// The most tokens one call is believed to report; more is an upstream bug.
pub const MAX_TOKENS: u64 = 1_000_000_000;

/// A token count as an upstream reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tokens {
    #[default]
    Missing,
    Count(u64),
    /// Negative, not a whole number, not a number, or above [`MAX_TOKENS`].
    Absurd,
}

impl Tokens {
    pub fn of(v: &Value) -> Tokens {
        match v {
            Value::Null => Tokens::Missing,
            Value::Number(n) => match n.as_u64() {
                Some(c) if c <= MAX_TOKENS => Tokens::Count(c),
                _ => Tokens::Absurd,
            },
            _ => Tokens::Absurd,
        }
    }
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tokens::of(&Value::deserialize(d)?))
    }
}

impl WireUsage {
    /// The counts, or None when any of them is absurd: the caller then
    /// estimates usage and says so.
    pub fn usage(&self) -> Option<Usage> {
        let details = self.prompt_tokens_details.as_ref();
        let mut out = [0u64; 4];
        let all = [
            self.prompt_tokens,
            self.completion_tokens,
            details.map_or(Tokens::Missing, |d| d.cached_tokens),
            details.map_or(Tokens::Missing, |d| d.cache_creation_tokens),
        ];
        for (slot, t) in out.iter_mut().zip(all) {
            match t {
                Tokens::Missing => {}
                Tokens::Count(c) => *slot = c,
                Tokens::Absurd => return None,
            }
        }
        Some(Usage {
            prompt: out[0],
            completion: out[1],
            cached: out[2],
            cache_write: out[3],
        })
    }
}

/// Characters of generated text in a chat completion body (content,
/// reasoning, tool calls), to estimate its tokens when usage is missing.
pub fn completion_text_chars(body: &[u8]) -> usize {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let mut n = 0;
    for c in choices {
        let Some(m) = c.get("message") else { continue };
        for field in ["content", "reasoning_content", "reasoning"] {
            n += m
                .get(field)
                .and_then(Value::as_str)
                .map_or(0, |t| t.chars().count());
        }
        if let Some(calls) = m.get("tool_calls").filter(|t| !t.is_null()) {
            n += calls.to_string().len();
        }
    }
    n
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
