//! Stream translation: each Anthropic event (as in Anthropic's streaming
//! documentation) and the OpenAI chunks it becomes.

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::*;
use crate::providers::stream::ChunkKind;

const MESSAGE_START: &str = r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-opus-4-1-20250805","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":100,"cache_creation_input_tokens":10}}}"#;

/// Feed events to a fresh translator (json tool: `json_tool`); the
/// payloads of the last one, parsed (`[DONE]` as a string).
fn translate(json_tool: Option<&str>, events: &[&str]) -> (Translator, Vec<Vec<Value>>) {
    let mut t = Translator::new(json_tool.map(str::to_string));
    let out = events
        .iter()
        .map(|e| {
            t.event("", e)
                .unwrap()
                .iter()
                .map(|p| serde_json::from_str(p).unwrap_or_else(|_| json!(p)))
                .collect()
        })
        .collect();
    (t, out)
}

fn deltas(payloads: &[Value]) -> Vec<Value> {
    payloads
        .iter()
        .map(|p| p["choices"][0]["delta"].clone())
        .collect()
}

#[test]
fn each_event_becomes_its_chunks() {
    let tool_start = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#;
    // (name, events before, the event, the deltas it gives)
    let cases: Vec<(&str, Vec<&str>, &str, Vec<Value>)> = vec![
        (
            "message_start: the role chunk",
            vec![],
            MESSAGE_START,
            vec![json!({"role": "assistant", "content": ""})],
        ),
        (
            "ping: nothing",
            vec![MESSAGE_START],
            r#"{"type": "ping"}"#,
            vec![],
        ),
        (
            "an empty text block start: nothing",
            vec![MESSAGE_START],
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            vec![],
        ),
        (
            "text_delta: content",
            vec![
                MESSAGE_START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ],
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            vec![json!({"content": "Hello"})],
        ),
        (
            "content_block_stop: nothing",
            vec![MESSAGE_START],
            r#"{"type":"content_block_stop","index":0}"#,
            vec![],
        ),
        (
            "a tool_use block start: id, name and empty arguments at tool index 0",
            vec![MESSAGE_START],
            tool_start,
            vec![
                json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            ],
        ),
        (
            "input_json_delta: an arguments fragment",
            vec![MESSAGE_START, tool_start],
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San Fra"}}"#,
            vec![
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": \"San Fra"}}]}),
            ],
        ),
        (
            "an empty input_json_delta: nothing",
            vec![MESSAGE_START, tool_start],
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            vec![],
        ),
        (
            "thinking_delta: reasoning_content; signature_delta: nothing",
            vec![
                MESSAGE_START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ],
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me solve this"}}"#,
            vec![json!({"reasoning_content": "Let me solve this"})],
        ),
        (
            "signature_delta: nothing",
            vec![
                MESSAGE_START,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ],
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
            vec![],
        ),
        (
            "an unknown event type: nothing",
            vec![MESSAGE_START],
            r#"{"type":"something_new","x":1}"#,
            vec![],
        ),
    ];
    for (name, before, event, want) in cases {
        let mut events = before.clone();
        events.push(event);
        let (_, out) = translate(None, &events);
        let last = out.last().unwrap();
        assert_eq!(deltas(last), want, "{name}");
        for p in last {
            assert_eq!(p["object"], "chat.completion.chunk", "{name}");
            assert_eq!(p["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "{name}");
            assert_eq!(p["model"], "claude-opus-4-1-20250805", "{name}");
            assert_eq!(p["choices"][0]["index"], 0, "{name}");
        }
    }
}

#[test]
fn message_delta_finishes_and_message_stop_gives_usage_then_done() {
    for (stop, want) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
    ] {
        let delta = format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}","stop_sequence":null}},"usage":{{"output_tokens":15}}}}"#
        );
        let (_, out) = translate(None, &[MESSAGE_START, &delta, r#"{"type":"message_stop"}"#]);
        let finish = &out[1];
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["delta"], json!({}), "{stop}");
        assert_eq!(finish[0]["choices"][0]["finish_reason"], want, "{stop}");
        let stop_out = &out[2];
        assert_eq!(stop_out.len(), 2, "{stop}: usage, [DONE]");
        assert_eq!(stop_out[0]["choices"], json!([]));
        assert_eq!(
            stop_out[0]["usage"],
            json!({"prompt_tokens": 135, "completion_tokens": 15, "total_tokens": 150,
                   "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 10}})
        );
        assert_eq!(stop_out[1], json!("[DONE]"));
    }
    // no message_delta: message_stop still finishes
    let (_, out) = translate(None, &[MESSAGE_START, r#"{"type":"message_stop"}"#]);
    assert_eq!(out[1][0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(out[1].len(), 3);
}

#[test]
fn error_events_and_malformed_data_fail() {
    let mut t = Translator::new(None);
    match t.event(
        "error",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ) {
        Err(UpstreamError::ErrorInBody(m)) => assert_eq!(m, "overloaded_error: Overloaded"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        t.event("message_start", "{nope"),
        Err(UpstreamError::BadBody(_))
    ));
    // the SSE event name stands in for a missing `type`
    assert_eq!(t.event("ping", "{}").unwrap(), Vec::<String>::new());
}

#[test]
fn the_json_schema_tool_streams_as_content() {
    let (_, out) = translate(
        Some("plan"),
        &[
            MESSAGE_START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_9","name":"plan","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"steps\":"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#,
        ],
    );
    assert!(out[1].is_empty(), "no tool call announced");
    assert_eq!(deltas(&out[2]), vec![json!({"content": "{\"steps\":"})]);
    assert_eq!(out[3][0]["choices"][0]["finish_reason"], "stop");
}

fn sse(events: &[(&str, &str)]) -> Vec<Result<bytes::Bytes, std::io::Error>> {
    events
        .iter()
        .map(|(name, data)| {
            Ok(bytes::Bytes::from(format!(
                "event: {name}\ndata: {data}\n\n"
            )))
        })
        .collect()
}

/// The whole documented tool-use stream, through the classifier.
fn tool_stream() -> Vec<(&'static str, &'static str)> {
    vec![
        ("message_start", MESSAGE_START),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"SF\"}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ]
}

#[tokio::test]
async fn a_whole_stream_is_classified_and_ends_after_done() {
    let s = from_sse(
        futures_util::stream::iter(sse(&tool_stream())),
        Translator::new(None),
        1 << 20,
    );
    let chunks: Vec<_> = s.collect().await;
    let kinds: Vec<ChunkKind> = chunks.iter().map(|c| c.as_ref().unwrap().kind).collect();
    use ChunkKind::*;
    assert_eq!(
        kinds,
        vec![Preamble, Content, Content, Content, Content, Content, UsageOnly, Done]
    );
    let usage = chunks[6].as_ref().unwrap().usage.unwrap();
    assert_eq!(
        (
            usage.prompt,
            usage.completion,
            usage.cached,
            usage.cache_write
        ),
        (135, 89, 100, 10)
    );
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_an_interruption() {
    let mut events = tool_stream();
    events.truncate(4);
    let s = from_sse(
        futures_util::stream::iter(sse(&events)),
        Translator::new(None),
        1 << 20,
    );
    let chunks: Vec<_> = s.collect().await;
    assert_eq!(chunks.len(), 3, "role, content, then the interruption");
    assert!(matches!(
        chunks.last().unwrap(),
        Err(UpstreamError::MidStream(_))
    ));
}

#[tokio::test]
async fn an_error_event_ends_the_stream_with_an_error() {
    let events = vec![
        ("message_start", MESSAGE_START),
        (
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let s = from_sse(
        futures_util::stream::iter(sse(&events)),
        Translator::new(None),
        1 << 20,
    );
    let chunks: Vec<_> = s.collect().await;
    assert_eq!(chunks.len(), 2);
    assert!(matches!(chunks[1], Err(UpstreamError::ErrorInBody(_))));
}
