use serde_json::{json, Value};

use super::events::Encoder;
use super::to_chat::to_chat;
use super::*;

fn parse(v: Value) -> Result<MessagesBody, BodyError> {
    MessagesBody::parse(v.to_string().as_bytes())
}

#[test]
fn anthropic_checks_are_made_before_anything_is_sent() {
    let ok =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    assert!(parse(ok.clone()).is_ok());
    let mut no_max = ok.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    assert!(parse(no_max).unwrap_err().message.contains("max_tokens"));
    let mut unknown = ok.clone();
    unknown["messages"] = json!([{"role": "user", "content": [{"type": "banana"}]}]);
    assert!(parse(unknown).unwrap_err().message.contains("banana"));
    let mut orphan = ok.clone();
    orphan["messages"] = json!([{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]);
    assert!(parse(orphan).unwrap_err().message.contains("tool_use_id"));
    let mut answered = ok;
    answered["messages"] = json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]},
    ]);
    assert!(parse(answered).is_ok());
}

fn tool_loop(signed: bool) -> Value {
    let mut turn = vec![json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})];
    if signed {
        turn.insert(
            0,
            json!({"type": "thinking", "thinking": "hm", "signature": "sig"}),
        );
    } else {
        turn.insert(0, json!({"type": "thinking", "thinking": "hm"}));
    }
    json!({"model": "m", "max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": turn},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]},
    ]})
}

#[test]
fn thinking_is_dropped_when_the_last_tool_turn_came_from_another_provider() {
    let (bytes, dropped) = parse(tool_loop(false)).unwrap().for_anthropic("claude-x");
    let sent: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(dropped, ["thinking"]);
    assert!(sent.get("thinking").is_none());
    assert_eq!(sent["model"], "claude-x");
    // the unsigned thinking block is stripped
    assert_eq!(sent["messages"][1]["content"].as_array().unwrap().len(), 1);

    let (bytes, dropped) = parse(tool_loop(true)).unwrap().for_anthropic("claude-x");
    let sent: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(dropped.is_empty());
    assert_eq!(sent["thinking"]["type"], "enabled");
    assert_eq!(sent["messages"][1]["content"].as_array().unwrap().len(), 2);
}

#[test]
fn a_request_becomes_chat_completions() {
    let body = parse(json!({
        "model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "calling"}, {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]}]},
        ]
    }))
    .unwrap();
    let (chat, dropped) = to_chat(&body);
    let v = chat.to_value();
    // in request order (json! sorts the keys)
    assert_eq!(dropped, ["thinking", "tools.web_search_20250305", "top_k"]);
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        v["messages"][1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,AAAA"
    );
    assert_eq!(
        v["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":1}"
    );
    assert_eq!(
        v["messages"][3],
        json!({"role": "tool", "tool_call_id": "toolu_1", "content": "42"})
    );
    assert_eq!(v["stop"], json!(["END"]));
    assert_eq!(v["user"], "u1");
    assert_eq!(v["tool_choice"], "required");
    assert_eq!(v["parallel_tool_calls"], false);
    assert_eq!(v["tools"].as_array().unwrap().len(), 1);
}

#[test]
fn chat_chunks_become_anthropic_events() {
    let mut e = Encoder::new();
    let mut out = String::new();
    out += &e.chunk(br#"{"model":"up","choices":[{"delta":{"role":"assistant","content":""}}]}"#);
    assert!(out.is_empty(), "nothing before content: {out}");
    out += &e.chunk(br#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
    out += &e.chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#);
    out += &e.chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]}"#);
    out += &e.chunk(br#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#);
    out += &e.finish(&crate::cost::Usage {
        prompt: 10,
        completion: 5,
        ..Default::default()
    });
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(out.contains(r#""stop_reason":"tool_use""#), "{out}");
    assert!(out.contains(r#""partial_json":"{\"a\":1}""#), "{out}");
}
