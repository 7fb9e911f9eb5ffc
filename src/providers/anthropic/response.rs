//! Anthropic Messages response -> OpenAI `chat.completion`, and the pieces
//! the stream translation shares: stop reasons, usage, error bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::api::Tokens;
use crate::cost::Usage;
use crate::providers::call::UpstreamError;

/// A complete 200 body: the OpenAI completion and its usage; an error object
/// (`{"type": "error", ...}`) or garbage is an error.
pub fn completion(
    body: &[u8],
    json_tool: Option<&str>,
) -> Result<(Value, Option<Usage>), UpstreamError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::BadBody(format!("not JSON: {e}")))?;
    if let Some(msg) = error_message(&v) {
        return Err(UpstreamError::ErrorInBody(msg));
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| UpstreamError::BadBody("no 'content' in the response".into()))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    let mut answered_by_json_tool = false;
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(str_of(b, "text")),
            Some("thinking") => reasoning.push_str(str_of(b, "thinking")),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if json_tool.is_some_and(|t| t == str_of(b, "name")) {
                    answered_by_json_tool = true;
                    text.push_str(&input.to_string());
                    continue;
                }
                tool_calls.push(json!({
                    "id": str_of(b, "id"),
                    "type": "function",
                    "function": {"name": str_of(b, "name"), "arguments": input.to_string()},
                }));
            }
            // redacted thinking, server tools, ...: nothing in the OpenAI shape
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let mut usage = AnthropicUsage::default();
    usage.update(v.get("usage"));
    let stop = v.get("stop_reason").and_then(Value::as_str);
    let out = json!({
        "id": str_of(&v, "id"),
        "object": "chat.completion",
        "created": now(),
        "model": str_of(&v, "model"),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(stop, answered_by_json_tool),
        }],
        "usage": usage.to_openai(),
    });
    Ok((out, usage.valid()))
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`. A forced
/// `response_format` tool is a plain answer, so it stops.
pub fn finish_reason(stop: Option<&str>, json_tool: bool) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") if !json_tool => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and none given
        _ => "stop",
    }
}

/// Anthropic's token counts. `input_tokens` excludes the cache tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    /// A count was negative, not a whole number or absurdly large.
    pub absurd: bool,
}

impl AnthropicUsage {
    /// Take the counts a `usage` object carries; absent ones are kept
    /// (a stream's `message_delta` may carry only `output_tokens`).
    pub fn update(&mut self, usage: Option<&Value>) {
        let Some(u) = usage else { return };
        let mut absurd = false;
        let mut get = |k: &str| match u.get(k).map_or(Tokens::Missing, Tokens::of) {
            Tokens::Count(c) => Some(c),
            Tokens::Missing => None,
            Tokens::Absurd => {
                absurd = true;
                None
            }
        };
        self.input = get("input_tokens").unwrap_or(self.input);
        self.output = get("output_tokens").unwrap_or(self.output);
        self.cache_read = get("cache_read_input_tokens").unwrap_or(self.cache_read);
        self.cache_creation = get("cache_creation_input_tokens").unwrap_or(self.cache_creation);
        self.absurd |= absurd;
    }

    /// The usage, unless a count was absurd (then it is estimated).
    pub fn valid(self) -> Option<Usage> {
        (!self.absurd).then(|| self.usage())
    }

    /// In the OpenAI sense (docs/api.md, money): prompt = input + cache read + cache creation.
    pub fn usage(self) -> Usage {
        Usage {
            prompt: self.input + self.cache_read + self.cache_creation,
            completion: self.output,
            cached: self.cache_read,
            cache_write: self.cache_creation,
        }
    }

    /// `usage` in the OpenAI shape; null when a count was absurd, so the
    /// usage is estimated downstream.
    pub fn to_openai(self) -> Value {
        if self.absurd {
            return Value::Null;
        }
        let u = self.usage();
        json!({
            "prompt_tokens": u.prompt,
            "completion_tokens": u.completion,
            "total_tokens": u.prompt + u.completion,
            "prompt_tokens_details": {
                "cached_tokens": u.cached,
                "cache_creation_tokens": u.cache_write,
            },
        })
    }
}

/// The message of an Anthropic error object, `"type: message"`.
pub fn error_message(v: &Value) -> Option<String> {
    let is_error = v.get("type").and_then(Value::as_str) == Some("error")
        || v.get("error").is_some_and(|e| !e.is_null());
    if !is_error {
        return None;
    }
    Some(crate::api::upstream_error_message(v).unwrap_or_else(|| "an error object".into()))
}

/// An Anthropic error body `{"type": "error", "error": {"type", "message"}}`
/// in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.
/// `code` is `context_length_exceeded` when the prompt did not fit, else
/// Anthropic's error type. Anything else: None.
pub fn openai_error_body(v: &Value, context_length: bool) -> Option<Value> {
    let err = v.get("error").filter(|e| e.is_object())?;
    let kind = err
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    let message = err.get("message").and_then(Value::as_str).unwrap_or(kind);
    let code = if context_length {
        "context_length_exceeded"
    } else {
        kind
    };
    Some(crate::api::error_body(message, kind, None, code))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example response of Anthropic's Messages API reference.
    const TEXT: &str = r#"{
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 2095, "output_tokens": 503}
    }"#;

    /// The tool-use example of Anthropic's tool use guide.
    const TOOL: &str = r#"{
        "id": "msg_01Aq9w938a90dw8q",
        "model": "claude-opus-4-1-20250805",
        "stop_reason": "tool_use",
        "role": "assistant",
        "type": "message",
        "content": [
            {"type": "text", "text": "<thinking>I need to use get_weather.</thinking>"},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
             "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
        ],
        "usage": {"input_tokens": 472, "output_tokens": 91,
                  "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000}
    }"#;

    #[test]
    fn text_answers_become_a_chat_completion() {
        let (v, usage) = completion(TEXT.as_bytes(), None).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "msg_013Zva2CMHLNnXjNJJKqJ2EF");
        assert_eq!(v["model"], "claude-sonnet-4-20250514");
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Hi! My name is Claude.");
        assert!(choice["message"].get("tool_calls").is_none());
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598,
                   "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 0}})
        );
        assert_eq!(
            usage,
            Some(Usage {
                prompt: 2095,
                completion: 503,
                cached: 0,
                cache_write: 0
            })
        );
    }

    #[test]
    fn tool_use_blocks_become_tool_calls_and_cache_tokens_count_as_prompt() {
        let (v, usage) = completion(TOOL.as_bytes(), None).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(
            message["content"],
            "<thinking>I need to use get_weather.</thinking>"
        );
        let call = &message["tool_calls"][0];
        assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        // as in docs/api.md: prompt = input + cache read + cache creation
        assert_eq!(
            usage,
            Some(Usage {
                prompt: 2572,
                completion: 91,
                cached: 2000,
                cache_write: 100
            })
        );
        assert_eq!(v["usage"]["prompt_tokens"], 2572);
        assert_eq!(v["usage"]["total_tokens"], 2663);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2000);
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cache_creation_tokens"],
            100
        );
    }

    #[test]
    fn only_tool_calls_means_null_content() {
        let body = json!({"id": "msg_1", "type": "message", "model": "m", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let (v, _) = completion(body.to_string().as_bytes(), None).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn a_json_schema_tool_answer_is_content() {
        let body = json!({"id": "msg_1", "type": "message", "model": "m", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t1", "name": "plan", "input": {"steps": ["a"]}}],
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let (v, _) = completion(body.to_string().as_bytes(), Some("plan")).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], r#"{"steps":["a"]}"#);
        assert!(message.get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn thinking_blocks_become_reasoning_content() {
        let body = json!({"id": "msg_1", "type": "message", "model": "m", "stop_reason": "end_turn",
            "content": [{"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "xx"},
                        {"type": "text", "text": "Yes."}],
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let (v, _) = completion(body.to_string().as_bytes(), None).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], "Yes.");
        assert_eq!(message["reasoning_content"], "Let me see.");
    }

    #[test]
    fn each_stop_reason_maps_to_a_finish_reason() {
        let cases = [
            (Some("end_turn"), false, "stop"),
            (Some("stop_sequence"), false, "stop"),
            (Some("pause_turn"), false, "stop"),
            (Some("max_tokens"), false, "length"),
            (Some("model_context_window_exceeded"), false, "length"),
            (Some("tool_use"), false, "tool_calls"),
            (Some("tool_use"), true, "stop"),
            (Some("refusal"), false, "content_filter"),
            (None, false, "stop"),
        ];
        for (stop, json_tool, want) in cases {
            assert_eq!(finish_reason(stop, json_tool), want, "{stop:?}");
            let body = json!({"id": "m", "type": "message", "model": "m", "stop_reason": stop,
                "content": [{"type": "text", "text": "x"}], "usage": {"input_tokens": 1, "output_tokens": 1}});
            if !json_tool {
                let (v, _) = completion(body.to_string().as_bytes(), None).unwrap();
                assert_eq!(v["choices"][0]["finish_reason"], want, "{stop:?}");
            }
        }
    }

    #[test]
    fn errors_and_garbage_in_a_200_are_failures() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        match completion(overloaded.as_bytes(), None) {
            Err(UpstreamError::ErrorInBody(m)) => assert_eq!(m, "overloaded_error: Overloaded"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            completion(b"<html>", None),
            Err(UpstreamError::BadBody(_))
        ));
        assert!(matches!(
            completion(br#"{"id":"x","type":"message"}"#, None),
            Err(UpstreamError::BadBody(_))
        ));
    }

    #[test]
    fn error_bodies_take_the_openai_shape() {
        let cases = [
            (
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
                true,
                json!({"error": {"message": "prompt is too long: 210000 tokens > 200000 maximum",
                    "type": "invalid_request_error", "param": null, "code": "context_length_exceeded"}}),
            ),
            (
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: field required"}}),
                false,
                json!({"error": {"message": "max_tokens: field required",
                    "type": "invalid_request_error", "param": null, "code": "invalid_request_error"}}),
            ),
        ];
        for (anthropic, context_length, want) in cases {
            assert_eq!(
                openai_error_body(&anthropic, context_length),
                Some(want.clone())
            );
        }
        assert_eq!(openai_error_body(&json!({"detail": "x"}), false), None);
    }
}
