use serde_json::{json, Value};

use super::events::Encoder;
use super::*;
use crate::cost::Usage;

fn parse(v: Value) -> Result<ResponsesRequest, GatewayError> {
    ResponsesRequest::parse(v.to_string().as_bytes())
}

fn refused(v: Value) -> GatewayError {
    match parse(v) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn items_become_chat_messages() {
    let r = parse(json!({
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"type": "message", "role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
            {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": "{\"a\":1}", "id": null, "status": null},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "call_2", "output": "done"},
        ],
        "tools": [
            {"type": "function", "name": "get", "parameters": {"type": "object"}},
            {"type": "custom", "name": "apply_patch", "description": "patch files"},
            {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "inner", "parameters": {"type": "object"}}]},
            {"type": "web_search"},
        ],
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
        "max_output_tokens": 100,
        "store": false,
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
    }))
    .unwrap();
    let v = r.chat.to_value();
    let m = v["messages"].as_array().unwrap();
    assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(m[1], json!({"role": "system", "content": "rules"}));
    assert_eq!(
        m[2]["content"][1]["image_url"]["url"],
        "data:image/png;base64,AA"
    );
    assert_eq!(m[3]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        m[4],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "42"})
    );
    assert_eq!(
        m[5]["tool_calls"][0]["function"]["arguments"],
        "{\"input\":\"*** Begin Patch\"}"
    );
    assert_eq!(v["tools"].as_array().unwrap().len(), 3);
    assert_eq!(v["max_tokens"], 100);
    assert_eq!(v["response_format"]["json_schema"]["name"], "out");
    assert_eq!(r.echo.custom_tools, ["apply_patch"]);
    assert_eq!(
        r.dropped,
        ["input.reasoning", "tools.web_search", "truncation"]
    );
}

#[test]
fn stateful_features_and_unknown_items_are_refused_by_name() {
    let base = json!({"model": "m", "input": "hi"});
    for (field, value, param) in [
        (
            "previous_response_id",
            json!("resp_1"),
            "previous_response_id",
        ),
        ("conversation", json!("conv_1"), "conversation"),
        ("background", json!(true), "background"),
        ("tool_choice", json!({"type": "web_search"}), "tool_choice"),
    ] {
        let mut b = base.clone();
        b[field] = value;
        match refused(b) {
            GatewayError::BadParam { param: p, code, .. } => {
                assert_eq!((p.as_str(), code), (param, "unsupported_parameter"));
            }
            other => panic!("{other:?}"),
        }
    }
    let mut b = base.clone();
    b["input"] = json!([{"type": "item_reference", "id": "msg_1"}]);
    assert!(matches!(
        refused(b),
        GatewayError::BadParam {
            code: "unsupported_parameter",
            ..
        }
    ));
    let mut b = base;
    b["input"] = json!([{"type": "message", "role": "user", "content": "x"}, {"type": "banana"}]);
    match refused(b) {
        GatewayError::BadParam { param, code, .. } => {
            assert_eq!((param.as_str(), code), ("input[1].type", "invalid_request"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn chat_chunks_become_responses_events() {
    let echo = Echo {
        custom_tools: vec!["apply_patch".into()],
        ..Echo::default()
    };
    let mut e = Encoder::new(echo);
    let mut out = String::new();
    out += &e.chunk(br#"{"model":"up","choices":[{"delta":{"role":"assistant","content":""}}]}"#);
    assert!(out.is_empty());
    out += &e.chunk(br#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
    out += &e.chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"get","arguments":"{\"a\""}}]}}]}"#);
    out += &e.chunk(
        br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
    );
    out += &e.chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_2","function":{"name":"apply_patch","arguments":"{\"input\":\"P\"}"}}]}}]}"#);
    out += &e.finish(&Usage {
        prompt: 3,
        completion: 4,
        ..Default::default()
    });
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.custom_tool_call_input.delta",
            "response.custom_tool_call_input.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["output"][2]["type"], "custom_tool_call");
    assert_eq!(done["output"][2]["input"], "P");
    assert_eq!(done["usage"]["total_tokens"], 7);
}

#[test]
fn the_fast_writer_writes_what_serde_would() {
    use super::answer::{message_item, Response};
    let mut echo = Echo::default();
    let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
    echo.fields.push(("temperature".into(), raw(json!(0.2))));
    echo.fields.push((
        "tools".into(),
        raw(json!([{"type": "function", "name": "f"}])),
    ));
    let usage = Usage {
        prompt: 5,
        completion: 2,
        cached: 1,
        cache_write: 0,
    };
    for status in ["completed", "incomplete"] {
        let r = Response {
            echo: &echo,
            id: "resp_1",
            created_at: 7,
            model: "m\"odel",
            status,
            output: &[message_item("msg_1", "hi", "completed")],
            usage: Some(&usage),
            error: None,
        };
        let fast: Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(fast, serde_json::to_value(&r).unwrap());
    }
}

#[test]
fn plain_message_items_pass_as_they_are() {
    let r = parse(json!({
        "model": "m",
        "instructions": "be \"brief\"",
        "input": [
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"},
        ],
    }))
    .unwrap();
    assert_eq!(
        r.chat.to_value()["messages"],
        json!([
            {"role": "system", "content": "be \"brief\""},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"},
        ])
    );
    let r = parse(json!({"model": "m", "input": "just this"})).unwrap();
    assert_eq!(
        r.chat.to_value()["messages"],
        json!([{"role": "user", "content": "just this"}])
    );
}
