//! `kind = "anthropic"` providers through the gateway: the scripted upstream
//! answers `/v1/messages` like Anthropic's API, the client sees OpenAI.

use serde_json::{json, Value};

use crate::common::gateway::header;
use crate::common::messages::message;
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::{model, prelude, tier, UP_KEY};

const ANT_KEY: &str = "sk-ant-SECRET-7777";
const ENV: &[(&str, &str)] = &[("UP_KEY", UP_KEY), ("ANT_KEY", ANT_KEY)];

/// The Anthropic provider `ant` on the scripted upstream.
fn ant_provider(up: &Upstream) -> String {
    format!(
        r#"
[providers.ant]
kind = "anthropic"
base_url = "{}"
api_key_env = "ANT_KEY"
headers = {{ "anthropic-beta" = "prompt-caching-2024-07-31" }}
"#,
        up.root()
    )
}

/// `[models.NAME]` on `ant`, upstream name = NAME.
fn ant_model(name: &str, extra: &str) -> String {
    format!("\n[models.{name}]\nprovider = \"ant\"\nmodel = \"{name}\"\n{extra}\n")
}

/// first (claude-x on Anthropic, no retries) -> second (m2, OpenAI-shaped).
async fn gateway() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}",
        prelude(&up, ""),
        ant_provider(&up),
        ant_model(
            "claude-x",
            "input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n\
             cache_read_usd_per_mtok = 0.30\ncache_write_usd_per_mtok = 3.75\n\
             max_output_tokens = 1024\ncontext_window = 200000"
        ),
        model("m2", ""),
        tier(
            "first",
            &["claude-x"],
            "max_retries = 0\nfallback = [\"second\"]"
        ),
        tier("second", &["m2"], "max_retries = 0"),
    );
    (up, Gateway::start(&cfg, ENV).await)
}

fn ask(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello"}
        ]
    })
}

/// An Anthropic answer whose usage has cache reads and writes.
fn cached_message(model: &str) -> Value {
    let mut m = message(model, "Hi! I am Claude.", 100, 50);
    m["usage"] = json!({"input_tokens": 100, "output_tokens": 50,
        "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200});
    m
}

/// The SSE lines of a whole response.
async fn read_all(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// The JSON data of the events (not [DONE], not comments).
fn data(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn content(events: &[String]) -> String {
    data(events)
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn closing_comment(events: &[String]) -> Value {
    let c = events
        .iter()
        .find_map(|e| e.strip_prefix(": cascade "))
        .expect("closing comment");
    serde_json::from_str(c).unwrap()
}

#[tokio::test]
async fn a_text_answer_with_cache_tokens_is_translated_and_priced() {
    let (up, gw) = gateway().await;
    up.script("claude-x", vec![Step::Json(cached_message("claude-x"))]);
    let resp = gw
        .chat()
        .header("x-request-id", "req-ant-1")
        .header("authorization", "Bearer client-key")
        .json(&ask("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert_eq!(header(&resp, "x-cascade-model"), "claude-x");
    assert_eq!(header(&resp, "x-cascade-provider"), "ant");
    assert_eq!(header(&resp, "x-cascade-attempts"), "1");
    // 100 input at $3 + 1000 cache reads at $0.30 + 200 cache writes at $3.75
    // + 50 output at $15, per Mtok
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0.0021");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-x");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Hi! I am Claude.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 1300);
    assert_eq!(body["usage"]["completion_tokens"], 50);
    assert_eq!(body["usage"]["total_tokens"], 1350);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        1000
    );

    // what Anthropic received
    let seen = up.requests_for("claude-x");
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.uri.path(), "/v1/messages");
    assert_eq!(r.headers["x-api-key"], ANT_KEY);
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    assert_eq!(r.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    assert_eq!(r.headers["x-request-id"], "req-ant-1");
    assert!(r.headers.get("authorization").is_none(), "no Authorization");
    assert_eq!(
        r.body,
        json!({
            "model": "claude-x",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        })
    );
}

#[tokio::test]
async fn a_text_stream_is_translated_with_usage_and_cache_prices() {
    let (up, gw) = gateway().await;
    let start = json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
        "content": [], "model": "claude-x", "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 1, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200}}});
    let text = |t: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
    up.script(
        "claude-x",
        vec![Step::Events(vec![
            ("message_start", start),
            ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ("ping", json!({"type": "ping"})),
            ("content_block_delta", text("Hi! ")),
            ("content_block_delta", text("I am Claude.")),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 50}})),
            ("message_stop", json!({"type": "message_stop"})),
        ])],
    );
    let mut body = ask("first", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.chat().json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert_eq!(header(&resp, "x-cascade-provider"), "ant");
    let events = read_all(resp).await;
    assert_eq!(content(&events), "Hi! I am Claude.");
    let chunks = data(&events);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude-x"));
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(|_| c))
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
    assert_eq!(usage.len(), 1, "one usage chunk, as asked");
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(usage[0]["usage"]["prompt_tokens"], 1300);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 50);
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let report = closing_comment(&events);
    assert_eq!(report["cost_usd"], json!(0.0021));
    assert_eq!(report["prompt_tokens"], 1300);
    assert_eq!(report["completion_tokens"], 50);
    assert!(report.get("usage_estimated").is_none());

    let r = &up.requests_for("claude-x")[0];
    assert_eq!(r.body["stream"], true);
    assert!(r.body.get("stream_options").is_none());
    assert_eq!(r.headers["accept"], "text/event-stream");
    assert!(r.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_scripted_stream_without_usage_request_hides_the_usage_chunk() {
    let (up, gw) = gateway().await;
    up.script(
        "claude-x",
        vec![Step::Stream(StreamScript::text(&["Hel", "lo ", "world"]))],
    );
    let resp = gw.chat().json(&ask("first", true)).send().await.unwrap();
    let events = read_all(resp).await;
    assert_eq!(content(&events), "Hello world");
    assert!(!events.iter().any(|e| e.contains("\"usage\"")));
    let report = closing_comment(&events);
    // 11 input at $3 + 7 output at $15
    assert_eq!(report["cost_usd"], json!(0.000138));
    assert_eq!(up.streams_closed_early(), 0);
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}})
}

fn tool_request(stream: bool) -> Value {
    let mut b = ask("first", stream);
    b["tools"] = json!([weather_tool()]);
    b["tool_choice"] = json!("required");
    b
}

#[tokio::test]
async fn tool_calls_are_translated_both_ways() {
    let (up, gw) = gateway().await;
    let mut answer = message("claude-x", "", 400, 90);
    answer["stop_reason"] = json!("tool_use");
    answer["content"] = json!([
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "Paris"}}
    ]);
    up.script("claude-x", vec![Step::Json(answer)]);
    let resp = gw.chat().json(&tool_request(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let msg = &body["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(msg["tool_calls"][0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(msg["tool_calls"][0]["type"], "function");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"location":"Paris"}"#
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let sent = &up.requests_for("claude-x")[0].body;
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["location"])
    );
}

#[tokio::test]
async fn tool_calls_stream_as_indexed_deltas() {
    let (up, gw) = gateway().await;
    let start = json!({"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant",
        "content": [], "model": "claude-x", "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 400, "output_tokens": 1}}});
    let args = |i: u64, p: &str| json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": p}});
    let tool = |i: u64, id: &str| {
        json!({"type": "content_block_start", "index": i,
               "content_block": {"type": "tool_use", "id": id, "name": "get_weather", "input": {}}})
    };
    up.script(
        "claude-x",
        vec![Step::Events(vec![
            ("message_start", start),
            ("content_block_start", tool(0, "toolu_a")),
            ("content_block_delta", args(0, "{\"location\":")),
            ("content_block_delta", args(0, " \"Paris\"}")),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            ("content_block_start", tool(1, "toolu_b")),
            ("content_block_delta", args(1, "{\"location\": \"Rome\"}")),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
            ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 90}})),
            ("message_stop", json!({"type": "message_stop"})),
        ])],
    );
    let resp = gw.chat().json(&tool_request(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = read_all(resp).await;
    // reassemble the calls the way an OpenAI client does
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    for c in data(&events) {
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push(Default::default());
            }
            if let Some(id) = tc["id"].as_str() {
                calls[i].0 = id.into();
                calls[i].1 = tc["function"]["name"].as_str().unwrap().into();
            }
            calls[i].2 += tc["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(
        calls,
        vec![
            (
                "toolu_a".into(),
                "get_weather".into(),
                "{\"location\": \"Paris\"}".into()
            ),
            (
                "toolu_b".into(),
                "get_weather".into(),
                "{\"location\": \"Rome\"}".into()
            ),
        ]
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    assert_eq!(closing_comment(&events)["completion_tokens"], 90);
}

#[tokio::test]
async fn an_overloaded_anthropic_falls_back_to_the_next_tier() {
    let overloaded_event = Step::Events(vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_3", "type": "message", "role": "assistant",
                "content": [], "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        (
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ]);
    let cases: Vec<(&str, Step, bool)> = vec![
        ("529", Step::Status(529, "Overloaded"), false),
        ("529, streaming", Step::Status(529, "Overloaded"), true),
        ("error event before content", overloaded_event, true),
        ("error object in a 200", Step::ErrorIn200, false),
    ];
    for (name, step, stream) in cases {
        let (up, gw) = gateway().await;
        up.script("claude-x", vec![step]);
        up.script(
            "m2",
            vec![Step::Stream(StreamScript::text(&["from ", "m2"]))],
        );
        if !stream {
            up.script("m2", vec![Step::Ok]);
        }
        let resp = gw.chat().json(&ask("first", stream)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(header(&resp, "x-cascade-tier"), "second", "{name}");
        assert_eq!(header(&resp, "x-cascade-fallback"), "true", "{name}");
        assert_eq!(header(&resp, "x-cascade-attempts"), "2", "{name}");
        if stream {
            assert_eq!(content(&read_all(resp).await), "from m2", "{name}");
        } else {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                body["choices"][0]["message"]["content"], "ok from m2",
                "{name}"
            );
        }
        assert_eq!(
            up.count("claude-x"),
            1,
            "{name}: no retry (max_retries = 0)"
        );
    }
}

#[tokio::test]
async fn a_prompt_too_long_falls_back_as_context_length() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}{}",
        prelude(&up, ""),
        ant_provider(&up),
        ant_model("claude-x", "context_window = 200000"),
        model("smaller", "context_window = 128000"),
        model("bigger", "context_window = 1000000"),
        tier(
            "a",
            &["claude-x"],
            "max_retries = 2\nfallback = [\"b\", \"c\"]"
        ),
        tier("b", &["smaller"], ""),
        tier("c", &["bigger"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("claude-x", vec![Step::ContextLength]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.count("claude-x"),
        1,
        "no retry of a prompt that does not fit"
    );
    assert_eq!(up.count("smaller"), 0, "a smaller window is skipped");
    assert_eq!(header(&resp, "x-cascade-tier"), "c");
    assert_eq!(header(&resp, "x-cascade-chain"), "a,c");
}

#[tokio::test]
async fn a_client_error_comes_back_in_the_openai_shape() {
    let (up, gw) = gateway().await;
    up.script(
        "claude-x",
        vec![Step::Status(400, "messages: roles must alternate")],
    );
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "messages: roles must alternate", "type": "invalid_request_error",
            "param": null, "code": "invalid_request_error"}})
    );
    assert_eq!(
        up.count("m2"),
        0,
        "the client's request is wrong: no fallback"
    );
}

#[tokio::test]
async fn the_key_never_comes_back_out() {
    let (up, gw) = gateway().await;
    let leak: &'static str = Box::leak(format!("invalid x-api-key {ANT_KEY}").into_boxed_str());
    up.script("claude-x", vec![Step::Status(401, leak)]);
    up.script("m2", vec![Step::Status(503, "down")]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(ANT_KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

/// The shipped BugHive config, its providers pointed at the scripted
/// upstream: every tier answers, the top ones through Anthropic.
#[tokio::test]
async fn bughive_runs_a_request_through_each_tier() {
    let up = Upstream::start().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/bughive.toml"
    ))
    .unwrap();
    let dir = crate::common::gateway::temp_dir();
    let ledger = dir.0.join("bughive.db").display().to_string();
    let root = up.root();
    let env = [
        ("ANTHROPIC_API_KEY", "sk-ant-bughive"),
        ("OPENROUTER_API_KEY", "sk-or-bughive"),
        ("CASCADE__PROVIDERS__ANTHROPIC__BASE_URL", root.as_str()),
        (
            "CASCADE__PROVIDERS__OPENROUTER__BASE_URL",
            up.base_url.as_str(),
        ),
        ("CASCADE__LEDGER__PATH", ledger.as_str()),
    ];
    let gw = Gateway::start(&text, &env).await;
    let cases = [
        (
            "orchestrator",
            "claude-opus",
            "anthropic",
            "claude-opus-4-1",
            "/v1/messages",
        ),
        (
            "reasoning",
            "claude-opus",
            "anthropic",
            "claude-opus-4-1",
            "/v1/messages",
        ),
        (
            "coding",
            "qwen-coder",
            "openrouter",
            "qwen/qwen-2.5-coder-32b-instruct",
            "/v1/chat/completions",
        ),
        (
            "general",
            "deepseek-chat",
            "openrouter",
            "deepseek/deepseek-chat",
            "/v1/chat/completions",
        ),
        (
            "fast",
            "qwen-fast",
            "openrouter",
            "qwen/qwen-2.5-7b-instruct",
            "/v1/chat/completions",
        ),
    ];
    for (tier, model, provider, upstream_model, path) in cases {
        let before = up.count(upstream_model);
        let resp = gw
            .chat()
            .header("x-cascade-tier", tier)
            .json(&json!({"messages": [{"role": "user", "content": "Analyze this page"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{tier}");
        assert_eq!(header(&resp, "x-cascade-tier"), tier);
        assert_eq!(header(&resp, "x-cascade-model"), model, "{tier}");
        assert_eq!(header(&resp, "x-cascade-provider"), provider, "{tier}");
        assert_eq!(header(&resp, "x-cascade-fallback"), "false", "{tier}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("ok from {upstream_model}"),
            "{tier}"
        );
        let seen = up.requests_for(upstream_model);
        assert_eq!(seen.len(), before + 1, "{tier}");
        let last = seen.last().unwrap();
        assert_eq!(last.uri.path(), path, "{tier}");
        if provider == "anthropic" {
            assert_eq!(last.headers["x-api-key"], "sk-ant-bughive");
            assert_eq!(
                last.body["max_tokens"], 8192,
                "the model's max_output_tokens"
            );
        } else {
            assert_eq!(last.headers["authorization"], "Bearer sk-or-bughive");
        }
    }
}

#[tokio::test]
async fn what_anthropic_cannot_take_is_listed_in_dropped_params() {
    let (up, gw) = gateway().await;
    let mut b = ask("first", false);
    b["frequency_penalty"] = json!(0.5);
    b["seed"] = json!(7);
    b["logit_bias"] = Value::Null; // a null is not a dropped field
    b["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "custom", "name": "apply_patch"}
    ]);
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-cascade-dropped-params"),
        "frequency_penalty,seed,tools.custom"
    );
    // nothing dropped: no header; an OpenAI-compatible tier takes everything
    let resp = gw.chat().json(&ask("first", false)).send().await.unwrap();
    assert!(resp.headers().get("x-cascade-dropped-params").is_none());
    let mut to_openai = b.clone();
    to_openai["model"] = json!("second");
    let resp = gw.chat().json(&to_openai).send().await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert!(resp.headers().get("x-cascade-dropped-params").is_none());
    // streams carry it too
    b["stream"] = json!(true);
    up.script("claude-x", vec![Step::Stream(StreamScript::text(&["Hi"]))]);
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(
        header(&resp, "x-cascade-dropped-params"),
        "frequency_penalty,seed,tools.custom"
    );
}
