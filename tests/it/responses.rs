//! POST /v1/responses (SPEC 9.1): the Responses API through the chat
//! pipeline: translated to Chat Completions (and by the anthropic provider
//! to Messages), answered as a `response` object or Responses events.

use serde_json::{json, Value};

use crate::common::gateway::header;
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::{first_then_second, prelude, ENV};

async fn gateway() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, ""),
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0",
        "max_retries = 0\nfirst_token_timeout_ms = 400",
        "max_retries = 0",
    );
    (up, Gateway::start(&cfg, ENV).await)
}

fn post(gw: &Gateway) -> reqwest::RequestBuilder {
    gw.http.post(format!("{}/v1/responses", gw.url))
}

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test]
async fn a_string_input_is_answered_as_a_response() {
    let (up, gw) = gateway().await;
    up.script("m1", vec![Step::Text("hello there", 12, 3)]);
    let resp = post(&gw)
        .json(&json!({"model": "first", "input": "hi", "instructions": "be brief", "store": false, "max_output_tokens": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert!(resp.headers().get("x-cascade-cost-usd").is_some());
    let r: Value = resp.json().await.unwrap();
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["content"][0]["text"], "hello there");
    assert_eq!(r["usage"]["input_tokens"], 12);
    assert_eq!(r["usage"]["total_tokens"], 15);
    assert_eq!(r["max_output_tokens"], 50);
    let sent = &up.requests_for("m1")[0].body;
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(sent["max_tokens"], 50);
}

#[tokio::test]
async fn a_stream_is_a_sequence_of_responses_events_after_a_fallback() {
    let (up, gw) = gateway().await;
    up.script("m1", vec![Step::Status(500, "down")]);
    up.script("m2", vec![Step::Stream(StreamScript::text(&["Hel", "lo"]))]);
    let resp = post(&gw)
        .json(&json!({"model": "first", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let text = resp.text().await.unwrap();
    let evs = events(&text);
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"response.created"));
    assert_eq!(types.last(), Some(&"response.completed"));
    assert!(!text.contains("[DONE]"));
    let seqs: Vec<u64> = evs
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..evs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        evs.last().unwrap()["response"]["output"][0]["content"][0]["text"],
        "Hello"
    );
    assert!(
        text.trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .starts_with(": cascade {"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_broken_after_commit_ends_with_response_failed() {
    let (up, gw) = gateway().await;
    let mut cut = StreamScript::text(&["Hel", "lo"]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    let text = post(&gw)
        .json(&json!({"model": "first", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evs = events(&text);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.failed", "{text}");
    assert_eq!(last["response"]["error"]["code"], "stream_interrupted");
    assert!(!text.contains("response.completed"));
}

#[tokio::test]
async fn stateful_features_and_bad_items_are_refused_before_any_upstream_call() {
    let (up, gw) = gateway().await;
    for (body, param, code) in [
        (
            json!({"model": "first", "input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
            "unsupported_parameter",
        ),
        (
            json!({"model": "first", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
            "unsupported_parameter",
        ),
        (
            json!({"model": "first", "input": [{"type": "banana"}]}),
            "input[0].type",
            "invalid_request",
        ),
    ] {
        let resp = post(&gw).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
    }
    assert!(up.requests().is_empty());
    let resp = gw
        .http
        .get(format!("{}/v1/responses/resp_123", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not stored"));
}

#[tokio::test]
async fn function_calls_round_trip_and_hosted_tools_are_listed() {
    let (up, gw) = gateway().await;
    let call = json!({"id": "c", "object": "chat.completion", "model": "m1", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "apply_patch", "arguments": "{\"input\":\"*** Begin Patch\"}"}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
    up.script(
        "m1",
        vec![Step::Json(call), Step::Text("sunny, patched", 20, 4)],
    );
    let tools = json!([
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "custom", "name": "apply_patch", "description": "edit files"},
        {"type": "web_search"},
    ]);
    let resp = post(&gw)
        .json(&json!({"model": "first", "input": "weather?", "tools": tools}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "x-cascade-dropped-params"),
        "tools.web_search"
    );
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["output"][0]["type"], "function_call");
    assert_eq!(r["output"][0]["call_id"], "call_1");
    assert_eq!(r["output"][0]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(r["output"][1]["type"], "custom_tool_call");
    assert_eq!(r["output"][1]["input"], "*** Begin Patch");
    let mut input = vec![json!({"role": "user", "content": "weather?"})];
    input.extend(r["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": "call_1", "output": "sunny"}));
    input
        .push(json!({"type": "custom_tool_call_output", "call_id": "call_2", "output": "patched"}));
    let r: Value = post(&gw)
        .json(&json!({"model": "first", "input": input, "tools": tools}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["output"][0]["content"][0]["text"], "sunny, patched");
    let sent = &up.requests_for("m1")[1].body;
    let m = sent["messages"].as_array().unwrap();
    assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "call_2", "content": "patched"})
    );
}
