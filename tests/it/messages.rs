//! POST /v1/messages (SPEC 9.1): Anthropic's API in; passed through to an
//! `anthropic` provider, translated for an OpenAI-compatible one; Anthropic
//! answers, events and errors out.

use serde_json::{json, Value};

use crate::common::gateway::header;
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::{model, prelude, tier, UP_KEY};

const ANT_KEY: &str = "sk-ant-SECRET-8888";
const ENV: &[(&str, &str)] = &[("UP_KEY", UP_KEY), ("ANT_KEY", ANT_KEY)];

/// first (claude-x on an anthropic provider) -> second (m2, OpenAI-shaped);
/// the alias claude-sonnet-4-5 -> first.
async fn gateway() -> (Upstream, Gateway) {
    gateway_with("").await
}

/// `gateway`, with more keys on the first tier.
async fn gateway_with(first: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}\n[providers.ant]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"ANT_KEY\"\n\
         \n[models.claude-x]\nprovider = \"ant\"\nmodel = \"claude-x\"\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n{}{}{}\
         \n[aliases]\n\"claude-sonnet-4-5\" = \"first\"\n",
        prelude(&up, ""),
        up.root(),
        model("m2", ""),
        tier(
            "first",
            &["claude-x"],
            &format!("max_retries = 0\nfirst_token_timeout_ms = 500\nfallback = [\"second\"]\n{first}")
        ),
        tier("second", &["m2"], "max_retries = 0"),
    );
    (up, Gateway::start(&cfg, ENV).await)
}

fn post(gw: &Gateway, path: &str) -> reqwest::RequestBuilder {
    gw.http
        .post(format!("{}{path}", gw.url))
        .header("anthropic-version", "2023-06-01")
}

/// What Claude Code sends, in small.
fn request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": stream,
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "user_1"},
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]}],
    })
}

fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn an_anthropic_tier_gets_the_request_as_it_came() {
    let (up, gw) = gateway().await;
    let resp = post(&gw, "/v1/messages?beta=true")
        .header("x-api-key", "client-key-ignored")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert!(resp.headers().get("x-cascade-dropped-params").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "ok from claude-x");
    let sent = &up.requests_for("claude-x")[0];
    assert_eq!(sent.uri.path(), "/v1/messages");
    // passed through: nothing translated or dropped
    let mut expected = request(false);
    expected["model"] = json!("claude-x");
    assert_eq!(sent.body, expected);
    assert_eq!(sent.headers["x-api-key"], ANT_KEY);
    assert_eq!(
        sent.headers["anthropic-beta"],
        "interleaved-thinking-2025-05-14"
    );
}

#[tokio::test]
async fn an_openai_tier_after_a_529_answers_in_anthropic_shape() {
    let (up, gw) = gateway().await;
    up.script("claude-x", vec![Step::Status(529, "Overloaded")]);
    up.script("m2", vec![Step::Text("translated", 12, 3)]);
    let resp = post(&gw, "/v1/messages")
        .header("anthropic-beta", "x")
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(header(&resp, "x-cascade-dropped-params"), "thinking,top_k");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "translated"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 12);
    assert_eq!(body["usage"]["output_tokens"], 3);
    let sent = &up.requests_for("m2")[0];
    assert_eq!(sent.uri.path(), "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(sent.body["max_tokens"], 32000);
    assert!(sent.body.get("thinking").is_none());
    // anthropic-beta goes to anthropic providers only
    assert!(sent.headers.get("anthropic-beta").is_none());
}

#[tokio::test]
async fn a_passed_through_stream_keeps_its_events_and_ends_with_the_cost() {
    let (up, gw) = gateway().await;
    let mut s = StreamScript::text(&["Hel", "lo"]);
    s.usage = Some((20, 2));
    up.script("claude-x", vec![Step::Stream(s)]);
    let resp = post(&gw, "/v1/messages")
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let names: Vec<String> = events(&text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(!text.contains("[DONE]"), "{text}");
    // the cost comment follows message_stop
    let comment = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(comment.starts_with(": cascade {"), "{text}");
}

#[tokio::test]
async fn a_translated_stream_is_a_sequence_of_anthropic_events() {
    let (up, gw) = gateway().await;
    up.script("claude-x", vec![Step::Status(529, "Overloaded")]);
    up.script("m2", vec![Step::Stream(StreamScript::text(&["Hel", "lo"]))]);
    let resp = post(&gw, "/v1/messages")
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let text = resp.text().await.unwrap();
    let evs = events(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    let streamed: String = evs
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, "Hello");
    assert_eq!(evs[5].1["usage"]["output_tokens"], 7);
    assert!(
        text.trim_end().ends_with('}') && text.contains(": cascade {"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_whose_first_tier_stalls_falls_back() {
    let (up, gw) = gateway().await;
    let mut stall = StreamScript::text(&[]);
    stall.role_first = true;
    stall.chunks = vec![(5_000, "late")];
    up.script("claude-x", vec![Step::Stream(stall)]);
    up.script(
        "m2",
        vec![Step::Stream(StreamScript::text(&["from ", "second"]))],
    );
    let resp = post(&gw, "/v1/messages")
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let text = resp.text().await.unwrap();
    // one message_start only: the stalled one was withheld
    assert_eq!(text.matches("event: message_start").count(), 1, "{text}");
    assert!(text.contains("from "), "{text}");
}

#[tokio::test]
async fn a_stream_broken_after_commit_ends_with_an_error_event() {
    let (up, gw) = gateway().await;
    let mut cut = StreamScript::text(&["Hel", "lo"]);
    cut.cut = true;
    up.script("claude-x", vec![Step::Stream(cut)]);
    let text = post(&gw, "/v1/messages")
        .json(&request(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evs = events(&text);
    let (name, error) = evs.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(error["error"]["type"], "api_error");
    assert_eq!(error["error"]["code"], "stream_interrupted");
    assert!(!text.contains("message_stop"), "{text}");
}

#[tokio::test]
async fn bad_input_gets_an_anthropic_400_and_nothing_is_sent() {
    let (up, gw) = gateway().await;
    let mut no_max = request(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let mut unknown_block = request(false);
    unknown_block["messages"][0]["content"][0]["type"] = json!("banana");
    let mut orphan = request(false);
    orphan["messages"] = json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]);
    for (bad, says) in [
        (no_max, "max_tokens"),
        (unknown_block, "banana"),
        (orphan, "tool_use_id"),
    ] {
        let resp = post(&gw, "/v1/messages").json(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    assert!(up.requests().is_empty());
    // an unknown model: 404 not_found_error
    let mut unknown = request(false);
    unknown["model"] = json!("claude-nope");
    let resp = post(&gw, "/v1/messages")
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn when_every_tier_fails_the_502_is_api_error_and_not_to_be_retried() {
    let (up, gw) = gateway().await;
    up.script("claude-x", vec![Step::Status(529, "Overloaded")]);
    up.script("m2", vec![Step::Status(500, "down")]);
    let resp = post(&gw, "/v1/messages")
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "all_models_failed");
    assert_eq!(body["error"]["attempts"].as_array().unwrap().len(), 2);
    let text = body.to_string();
    assert!(!text.contains(ANT_KEY) && !text.contains(UP_KEY));
}

/// Turn 1 of a tool loop served by the OpenAI-compatible tier, turn 2 with
/// thinking on by the anthropic tier: its history has no signed thinking.
#[tokio::test]
async fn thinking_across_tiers_is_made_safe() {
    let (up, gw) = gateway().await;
    let tool_call = json!({"id": "c", "object": "chat.completion", "model": "m2", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
    up.script("claude-x", vec![Step::Status(529, "Overloaded"), Step::Ok]);
    up.script("m2", vec![Step::Json(tool_call)]);
    let mut turn = request(false);
    turn["tools"] = json!([{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let resp = post(&gw, "/v1/messages").json(&turn).send().await.unwrap();
    let first: Value = resp.json().await.unwrap();
    assert_eq!(first["stop_reason"], "tool_use");
    let tool_use = first["content"][0].clone();
    assert_eq!(tool_use["type"], "tool_use");
    assert_eq!(tool_use["id"], "call_1");
    assert_eq!(tool_use["input"], json!({"city": "Paris"}));
    // turn 2: the history as the SDK builds it, thinking still on
    let mut messages = turn["messages"].as_array().unwrap().clone();
    messages.push(json!({"role": "assistant", "content": first["content"]}));
    messages.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}));
    turn["messages"] = Value::Array(messages);
    let resp = post(&gw, "/v1/messages").json(&turn).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert_eq!(header(&resp, "x-cascade-dropped-params"), "thinking");
    let sent = up.requests_for("claude-x").pop().unwrap();
    assert!(sent.body.get("thinking").is_none());
    assert_eq!(sent.body["messages"][1]["content"][0]["id"], "call_1");
}

#[tokio::test]
async fn count_tokens_and_models_speak_anthropic() {
    let (up, gw) = gateway().await;
    let resp = post(&gw, "/v1/messages/count_tokens")
        .json(&json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let n: Value = resp.json().await.unwrap();
    assert!(n["input_tokens"].as_u64().unwrap() > 0);
    let resp = post(&gw, "/v1/messages/count_tokens")
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(up.requests().is_empty());
    let list: Value = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["has_more"], false);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"claude-sonnet-4-5") && ids.contains(&"first"),
        "{list}"
    );
    assert_eq!(list["data"][0]["type"], "model");
    assert_eq!(list["first_id"], ids[0]);
}

#[tokio::test]
async fn an_empty_answer_on_a_validating_tier_falls_back() {
    let (up, gw) = gateway_with("validate_output = true").await;
    let mut empty = crate::common::messages::message("claude-x", " ", 10, 1);
    empty["content"] = json!([{"type": "text", "text": "  "}]);
    up.script("claude-x", vec![Step::Json(empty)]);
    up.script("m2", vec![Step::Text("a real answer", 5, 3)]);
    let resp = post(&gw, "/v1/messages")
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "a real answer");
    assert_eq!(
        gw.metric(
            r#"cascade_attempts_total{model="claude-x",outcome="invalid_output",tier="first"}"#
        )
        .await,
        1.0
    );
}
