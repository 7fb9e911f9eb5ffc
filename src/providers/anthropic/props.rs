//! Property tests of the translation both ways: whatever a client or an
//! upstream sends, no panic; what is valid comes through whole.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::request::translate;
use super::response::completion;
use super::stream::Translator;
use crate::testing::{json, object};

const REQUEST_KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "system",
    "user",
    "assistant",
    "tool",
    "tool_calls",
    "tool_call_id",
    "function",
    "name",
    "arguments",
    "tools",
    "tool_choice",
    "parameters",
    "type",
    "text",
    "image_url",
    "url",
    "stop",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "json_schema",
    "json_object",
    "schema",
    "parallel_tool_calls",
    "top_k",
    "thinking",
    "auto",
    "required",
    "none",
];

const EVENT_KEYS: &[&str] = &[
    "type",
    "message_start",
    "message",
    "id",
    "model",
    "usage",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "content_block_start",
    "content_block",
    "index",
    "text",
    "thinking",
    "tool_use",
    "name",
    "input",
    "content_block_delta",
    "delta",
    "text_delta",
    "thinking_delta",
    "input_json_delta",
    "partial_json",
    "message_delta",
    "stop_reason",
    "end_turn",
    "max_tokens",
    "message_stop",
    "error",
    "content",
    "ping",
];

fn event_names() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(EVENT_KEYS).prop_map(String::from),
        ".{0,8}"
    ]
}

proptest! {
    #[test]
    fn any_request_translates_without_a_panic(req in object(REQUEST_KEYS), max in proptest::option::of(any::<u64>())) {
        let t = translate(&req, "claude-x", max);
        prop_assert_eq!(&t.body["model"], &json!("claude-x"));
        prop_assert!(t.body["max_tokens"].is_u64());
        prop_assert!(t.body["messages"].is_array());
    }

    #[test]
    fn any_event_sequence_translates_or_fails_without_a_panic(
        events in prop::collection::vec((event_names(), prop_oneof![json(EVENT_KEYS).prop_map(|v| v.to_string()), ".{0,40}"]), 0..16),
        json_tool in proptest::option::of(prop::sample::select(EVENT_KEYS).prop_map(String::from)),
    ) {
        let mut t = Translator::new(json_tool);
        for (name, data) in &events {
            if let Ok(payloads) = t.event(name, data) {
                for p in payloads {
                    // every payload is a chunk or the end marker
                    prop_assert!(p == "[DONE]" || serde_json::from_str::<Value>(&p).is_ok());
                }
            }
        }
    }

    #[test]
    fn any_body_is_an_answer_or_an_error_never_a_panic(
        body in prop_oneof![json(EVENT_KEYS).prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..200)],
    ) {
        let _ = completion(&body, None);
    }

    #[test]
    fn a_valid_answer_round_trips(
        pieces in prop::collection::vec(".{0,12}", 1..6),
        input in 0u64..1_000_000,
        output in 0u64..1_000_000,
        cached in 0u64..1_000_000,
    ) {
        let text: String = pieces.concat();
        let usage = json!({"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": cached});
        // as one body
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": usage,
        });
        let (out, u) = completion(body.to_string().as_bytes(), None).unwrap();
        prop_assert_eq!(&out["choices"][0]["message"]["content"], &json!(text));
        let u = u.unwrap();
        prop_assert_eq!((u.prompt, u.completion, u.cached), (input + cached, output, cached));

        // as a stream, one delta per piece
        let mut events = vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": input, "output_tokens": 1, "cache_read_input_tokens": cached}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ];
        events.extend(pieces.iter().map(|p| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
        events.push(json!({"type": "content_block_stop", "index": 0}));
        events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}}));
        events.push(json!({"type": "message_stop"}));
        let mut t = Translator::new(None);
        let mut streamed = String::new();
        let mut last_usage = Value::Null;
        for e in &events {
            for p in t.event("", &e.to_string()).unwrap() {
                if p == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(&p).unwrap();
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    streamed.push_str(c);
                }
                if !v["usage"].is_null() {
                    last_usage = v["usage"].clone();
                }
            }
        }
        prop_assert!(t.stopped());
        prop_assert_eq!(streamed, text);
        prop_assert_eq!(&last_usage["prompt_tokens"], &json!(input + cached));
        prop_assert_eq!(&last_usage["completion_tokens"], &json!(output));
    }
}
