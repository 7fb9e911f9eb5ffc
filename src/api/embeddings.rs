//! POST /v1/embeddings: the request as the client sent it (fields kept as
//! raw JSON, `model` rewritten per upstream), and the check of an upstream's
//! answer: one vector per input, each of the expected length.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::body::{bad, model_field, parse_fields, raw_field, render_with_model, BodyError};
use super::WireUsage;
use crate::cost::Usage;

/// How the vectors are encoded in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Little-endian f32s, base64: the openai SDKs ask for this by default.
    Base64,
}

pub struct EmbeddingsBody {
    fields: Vec<(String, Box<RawValue>)>,
    model: Option<String>,
    /// How many vectors the answer must hold.
    pub inputs: usize,
    /// Characters (or tokens, for token arrays) of the input, for an estimate.
    pub input_chars: usize,
    pub encoding: Encoding,
    /// The client's `dimensions`, when it asks for shortened vectors.
    pub dimensions: Option<u32>,
}

fn bad_input() -> BodyError {
    bad(
        "'input' must be a string, an array of strings, an array of token ids or an array of token arrays, and not empty",
        Some("input"),
    )
}

impl EmbeddingsBody {
    pub fn parse(bytes: &[u8]) -> Result<EmbeddingsBody, BodyError> {
        let fields = parse_fields(bytes)?;
        let model = model_field(&fields)?;
        let input: Value = match raw_field(&fields, "input") {
            None | Some("null") => return Err(bad("'input' is required", Some("input"))),
            Some(v) => serde_json::from_str(v).map_err(|_| bad_input())?,
        };
        let (inputs, input_chars) = match &input {
            Value::String(s) if !s.is_empty() => (1, s.chars().count()),
            Value::Array(items) if !items.is_empty() => {
                if items.iter().all(Value::is_u64) {
                    // one input as token ids: about four characters a token
                    (1, items.len() * 4)
                } else if items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                {
                    let chars = items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.chars().count())
                        .sum();
                    (items.len(), chars)
                } else if items.iter().all(|i| {
                    i.as_array()
                        .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_u64))
                }) {
                    let tokens: usize =
                        items.iter().filter_map(Value::as_array).map(Vec::len).sum();
                    (items.len(), tokens * 4)
                } else {
                    return Err(bad_input());
                }
            }
            _ => return Err(bad_input()),
        };
        let encoding = match raw_field(&fields, "encoding_format") {
            None | Some("null") | Some("\"float\"") => Encoding::Float,
            Some("\"base64\"") => Encoding::Base64,
            Some(_) => {
                return Err(bad(
                    "'encoding_format' must be \"float\" or \"base64\"",
                    Some("encoding_format"),
                ))
            }
        };
        let dimensions = match raw_field(&fields, "dimensions") {
            None | Some("null") => None,
            Some(v) => match serde_json::from_str::<u32>(v) {
                Ok(d) if d > 0 => Some(d),
                _ => {
                    return Err(bad(
                        "'dimensions' must be a positive whole number",
                        Some("dimensions"),
                    ))
                }
            },
        };
        Ok(EmbeddingsBody {
            fields,
            model,
            inputs,
            input_chars,
            encoding,
            dimensions,
        })
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// A top-level field as raw JSON text.
    pub fn raw(&self, name: &str) -> Option<&str> {
        raw_field(&self.fields, name)
    }

    /// The body for an OpenAI-compatible upstream.
    pub fn render(&self, upstream_model: &str) -> Bytes {
        render_with_model(&self.fields, upstream_model)
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Option<Vec<Item>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    embedding: Option<Value>,
}

/// What is wrong with an embeddings answer.
#[derive(Debug, PartialEq, Eq)]
pub enum BadAnswer {
    /// Not JSON, or no `data`.
    Unreadable(String),
    /// An error object in a 200.
    Error(String),
    /// The vectors are not what was asked for.
    Vectors(String),
}

/// Check an upstream's 200: `inputs` vectors in `encoding`, each of `dims`
/// values when given. Returns the usage it reported (None: missing or absurd).
pub fn check_answer(
    body: &[u8],
    inputs: usize,
    encoding: Encoding,
    dims: Option<u32>,
) -> Result<Option<Usage>, BadAnswer> {
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| BadAnswer::Unreadable(format!("not JSON: {e}")))?;
    if let Some(err) = a.error.filter(|e| !e.is_null()) {
        let msg = super::upstream_error_message(&serde_json::json!({ "error": err }))
            .unwrap_or_else(|| "an error object".into());
        return Err(BadAnswer::Error(msg));
    }
    let data = a
        .data
        .ok_or_else(|| BadAnswer::Unreadable("no 'data' in the response".into()))?;
    if data.len() != inputs {
        return Err(BadAnswer::Vectors(format!(
            "{} vector(s) for {inputs} input(s)",
            data.len()
        )));
    }
    for (i, item) in data.iter().enumerate() {
        let len = match (&item.embedding, encoding) {
            (Some(Value::Array(v)), Encoding::Float) if v.iter().all(Value::is_number) => v.len(),
            (Some(Value::String(s)), Encoding::Base64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| BadAnswer::Vectors(format!("vector {i} is not valid base64")))?;
                if bytes.len() % 4 != 0 {
                    return Err(BadAnswer::Vectors(format!(
                        "vector {i} is not a whole number of 32-bit floats"
                    )));
                }
                bytes.len() / 4
            }
            _ => {
                return Err(BadAnswer::Vectors(format!(
                    "vector {i} is missing or not in the {} encoding",
                    match encoding {
                        Encoding::Float => "float",
                        Encoding::Base64 => "base64",
                    }
                )))
            }
        };
        if len == 0 {
            return Err(BadAnswer::Vectors(format!("vector {i} is empty")));
        }
        if let Some(d) = dims {
            if len != d as usize {
                return Err(BadAnswer::Vectors(format!(
                    "vector {i} has {len} values where {d} are expected"
                )));
            }
        }
    }
    Ok(a.usage
        .as_ref()
        .and_then(WireUsage::usage)
        .filter(|u| u.prompt > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_of_every_shape() {
        let parse = |s: &str| EmbeddingsBody::parse(s.as_bytes());
        let b = parse(r#"{"model":"e","input":"hello"}"#).unwrap();
        assert_eq!(
            (b.inputs, b.input_chars, b.encoding),
            (1, 5, Encoding::Float)
        );
        let b = parse(r#"{"model":"e","input":["a","bc"],"encoding_format":"base64"}"#).unwrap();
        assert_eq!(
            (b.inputs, b.input_chars, b.encoding),
            (2, 3, Encoding::Base64)
        );
        assert_eq!(parse(r#"{"input":[1,2,3]}"#).unwrap().inputs, 1);
        assert_eq!(parse(r#"{"input":[[1,2],[3]]}"#).unwrap().inputs, 2);
        assert_eq!(
            parse(r#"{"input":"x","dimensions":256}"#)
                .unwrap()
                .dimensions,
            Some(256)
        );
        for bad in [
            r#"{"model":"e"}"#,
            r#"{"input":""}"#,
            r#"{"input":[]}"#,
            r#"{"input":["a",1]}"#,
            r#"{"input":{"a":1}}"#,
            r#"{"input":"x","encoding_format":"int8"}"#,
            r#"{"input":"x","dimensions":0}"#,
            r#"{"input":"x","input":"y"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // rendered with the upstream's name, every other field as sent
        let b = parse(r#"{"input":["a"],"model":"e","user":"u"}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&b.render("text-embedding-3-small")).unwrap(),
            r#"{"model":"text-embedding-3-small","input":["a"],"user":"u"}"#
        );
    }

    #[test]
    fn answers_are_checked_vector_by_vector() {
        let floats = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        let u = check_answer(floats.as_bytes(), 1, Encoding::Float, Some(3)).unwrap();
        assert_eq!(u.map(|u| u.prompt), Some(4));
        assert!(matches!(
            check_answer(floats.as_bytes(), 1, Encoding::Float, Some(4)),
            Err(BadAnswer::Vectors(_))
        ));
        assert!(matches!(
            check_answer(floats.as_bytes(), 2, Encoding::Float, None),
            Err(BadAnswer::Vectors(_))
        ));
        assert!(matches!(
            check_answer(floats.as_bytes(), 1, Encoding::Base64, None),
            Err(BadAnswer::Vectors(_))
        ));
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 12]);
        let answer = format!(r#"{{"data":[{{"embedding":"{b64}"}}]}}"#);
        assert_eq!(
            check_answer(answer.as_bytes(), 1, Encoding::Base64, Some(3)),
            Ok(None)
        );
        assert!(matches!(
            check_answer(br#"{"error":{"message":"no"}}"#, 1, Encoding::Float, None),
            Err(BadAnswer::Error(_))
        ));
        assert!(matches!(
            check_answer(b"<html>", 1, Encoding::Float, None),
            Err(BadAnswer::Unreadable(_))
        ));
    }
}
