//! SPEC 4.2: the outcome table, retries, fallback, caps and the deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::header;
use crate::common::{Gateway, Step, Upstream};
use crate::{first_then_second, model, prelude, prelude_with, tier, ENV};

/// first (max_retries 1) -> second.
async fn two_tiers(policy: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, policy),
        "",
        "max_retries = 1\ntimeout_ms = 300",
        "max_retries = 1",
    );
    let gw = Gateway::start(&cfg, ENV).await;
    (up, gw)
}

#[tokio::test]
async fn retryable_outcomes_retry_then_fall_back() {
    let cases: Vec<(&str, Step)> = vec![
        ("408", Step::Status(408, "timeout")),
        ("429", Step::RateLimited(vec![])),
        ("500", Step::Status(500, "boom")),
        ("502", Step::Status(502, "bad gateway")),
        ("503", Step::Status(503, "unavailable")),
        ("504", Step::Status(504, "gateway timeout")),
        ("529", Step::Status(529, "overloaded")),
        ("garbage body", Step::Garbage),
        ("error in a 200", Step::ErrorIn200),
        ("connection reset", Step::Reset),
    ];
    for (name, step) in cases {
        let (up, gw) = two_tiers("").await;
        up.script("m1", vec![step]);
        let resp = gw.ask("first").await;
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(
            up.count("m1"),
            2,
            "{name}: one try and one retry on the first tier"
        );
        assert_eq!(up.count("m2"), 1, "{name}");
        assert_eq!(header(&resp, "x-cascade-tier"), "second", "{name}");
        assert_eq!(header(&resp, "x-cascade-fallback"), "true", "{name}");
        assert_eq!(header(&resp, "x-cascade-chain"), "first,second", "{name}");
        assert_eq!(header(&resp, "x-cascade-attempts"), "3", "{name}");
        assert_eq!(header(&resp, "x-cascade-retries"), "2", "{name}");
    }
}

#[tokio::test]
async fn a_timeout_falls_back_at_once_unless_retry_on_timeout() {
    // the default: a silent tier is left after one timeout
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::Hang]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count("m1"), 1, "no retry of a timeout");
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    // [policy] retry_on_timeout = true: retried like the other outcomes
    let (up, gw) = two_tiers("retry_on_timeout = true").await;
    up.script("m1", vec![Step::Hang]);
    let resp = gw.ask("first").await;
    assert_eq!(up.count("m1"), 2, "one try and one retry");
    assert_eq!(header(&resp, "x-cascade-attempts"), "3");
    // and per tier, over the policy
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, "retry_on_timeout = true"),
        "",
        "max_retries = 1\nretry_on_timeout = false\ntimeout_ms = 300",
        "",
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Hang]);
    let resp = gw.ask("first").await;
    assert_eq!(up.count("m1"), 1);
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
}

#[tokio::test]
async fn connection_refused_falls_back() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}\n[models.gone]\nprovider = \"dead\"\nmodel = \"gone\"\n{}{}{}",
        prelude(&up, ""),
        model("m2", ""),
        tier(
            "first",
            &["gone"],
            "max_retries = 1\nfallback = [\"second\"]"
        ),
        tier("second", &["m2"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-attempts"), "3");
    assert!(gw
        .metric(r#"cascade_attempts_total{model="gone",outcome="connect_error",tier="first"}"#)
        .await
        .eq(&2.0));
}

#[tokio::test]
async fn auth_and_not_found_fall_back_without_retry() {
    for code in [401, 403, 404] {
        let (up, gw) = two_tiers("").await;
        up.script("m1", vec![Step::Status(code, "nope")]);
        let resp = gw.ask("first").await;
        assert_eq!(resp.status(), 200, "{code}");
        assert_eq!(up.count("m1"), 1, "{code}: no retry");
        assert_eq!(header(&resp, "x-cascade-tier"), "second");
        assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    }
}

#[tokio::test]
async fn client_errors_from_the_first_tier_are_returned_as_is() {
    for code in [400u16, 413, 422] {
        let (up, gw) = two_tiers("").await;
        up.script("m1", vec![Step::Status(code, "your request is wrong")]);
        let resp = gw.ask("first").await;
        assert_eq!(resp.status().as_u16(), code);
        assert_eq!(up.count("m1"), 1);
        assert_eq!(up.count("m2"), 0, "no fallback on a client error");
        assert_eq!(header(&resp, "x-cascade-attempts"), "1");
        assert_eq!(header(&resp, "x-should-retry"), "false");
        assert!(resp.headers().get("x-cascade-tier").is_none());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["message"], "your request is wrong");
    }
}

#[tokio::test]
async fn client_errors_from_a_later_tier_fall_back() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}",
        prelude(&up, ""),
        model("m1", ""),
        model("m2", ""),
        model("m3", ""),
        tier("a", &["m1"], "max_retries = 0\nfallback = [\"b\", \"c\"]"),
        tier("b", &["m2"], "max_retries = 0"),
        tier("c", &["m3"], "max_retries = 0"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    up.script("m2", vec![Step::Status(400, "tools are not supported")]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "c");
    assert_eq!(header(&resp, "x-cascade-chain"), "a,b,c");
}

#[tokio::test]
async fn context_length_falls_back_to_larger_windows_only() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}{}{}",
        prelude(&up, ""),
        model("small", "context_window = 8192"),
        model("smaller", "context_window = 4096"),
        model("big", "context_window = 131072"),
        model("unknown", ""),
        tier(
            "a",
            &["small"],
            "max_retries = 2\nfallback = [\"b\", \"c\", \"d\"]"
        ),
        tier("b", &["smaller"], ""),
        tier("c", &["big"], ""),
        tier("d", &["unknown"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("small", vec![Step::ContextLength]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.count("small"),
        1,
        "no retry of a prompt that does not fit"
    );
    assert_eq!(up.count("smaller"), 0, "a smaller window is skipped");
    assert_eq!(header(&resp, "x-cascade-tier"), "c");
    assert_eq!(header(&resp, "x-cascade-chain"), "a,c");
    // a model whose window is not configured may be larger: it is tried
    up.script("big", vec![Step::ContextLength]);
    let resp = gw.ask("a").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "d");
    assert_eq!(header(&resp, "x-cascade-chain"), "a,c,d");
}

#[tokio::test]
async fn total_attempts_are_capped() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude(&up, "max_total_attempts = 4"),
        model("m1", ""),
        model("m2", ""),
        tier("a", &["m1"], "max_retries = 3\nfallback = [\"b\"]"),
        tier("b", &["m2"], "max_retries = 3"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    up.script("m2", vec![Step::Status(503, "down")]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(up.count("m1") + up.count("m2"), 4);
    assert_eq!(header(&resp, "x-cascade-attempts"), "4");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "all_models_failed");
    assert_eq!(body["error"]["attempts"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn the_request_deadline_bounds_everything() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude(&up, "").replace("request_timeout_ms = 10000", "request_timeout_ms = 300"),
        model("m1", ""),
        model("m2", ""),
        tier("a", &["m1"], "timeout_ms = 10000\nfallback = [\"b\"]"),
        tier("b", &["m2"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Hang]);
    let t0 = Instant::now();
    let resp = gw.ask("a").await;
    let took = t0.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took < Duration::from_secs(5),
        "the deadline, not the tier timeout, ended it: {took:?}"
    );
    assert_eq!(up.count("m2"), 0, "no tier is tried after the deadline");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "all_models_failed");
    assert_eq!(body["error"]["attempts"][0]["model"], "m1");
}

#[tokio::test]
async fn give_up_status_follows_the_failures() {
    // every failure a timeout -> 504
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::Hang]);
    up.script("m2", vec![Step::Delay(1000, Box::new(Step::Ok))]);
    let cfg_timeout_resp = {
        let up2 = Upstream::start().await;
        let cfg = format!(
            "{}{}{}",
            prelude(&up2, ""),
            model("slow", ""),
            tier("only", &["slow"], "timeout_ms = 100\nmax_retries = 1"),
        );
        let gw2 = Gateway::start(&cfg, ENV).await;
        up2.script("slow", vec![Step::Hang]);
        gw2.ask("only").await.status()
    };
    assert_eq!(cfg_timeout_resp, 504);
    drop((up, gw));

    // every failure a 429 -> 429
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::RateLimited(vec![])]);
    up.script("m2", vec![Step::RateLimited(vec![])]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-should-retry"), "false");
    assert!(
        resp.headers().get("retry-after").is_none(),
        "nothing said when"
    );
    // with the breaker off, the shortest Retry-After the upstreams sent
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::RateLimited(vec![("retry-after", "7")])]);
    up.script("m2", vec![Step::RateLimited(vec![("retry-after", "9")])]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "7");

    // mixed -> 502 with the attempts list naming each failed model
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::Status(500, "boom")]);
    up.script("m2", vec![Step::RateLimited(vec![])]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let body: Value = resp.json().await.unwrap();
    let attempts = body["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    let a0 = &attempts[0];
    assert_eq!(a0["tier"], "first");
    assert_eq!(a0["model"], "m1");
    assert_eq!(a0["provider"], "up");
    assert_eq!(a0["attempt"], 1);
    assert_eq!(a0["status"], 500);
    assert!(a0["error"].as_str().unwrap().contains("boom"));
    assert!(a0["elapsed_ms"].is_u64());
    assert_eq!(attempts[3]["model"], "m2");
    assert_eq!(attempts[3]["status"], 429);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_backoff_max() {
    let (up, gw) = two_tiers("backoff_max_ms = 1000").await;
    up.script(
        "m1",
        vec![Step::RateLimited(vec![("retry-after-ms", "300")]), Step::Ok],
    );
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    let reqs = up.requests_for("m1");
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(290), "waited {gap:?}");

    // longer than backoff_max: fall back at once
    let (up, gw) = two_tiers("backoff_max_ms = 1000").await;
    up.script("m1", vec![Step::RateLimited(vec![("retry-after", "30")])]);
    let t0 = Instant::now();
    let resp = gw.ask("first").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(up.count("m1"), 1);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn fixed_delays_between_attempts_and_tiers() {
    // the first source system: a fixed 0.2 s between every attempt, tiers
    // included, none after the last
    let policy = "backoff_base_ms = 200\nbackoff_max_ms = 200\nbackoff_jitter = false\nbackoff_between_tiers = true";
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude(&up, policy),
        model("m1", ""),
        model("m2", ""),
        tier("first", &["m1"], "max_retries = 1\nfallback = [\"second\"]"),
        tier("second", &["m2"], "max_retries = 0"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    up.script("m2", vec![Step::Status(503, "down")]);
    let t0 = Instant::now();
    let resp = gw.ask("first").await;
    let took = t0.elapsed();
    assert_eq!(resp.status(), 502);
    let times: Vec<Instant> = up.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= Duration::from_millis(195),
        "retry delay"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(195),
        "delay between tiers"
    );
    // no delay after the last attempt
    assert!(
        took < times[2].duration_since(t0) + Duration::from_millis(150),
        "{took:?}"
    );
}

#[tokio::test]
async fn no_delay_before_a_fallback_by_default() {
    let (up, gw) =
        two_tiers("backoff_base_ms = 400\nbackoff_max_ms = 400\nbackoff_jitter = false").await;
    up.script("m1", vec![Step::Status(401, "bad key")]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    let times: Vec<Instant> = up.requests().iter().map(|r| r.at).collect();
    assert!(times[1] - times[0] < Duration::from_millis(300));
}

#[tokio::test]
async fn metrics_name_the_model_that_failed() {
    let (up, gw) = two_tiers("").await;
    up.script("m1", vec![Step::Status(503, "down")]);
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="upstream_error",tier="first"}"#)
            .await,
        2.0
    );
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m2",outcome="success",tier="second"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_retries_total{model="m1",tier="first"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_fallbacks_total{from_tier="first",to_tier="second"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_requests_total{outcome="success",tier="second"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"cascade_tokens_total{kind="prompt",model="m2",tier="second"}"#)
            .await,
        10.0
    );
    assert!(gw
        .metrics()
        .await
        .contains("cascade_request_duration_seconds_bucket{tier=\"second\""));
}

#[tokio::test]
async fn answers_not_worth_serving_fall_back_on_validating_tiers() {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude_with(&up, "", 1),
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0",
        "max_retries = 0\nvalidate_output = true",
        "",
    );
    let gw = Gateway::start(&cfg, ENV).await;
    // an empty answer; its tokens were billed: the request's cost counts them
    // (3 prompt tokens at $1 per million), though the free tier served it
    up.script("m1", vec![Step::Text("  ", 3, 0)]);
    let resp = gw.ask("first").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0.000003");
    // content that is not the JSON object the request asked for
    up.script("m1", vec![Step::Text("Sure! Here it is: {", 3, 5)]);
    let mut b = crate::common::gateway::body("first");
    b["response_format"] = serde_json::json!({"type": "json_object"});
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    // a schema the content does not match
    b["response_format"] = serde_json::json!({"type": "json_schema", "json_schema": {"name": "c",
        "schema": {"type": "object", "required": ["city"]}}});
    up.script("m1", vec![Step::Text(r#"{"town": "Paris"}"#, 3, 5)]);
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    // one that does, served where it was asked
    up.script("m1", vec![Step::Text(r#"{"city": "Paris"}"#, 3, 5)]);
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="invalid_output",tier="first"}"#)
            .await,
        3.0
    );
    // three invalid answers with failure_threshold = 1: the circuit stayed closed
    assert_eq!(gw.metric(r#"cascade_circuit_open{model="m1"}"#).await, 0.0);
}

#[tokio::test]
async fn a_stream_that_finishes_before_any_content_falls_back_on_validating_tiers() {
    let up = Upstream::start().await;
    let cfg = first_then_second(
        prelude(&up, ""),
        "",
        "max_retries = 0\nvalidate_output = true",
        "",
    );
    let gw = Gateway::start(&cfg, ENV).await;
    let finish = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    up.script(
        "m1",
        vec![Step::Raw(
            200,
            "text/event-stream",
            format!("data: {finish}\n\ndata: [DONE]\n\n"),
        )],
    );
    up.script(
        "m2",
        vec![Step::Stream(crate::common::StreamScript::text(&["fine"]))],
    );
    let mut b = crate::common::gateway::body("first");
    b["stream"] = serde_json::json!(true);
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert!(resp.text().await.unwrap().contains("fine"));
}
