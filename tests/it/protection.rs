//! Issue "Protecting the chain": circuit breaker, rate-limit rests,
//! concurrency spillover, strategies, enabled = false, named keys.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{body, header, named};
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude_with, tier, ENV};

/// a (m1) -> b (m2), breaker threshold 3, open for `open_ms`.
async fn breaker_gateway(open_ms: u64) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude_with(&up, "", 3).replace("open_ms = 60000", &format!("open_ms = {open_ms}")),
        model("m1", ""),
        model("m2", ""),
        tier("a", &["m1"], "max_retries = 0\nfallback = [\"b\"]"),
        tier("b", &["m2"], "max_retries = 0"),
    );
    (up, Gateway::start(&cfg, ENV).await)
}

#[tokio::test]
async fn the_breaker_opens_skips_and_probes() {
    let (up, gw) = breaker_gateway(300).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    for _ in 0..3 {
        assert_eq!(header(&gw.ask("a").await, "x-cascade-tier"), "b");
    }
    assert_eq!(up.count("m1"), 3);
    assert_eq!(gw.metric(r#"cascade_circuit_open{model="m1"}"#).await, 1.0);
    // open: skipped without an attempt
    let resp = gw.ask("a").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "b");
    assert_eq!(header(&resp, "x-cascade-attempts"), "1");
    assert_eq!(
        header(&resp, "x-cascade-chain"),
        "b",
        "a skipped tier is not listed"
    );
    assert_eq!(up.count("m1"), 3, "the open model saw nothing");
    let status: Value = gw.get_json("/v1/cascade/status").await;
    let m1 = named(&status["models"], "m1");
    assert_eq!(m1["circuit"], "open");

    // after open_ms: one probe; it fails -> open again
    tokio::time::sleep(Duration::from_millis(350)).await;
    gw.ask("a").await;
    assert_eq!(up.count("m1"), 4, "one half-open probe");
    gw.ask("a").await;
    assert_eq!(up.count("m1"), 4, "re-opened after the failed probe");

    // after open_ms again: the probe succeeds and closes it
    up.script("m1", vec![Step::Ok]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(header(&gw.ask("a").await, "x-cascade-tier"), "a");
    assert_eq!(header(&gw.ask("a").await, "x-cascade-tier"), "a");
    assert_eq!(gw.metric(r#"cascade_circuit_open{model="m1"}"#).await, 0.0);
}

#[tokio::test]
async fn client_errors_never_open_the_circuit() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}",
        prelude_with(&up, "", 2),
        model("m1", ""),
        tier("a", &["m1"], "max_retries = 0"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script(
        "m1",
        vec![
            Step::Status(400, "bad"),
            Step::Status(422, "bad"),
            Step::Status(413, "bad"),
            Step::Ok,
        ],
    );
    for _ in 0..3 {
        gw.ask("a").await;
    }
    assert_eq!(gw.ask("a").await.status(), 200);
    assert_eq!(up.count("m1"), 4);
}

#[tokio::test]
async fn threshold_zero_turns_it_off() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude_with(&up, "", 0),
        model("m1", ""),
        model("m2", ""),
        tier("a", &["m1"], "max_retries = 0\nfallback = [\"b\"]"),
        tier("b", &["m2"], "max_retries = 0"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    for _ in 0..10 {
        gw.ask("a").await;
    }
    assert_eq!(up.count("m1"), 10);
}

#[tokio::test]
async fn parallel_failures_open_it_once_and_all_see_it() {
    let (up, gw) = breaker_gateway(60_000).await;
    up.script(
        "m1",
        vec![Step::Delay(50, Box::new(Step::Status(503, "down")))],
    );
    let burst = (0..20).map(|_| gw.ask("a"));
    let results = futures_util::future::join_all(burst).await;
    assert!(results.iter().all(|r| r.status() == 200));
    let seen = up.count("m1");
    assert!(seen >= 3, "{seen}");
    assert_eq!(gw.metric(r#"cascade_circuit_open{model="m1"}"#).await, 1.0);
    let after = (0..20).map(|_| gw.ask("a"));
    futures_util::future::join_all(after).await;
    assert_eq!(
        up.count("m1"),
        seen,
        "every later request skipped the open model"
    );
}

#[tokio::test]
async fn a_429_rests_the_model_for_its_retry_after() {
    let (up, gw) = breaker_gateway(60_000).await;
    up.script(
        "m1",
        vec![Step::RateLimited(vec![("retry-after", "2")]), Step::Ok],
    );
    let t0 = Instant::now();
    assert_eq!(header(&gw.ask("a").await, "x-cascade-tier"), "b");
    for _ in 0..5 {
        assert_eq!(header(&gw.ask("a").await, "x-cascade-tier"), "b");
    }
    assert_eq!(up.count("m1"), 1, "resting: the mock saw none");
    assert_eq!(
        gw.metric(r#"cascade_circuit_open{model="m1"}"#).await,
        0.0,
        "a 429 is not a failure"
    );
    // bounded poll until it is tried again, no earlier than 2 s
    loop {
        let resp = gw.ask("a").await;
        if header(&resp, "x-cascade-tier") == "a" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never tried again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn when_nothing_can_be_tried_503_with_retry_after() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}",
        prelude_with(&up, "", 5),
        model("m1", ""),
        tier("a", &["m1"], "max_retries = 0")
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::RateLimited(vec![("retry-after", "30")])]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 429, "every failure a 429");
    let ra: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((28..=30).contains(&ra), "{ra}");
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let ra: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((28..=30).contains(&ra), "{ra}");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "all_models_failed");
    assert_eq!(b["error"]["attempts"].as_array().unwrap().len(), 0);
    assert_eq!(up.count("m1"), 1);
}

#[tokio::test]
async fn saturated_models_spill_over_never_queue() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude_with(&up, "", 5),
        model("m1", "max_concurrency = 2"),
        model("m2", ""),
        tier("a", &["m1"], "max_retries = 0\nfallback = [\"b\"]"),
        tier("b", &["m2"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m1", vec![Step::Delay(300, Box::new(Step::Ok))]);
    let burst = (0..6).map(|_| gw.ask("a"));
    let results = futures_util::future::join_all(burst).await;
    let tiers: Vec<String> = results
        .iter()
        .map(|r| header(r, "x-cascade-tier").to_string())
        .collect();
    assert_eq!(tiers.iter().filter(|t| *t == "a").count(), 2, "{tiers:?}");
    assert_eq!(tiers.iter().filter(|t| *t == "b").count(), 4, "{tiers:?}");
    assert_eq!(up.count("m1"), 2);
}

#[tokio::test]
async fn round_robin_rotates_and_retries_move_on() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}",
        prelude_with(&up, "", 0),
        model("r1", ""),
        model("r2", ""),
        model("r3", ""),
        tier(
            "rr",
            &["r1", "r2", "r3"],
            "strategy = \"round_robin\"\nmax_retries = 2"
        ),
        tier("ord", &["r1", "r2", "r3"], "max_retries = 2"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(header(&gw.ask("rr").await, "x-cascade-model").to_string());
    }
    assert_eq!(served, ["r1", "r2", "r3", "r1", "r2", "r3"]);
    // ordered: always the first; a retry moves to the next model
    up.script("r1", vec![Step::Status(503, "down")]);
    assert_eq!(header(&gw.ask("ord").await, "x-cascade-model"), "r2");
    assert_eq!(header(&gw.ask("ord").await, "x-cascade-model"), "r2");
}

#[tokio::test]
async fn disabled_providers_models_and_tiers_are_skipped() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}\n[providers.off]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"UNSET_KEY\"\nenabled = false\n[models.m-off]\nprovider = \"off\"\nmodel = \"x\"\n{}",
        prelude_with(&up, "", 0),
        model("m1", "enabled = false"),
        model("m2", ""),
        model("m3", ""),
        tier("a", &["m1", "m2"], "max_retries = 1\nfallback = [\"b\", \"c\", \"d\"]"),
        tier("b", &["m3"], "enabled = false"),
        tier("c", &["m-off"], ""),
        tier("d", &["m3"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("m2", vec![Step::Status(503, "down")]);
    let resp = gw.ask("a").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-chain"), "a,d");
    assert_eq!(up.count("m1"), 0);
    assert_eq!(up.count("m2"), 2);
    assert_eq!(up.count("m3"), 1);
}

/// Named keys: planner may use cheap and local only.
async fn keyed_gateway() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}\n[keys.planner]\nkey_env = \"PLANNER_KEY\"\nallowed_tiers = [\"cheap\", \"local\"]\n[keys.ops]\nkey_env = \"OPS_KEY\"\n",
        prelude_with(&up, "", 0),
        model("m-paid", "input_usd_per_mtok = 1.0"),
        model("m-cheap", "input_usd_per_mtok = 0.5"),
        model("m-local", ""),
        tier("paid", &["m-paid"], "fallback = [\"cheap\", \"local\"]"),
        tier("cheap", &["m-cheap"], "fallback = [\"local\"]"),
        tier("local", &["m-local"], ""),
    );
    let mut env = ENV.to_vec();
    env.extend([("PLANNER_KEY", "pk-planner"), ("OPS_KEY", "pk-ops")]);
    (up, Gateway::start(&cfg, &env).await)
}

#[tokio::test]
async fn allowed_tiers_filter_every_chain() {
    let (up, gw) = keyed_gateway().await;
    let ask = |model: &'static str, key: &'static str, chain: Option<&'static str>| {
        let mut req = gw.chat().bearer_auth(key).json(&body(model));
        if let Some(c) = chain {
            req = req.header("x-cascade-chain", c);
        }
        req.send()
    };
    let resp = ask("paid", "pk-planner", None).await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "cheap");
    assert_eq!(header(&resp, "x-cascade-chain"), "cheap");
    // x-cascade-chain cannot widen it
    let resp = ask("local", "pk-planner", Some("paid,local"))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "local");
    assert_eq!(up.count("m-paid"), 0);
    // nothing left: 403 tier_not_allowed
    let resp = ask("m-paid", "pk-planner", None).await.unwrap();
    assert_eq!(resp.status(), 403);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "tier_not_allowed");
    // a model of an allowed tier is fine
    assert_eq!(
        ask("m-cheap", "pk-planner", None).await.unwrap().status(),
        200
    );
    // another key is not limited
    let resp = ask("paid", "pk-ops", None).await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "paid");
    // spend per named key
    let planner = gw
        .metric(r#"cascade_key_cost_usd_total{key="planner"}"#)
        .await;
    assert!((planner - 2.0 * 10.0 * 0.5e-6).abs() < 1e-12, "{planner}");
    assert!(gw.metric(r#"cascade_key_cost_usd_total{key="ops"}"#).await > 0.0);
}

#[tokio::test]
async fn a_key_file_is_read_and_trimmed() {
    let up = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!("cascade-keyfile-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "  sk-from-file\n").unwrap();
    let cfg = format!(
        "{}\n[providers.filed]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\nauth = \"x-api-key\"\n[models.f]\nprovider = \"filed\"\nmodel = \"f\"\n{}",
        prelude_with(&up, "", 0),
        up.base_url,
        file.display(),
        tier("t", &["f"], ""),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    assert_eq!(gw.ask("t").await.status(), 200);
    let r = &up.requests()[0];
    assert_eq!(r.headers["x-api-key"], "sk-from-file");
    assert!(!r.headers.contains_key("authorization"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_on_the_same_tier_with_the_breaker_on() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude_with(&up, "backoff_max_ms = 1000", 3),
        model("m1", ""),
        model("m2", ""),
        tier("a", &["m1"], "max_retries = 1\nfallback = [\"b\"]"),
        tier("b", &["m2"], "max_retries = 0"),
    );
    let gw = Gateway::start(&cfg, ENV).await;
    up.script(
        "m1",
        vec![Step::RateLimited(vec![("retry-after-ms", "200")]), Step::Ok],
    );
    let resp = gw.ask("a").await;
    assert_eq!(
        header(&resp, "x-cascade-tier"),
        "a",
        "retried after its rest, not fallen back"
    );
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    assert_eq!(up.count("m2"), 0);
    let reqs = up.requests_for("m1");
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(190));
    assert_eq!(
        gw.metric(r#"cascade_retries_total{model="m1",tier="a"}"#)
            .await,
        1.0
    );
}
