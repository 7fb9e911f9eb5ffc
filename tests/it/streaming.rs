//! SPEC 4.5: streams through the chain.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::gateway::header;
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::{first_then_second, model, prelude, tier, ENV};

pub(crate) fn stream_body(model: &str, usage: bool) -> Value {
    let mut b =
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// first (m1, first token within 300 ms, idle 400 ms) -> second (m2).
async fn gateway() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, ""),
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0",
        "max_retries = 0\nfirst_token_timeout_ms = 300\ntimeout_ms = 400",
        "max_retries = 0",
    );
    (up, Gateway::start(&cfg, ENV).await)
}

/// The SSE lines of a whole response.
pub(crate) async fn read_all(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

pub(crate) fn closing_comment(events: &[String]) -> Value {
    let c = events
        .iter()
        .find_map(|e| e.strip_prefix(": cascade "))
        .expect("closing comment");
    serde_json::from_str(c).unwrap()
}

#[tokio::test]
async fn a_stream_passes_through_and_ends_with_cost_and_done() {
    let (up, gw) = gateway().await;
    up.script(
        "m1",
        vec![Step::Stream(StreamScript::text(&["Hel", "lo ", "world"]))],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert_eq!(header(&resp, "x-cascade-attempts"), "1");
    assert!(
        resp.headers().get("x-cascade-cost-usd").is_none(),
        "streams report cost at the end"
    );
    let events = read_all(resp).await;
    assert_eq!(content(&events), "Hello world");
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    let report = closing_comment(&events);
    // 11 prompt at $1/Mtok + 7 completion at $2/Mtok
    assert_eq!(report["cost_usd"], json!(0.000025));
    assert_eq!(report["prompt_tokens"], 11);
    assert_eq!(report["completion_tokens"], 7);
    assert!(report.get("usage_estimated").is_none());
    // asked upstream for usage, not forwarded since the client did not ask
    assert_eq!(
        up.requests()[0].body["stream_options"]["include_usage"],
        true
    );
    assert!(
        !events.iter().any(|e| e.contains("\"usage\"")),
        "usage chunk only on request"
    );
    assert_eq!(
        gw.metric(r#"cascade_requests_total{outcome="success",tier="first"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_tokens_total{kind="completion",model="m1",tier="first"}"#)
            .await,
        7.0
    );
    assert!(gw
        .metrics()
        .await
        .contains(r#"cascade_time_to_first_token_seconds_count{model="m1",tier="first"} 1"#));
}

#[tokio::test]
async fn the_usage_chunk_reaches_clients_that_ask() {
    let (up, gw) = gateway().await;
    up.script("m1", vec![Step::Stream(StreamScript::text(&["a"]))]);
    let events = read_all(
        gw.chat()
            .json(&stream_body("first", true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let usage: Vec<&String> = events.iter().filter(|e| e.contains("\"usage\"")).collect();
    assert_eq!(usage.len(), 1);
    // the client's own stream_options were kept
    assert_eq!(
        up.requests()[0].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn fallback_before_the_first_token() {
    let hold = StreamScript {
        role_first: true,
        chunks: vec![(1000, "late")],
        cut: false,
        usage: None,
        comments: 2,
    };
    let cases: Vec<(&str, Step)> = vec![
        ("503", Step::Status(503, "down")),
        ("hang", Step::Hang),
        (
            "role chunk at once, content after the first-token timeout",
            Step::Stream(hold),
        ),
        ("error in a 200", Step::ErrorIn200),
    ];
    for (name, step) in cases {
        let (up, gw) = gateway().await;
        up.script("m1", vec![step]);
        up.script(
            "m2",
            vec![Step::Stream(StreamScript::text(&["from ", "m2"]))],
        );
        let t0 = Instant::now();
        let resp = gw
            .chat()
            .json(&stream_body("first", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(header(&resp, "x-cascade-tier"), "second", "{name}");
        assert_eq!(header(&resp, "x-cascade-fallback"), "true", "{name}");
        let events = read_all(resp).await;
        assert_eq!(
            content(&events),
            "from m2",
            "{name}: nothing of the first attempt leaked"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{name}: first-token timeout, not the chunk delay"
        );
    }
}

#[tokio::test]
async fn connection_refused_before_a_stream_falls_back() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}\n[models.gone]\nprovider = \"dead\"\nmodel = \"gone\"\n{}{}{}",
        prelude(&up, ""),
        model("m2", ""),
        tier(
            "first",
            &["gone"],
            "max_retries = 0\nfallback = [\"second\"]"
        ),
        tier("second", &["m2"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m2", vec![Step::Stream(StreamScript::text(&["ok"]))]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(content(&read_all(resp).await), "ok");
}

#[tokio::test]
async fn a_mid_stream_cut_ends_with_an_error_event_and_no_done() {
    let (up, gw) = gateway().await;
    let cut = StreamScript {
        cut: true,
        ..StreamScript::text(&["partial ", "answer"])
    };
    up.script("m1", vec![Step::Stream(cut)]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = read_all(resp).await;
    assert_eq!(content(&events), "partial answer");
    assert!(
        !events.iter().any(|e| e == "data: [DONE]"),
        "[DONE] means success"
    );
    let err = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("error").is_some())
        .expect("an error event");
    assert!(err["error"]["message"].is_string());
    let report = closing_comment(&events);
    assert_eq!(report["usage_estimated"], true);
    assert_eq!(up.count("m2"), 0, "no fallback once the stream started");
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="upstream_error",tier="first"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_requests_total{outcome="failed",tier="first"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_upstream_is_cut_after_the_tier_timeout() {
    let (up, gw) = gateway().await;
    let stall = StreamScript {
        chunks: vec![(0, "start"), (5000, "never")],
        ..StreamScript::text(&[])
    };
    up.script("m1", vec![Step::Stream(stall)]);
    let t0 = Instant::now();
    let events = read_all(
        gw.chat()
            .json(&stream_body("first", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(content(&events), "start");
    assert!(events.iter().any(|e| e.contains("\"error\"")));
    assert!(!events.iter().any(|e| e == "data: [DONE]"));
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="timeout",tier="first"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn chunks_are_not_buffered() {
    let (up, gw) = gateway().await;
    let slow = StreamScript {
        chunks: vec![(0, "one"), (500, "two")],
        ..StreamScript::text(&[])
    };
    up.script("m2", vec![Step::Stream(slow)]);
    let resp = gw
        .chat()
        .json(&stream_body("second", false))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let mut first_at = None;
    let mut second_at = None;
    while let Some(chunk) = stream.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_at.is_none() && seen.contains("\"one\"") {
            first_at = Some(Instant::now());
        }
        if second_at.is_none() && seen.contains("\"two\"") {
            second_at = Some(Instant::now());
        }
    }
    let gap = second_at.unwrap() - first_at.unwrap();
    assert!(
        gap >= Duration::from_millis(400),
        "chunk one arrived with chunk two: {gap:?}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream() {
    let (up, gw) = gateway().await;
    let long = StreamScript {
        chunks: (0..50).map(|_| (100, "word ")).collect(),
        ..StreamScript::text(&[])
    };
    up.script("m2", vec![Step::Stream(long)]);
    let resp = gw
        .chat()
        .json(&stream_body("second", false))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await.unwrap().unwrap();
    drop(stream);
    // the upstream notices within a few chunk periods; poll, bounded
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.streams_closed_early() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw
        .metric(r#"cascade_client_disconnects_total{tier="second"}"#)
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "the disconnect was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn quiet_stretches_get_keep_alive_comments() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}",
        prelude(&up, ""),
        model("m1", ""),
        tier("t", &["m1"], "timeout_ms = 1000"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    let slow = StreamScript {
        chunks: vec![(0, "one"), (800, "two")],
        ..StreamScript::text(&[])
    };
    up.script("m1", vec![Step::Stream(slow)]);
    let events = read_all(
        gw.chat()
            .json(&stream_body("t", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let one = events.iter().position(|e| e.contains("\"one\"")).unwrap();
    let two = events.iter().position(|e| e.contains("\"two\"")).unwrap();
    assert!(
        events[one..two].iter().any(|e| e == ": keep-alive"),
        "a keep-alive between the chunks: {events:?}"
    );
    assert_eq!(content(&events), "onetwo", "and the stream was not cut");
    assert_eq!(events.last().unwrap(), "data: [DONE]");
}

/// An event stream sent in one piece: these `data:` payloads, as written.
fn raw_stream(payloads: &[&str]) -> Step {
    let body: String = payloads.iter().map(|p| format!("data: {p}\n\n")).collect();
    Step::Raw(200, "text/event-stream", body)
}

fn delta(text: &str) -> String {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    .to_string()
}

const FINISH: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;

#[tokio::test]
async fn a_stream_that_finished_without_done_is_complete() {
    let (up, gw) = gateway().await;
    let (hello, world) = (delta("Hello "), delta("world"));
    up.script("m1", vec![raw_stream(&[&hello, &world, FINISH, USAGE])]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert_eq!(content(&events), "Hello world");
    assert!(!text.contains("stream_interrupted"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    assert_eq!(closing_comment(&events)["completion_tokens"], 2, "{text}");
    let ok = gw
        .metric(r#"cascade_attempts_total{model="m1",outcome="success",tier="first"}"#)
        .await;
    assert_eq!(ok, 1.0);
}

#[tokio::test]
async fn a_malformed_event_after_the_first_token_is_dropped_and_counted() {
    let (up, gw) = gateway().await;
    let (hello, world) = (delta("Hello "), delta("world"));
    up.script(
        "m1",
        vec![raw_stream(&[
            &hello,
            "{not json",
            &world,
            FINISH,
            USAGE,
            "[DONE]",
        ])],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert_eq!(content(&events), "Hello world");
    assert!(
        !text.contains("not json") && !text.contains("stream_interrupted"),
        "{text}"
    );
    let dropped = gw
        .metric(r#"cascade_stream_events_dropped_total{model="m1",tier="first"}"#)
        .await;
    assert_eq!(dropped, 1.0);
    let ok = gw
        .metric(r#"cascade_attempts_total{model="m1",outcome="success",tier="first"}"#)
        .await;
    assert_eq!(ok, 1.0);
}

/// first (m1, mid_stream = "buffer", `buffer_max_bytes` given) -> second (m2).
async fn buffering_gateway(max_bytes: usize) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, ""),
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0",
        &format!("max_retries = 0\nmid_stream = \"buffer\"\nbuffer_max_bytes = {max_bytes}\nfirst_token_timeout_ms = 2000\ntimeout_ms = 2000"),
        "max_retries = 0",
    );
    (up, Gateway::start(&cfg, ENV).await)
}

#[tokio::test]
async fn a_buffered_stream_that_breaks_falls_back_unseen() {
    let (up, gw) = buffering_gateway(1 << 20).await;
    let mut cut = StreamScript::text(&["Hello ", "wor"]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    up.script(
        "m2",
        vec![Step::Stream(StreamScript::text(&["from ", "second"]))],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert_eq!(content(&events), "from second", "{text}");
    assert!(!text.contains("stream_interrupted"), "{text}");
    // the cut attempt's tokens were billed: wasted spend in the closing comment
    // (the serving tier is free)
    let cost = closing_comment(&events)["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{text}");
    // a complete answer is served whole by the tier that gave it
    up.script(
        "m1",
        vec![Step::Stream(StreamScript::text(&["all ", "of it"]))],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    let events = read_all(resp).await;
    assert_eq!(content(&events), "all of it");
    assert!(events.iter().any(|e| e == "data: [DONE]"));
}

#[tokio::test]
async fn a_buffer_past_its_limit_is_released_and_goes_on_live() {
    let (up, gw) = buffering_gateway(100).await;
    let mut cut = StreamScript::text(&["a long enough first piece ", "and a second one ", "cut"]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    let text = read_all(resp).await.join("\n");
    assert!(text.contains("a long enough first piece"), "{text}");
    assert!(text.contains("stream_interrupted"), "{text}");
}

#[tokio::test]
async fn a_buffered_stream_that_stalls_falls_back_unseen() {
    // the gap allowed after the first content is the tier's timeout_ms
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, ""),
        "",
        "max_retries = 0\nmid_stream = \"buffer\"\nfirst_token_timeout_ms = 2000\ntimeout_ms = 300",
        "max_retries = 0",
    );
    let gw = Gateway::start(&cfg, ENV).await;
    let mut stalls = StreamScript::text(&[]);
    stalls.chunks = vec![(0, "ten tokens "), (30_000, "never")];
    up.script("m1", vec![Step::Stream(stalls)]);
    up.script(
        "m2",
        vec![Step::Stream(StreamScript::text(&["from ", "second"]))],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    let events = read_all(resp).await;
    assert_eq!(content(&events), "from second");
    assert!(events.iter().any(|e| e == "data: [DONE]"));
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="timeout",tier="first"}"#)
            .await,
        1.0
    );
}
