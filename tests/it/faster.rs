//! Faster chains (SPEC 9.3): least_latency, hedged attempts, "auto"
//! timeouts, against the scripted upstream.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{db_value, header, named, rows_flushed, temp_dir};
use crate::common::process::{free_port, wait_ready};
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::streaming::{content, read_all, stream_body};
use crate::{model, prelude, tier, with_ledger, ENV};

fn after(ms: u64, step: Step) -> Step {
    Step::Delay(ms, Box::new(step))
}

/// Models fast (20 ms), mid (80 ms) and slow (200 ms) in one
/// least_latency tier.
#[tokio::test]
async fn least_latency_sends_the_traffic_to_the_fastest_and_moves_when_it_slows() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, ""),
        model("fast", ""),
        model("mid", ""),
        model("slow", ""),
        tier(
            "t",
            &["fast", "mid", "slow"],
            "strategy = \"least_latency\"\nmax_retries = 0",
        ),
    ]
    .concat();
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("fast", vec![after(20, Step::Ok)]);
    up.script("mid", vec![after(80, Step::Ok)]);
    up.script("slow", vec![after(200, Step::Ok)]);
    for _ in 0..200 {
        assert_eq!(gw.ask("t").await.status(), 200);
    }
    let fast = up.count("fast");
    assert!(fast >= 180, "{fast} of 200 went to the 20 ms model");
    // the status page shows what it learned
    let status = gw.get_json("/v1/cascade/status").await;
    let l = &named(&status["models"], "fast")["latency"];
    let est = l["estimate_ms"]["complete"].as_f64().unwrap();
    assert!((15.0..80.0).contains(&est), "{l}");
    assert!(
        l["windows"]["total"]["samples"].as_u64().unwrap() >= 180,
        "{l}"
    );

    // it turns slow: within 20 requests the traffic has moved
    up.script("fast", vec![after(300, Step::Ok)]);
    let before = up.count("fast");
    let mut last_ten = Vec::new();
    for i in 0..20 {
        let resp = gw.ask("t").await;
        if i >= 10 {
            last_ten.push(header(&resp, "x-cascade-model").to_string());
        }
    }
    assert!(
        up.count("fast") - before <= 3,
        "the slow model kept traffic"
    );
    assert!(
        last_ten.iter().all(|m| m == "mid"),
        "the next fastest serves: {last_ten:?}"
    );
}

#[tokio::test]
async fn least_latency_does_not_prefer_a_model_that_fails_fast() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, ""),
        model("broken", ""),
        model("fast", ""),
        tier(
            "t",
            &["broken", "fast"],
            "strategy = \"least_latency\"\nmax_retries = 1",
        ),
    ]
    .concat();
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("broken", vec![Step::Status(500, "down at once")]);
    up.script("fast", vec![after(30, Step::Ok)]);
    for _ in 0..50 {
        assert_eq!(gw.ask("t").await.status(), 200);
    }
    let broken = up.count("broken");
    assert!(broken <= 2, "a model failing in 1 ms got {broken} of 50");
}

/// Tier `t`: m1 then m2, hedged after `hedge` ms; m1 priced (its cancelled
/// attempt is wasted spend). Ledger at `db`.
fn hedged(up: &Upstream, db: &str, hedge: &str, models: &str) -> String {
    [
        with_ledger(prelude(up, ""), db, ""),
        model("m1", "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0"),
        model("m2", ""),
        models.to_string(),
        tier("t", &["m1", "m2"], &format!("{hedge}\nmax_retries = 1")),
    ]
    .concat()
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The real binary: m1 answers after 2 s, m2 after 50 ms, hedge after 100 ms.
#[tokio::test]
async fn a_slow_attempt_is_hedged_the_first_answer_wins_and_the_loser_is_cancelled() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let path = dir.0.join("cascade.toml");
    std::fs::write(&path, hedged(&up, &db, "hedge_after_ms = 100", "")).unwrap();
    let port = free_port();
    let _gw = spawn_env(&path, port);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &url).await;
    up.script("m1", vec![after(2000, Step::Ok)]);
    up.script("m2", vec![after(50, Step::Ok)]);

    let t0 = Instant::now();
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&crate::common::gateway::body("t"))
        .send()
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(header(&resp, "x-cascade-hedged"), "true");
    assert_eq!(header(&resp, "x-cascade-model"), "m2");
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    assert_eq!(
        header(&resp, "x-cascade-retries"),
        "0",
        "a hedge is not a retry"
    );
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["choices"][0]["message"]["content"], "ok from m2");
    // the first upstream saw its connection closed
    until("m1 never saw its connection closed", || {
        up.delays_cut() == 1
    })
    .await;

    rows_flushed(&http, &url, 1).await;
    assert_eq!(db_value(&db, "SELECT COUNT(*) FROM attempts"), 2);
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'cancelled' AND model = 'm1'"
        ),
        1
    );
    // the loser's prompt, estimated, is wasted spend
    assert!(db_value(&db, "SELECT wasted_nanos FROM requests") > 0);
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cascade_hedges_total{result=\"won\",tier=\"t\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cascade_attempts_total{model=\"m1\",outcome=\"cancelled\",tier=\"t\"} 1")
    );
}

fn spawn_env(path: &std::path::Path, port: u16) -> crate::common::process::Proc {
    crate::common::process::spawn_with(path, port, ENV)
}

/// A stream with no first delta after 100 ms is hedged on the next tier.
#[tokio::test]
async fn a_stream_without_its_first_delta_is_hedged_on_the_next_tier() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, ""),
        model("m1", ""),
        model("m2", ""),
        tier(
            "first",
            &["m1"],
            "hedge_after_ms = 100\nmax_retries = 0\nfallback = [\"second\"]",
        ),
        tier("second", &["m2"], ""),
    ]
    .concat();
    let gw = Gateway::start(&cfg, ENV).await;
    let mut slow = StreamScript::text(&["late"]);
    slow.chunks = vec![(2000, "late")];
    up.script("m1", vec![Step::Stream(slow)]);
    up.script(
        "m2",
        vec![Step::Stream(StreamScript::text(&["quick ", "answer"]))],
    );
    let t0 = Instant::now();
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-hedged"), "true");
    assert_eq!(header(&resp, "x-cascade-tier"), "second");
    assert_eq!(header(&resp, "x-cascade-fallback"), "true");
    assert_eq!(header(&resp, "x-cascade-chain"), "first,second");
    let events = read_all(resp).await;
    assert!(t0.elapsed() < Duration::from_millis(1000));
    assert_eq!(content(&events), "quick answer");
    until("m1's stream was not closed", || {
        up.streams_closed_early() == 1
    })
    .await;
    assert_eq!(
        gw.metric("cascade_fallbacks_total{from_tier=\"first\",to_tier=\"second\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn no_hedge_when_the_first_answers_in_time() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let gw = Gateway::start(&hedged(&up, &db, "hedge_after_ms = 300", ""), ENV).await;
    up.script("m1", vec![after(20, Step::Ok)]);
    for _ in 0..10 {
        let resp = gw.ask("t").await;
        assert_eq!(header(&resp, "x-cascade-model"), "m1");
        assert!(resp.headers().get("x-cascade-hedged").is_none());
    }
    assert_eq!(up.count("m2"), 0);
    // a percentile hedge waits for 20 samples, then follows the model
    let gw = Gateway::start(&hedged(&up, &db, "hedge_after = \"p50\"", ""), ENV).await;
    up.script("m1", vec![after(200, Step::Ok)]);
    up.script("m2", vec![after(10, Step::Ok)]);
    let resp = gw.ask("t").await;
    assert!(
        resp.headers().get("x-cascade-hedged").is_none(),
        "no samples yet"
    );
    up.script("m1", vec![after(40, Step::Ok)]);
    for _ in 0..20 {
        gw.ask("t").await;
    }
    // now m1's own p50 (about 40 ms) is the wait
    up.script("m1", vec![after(1500, Step::Ok)]);
    let t0 = Instant::now();
    let resp = gw.ask("t").await;
    assert_eq!(header(&resp, "x-cascade-hedged"), "true");
    assert_eq!(header(&resp, "x-cascade-model"), "m2");
    assert!(t0.elapsed() < Duration::from_millis(1000));
}

/// First tier free and slow, second paid: on a spent budget no hedge goes
/// to the paid tier.
#[tokio::test]
async fn no_hedge_to_a_paid_tier_on_a_spent_budget() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let cfg = [
        with_ledger(prelude(&up, ""), &db, ""),
        "\n[budget]\ndaily_usd = 0.00001\n".to_string(),
        model("free1", ""),
        model(
            "paid",
            "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0",
        ),
        tier(
            "first",
            &["free1"],
            "hedge_after_ms = 100\nmax_retries = 0\nfallback = [\"second\"]",
        ),
        tier("second", &["paid"], ""),
    ]
    .concat();
    let gw = Gateway::start(&cfg, ENV).await;
    up.script("free1", vec![after(600, Step::Ok)]);
    // with budget left, the hedge goes to the paid tier and wins
    let resp = gw.ask("first").await;
    assert_eq!(header(&resp, "x-cascade-hedged"), "true");
    assert_eq!(header(&resp, "x-cascade-model"), "paid");
    assert_eq!(header(&resp, "x-cascade-budget-remaining-usd"), "0");
    // spent: the slow free model is waited for
    let resp = gw.ask("first").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-model"), "free1");
    assert!(resp.headers().get("x-cascade-hedged").is_none());
    assert_eq!(up.count("paid"), 1);
}

/// After 100 answers near 50 ms, an "auto" timeout is p99 x 2 clamped to
/// min_ms = 500: a hanging attempt is cut at 500 ms, not at max_ms.
#[tokio::test]
async fn an_auto_timeout_learns_and_cuts_a_hanging_attempt_at_the_clamped_value() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(
            &up,
            "adaptive_timeout = { percentile = 99, multiplier = 2.0, min_ms = 500, max_ms = 8000 }",
        ),
        model("m1", ""),
        model("m2", ""),
        tier(
            "first",
            &["m1"],
            "timeout_ms = \"auto\"\nmax_retries = 0\nfallback = [\"second\"]",
        ),
        tier("second", &["m2"], ""),
    ]
    .concat();
    let gw = Gateway::start(&cfg, ENV).await;
    let status = gw.get_json("/v1/cascade/status").await;
    let l = &named(&status["models"], "m1")["latency"];
    assert_eq!(
        l["auto_timeouts_ms"]["timeout"], 8000,
        "max_ms until it knows"
    );
    up.script("m1", vec![after(50, Step::Ok)]);
    for _ in 0..100 {
        assert_eq!(header(&gw.ask("first").await, "x-cascade-model"), "m1");
    }
    let status = gw.get_json("/v1/cascade/status").await;
    let l = &named(&status["models"], "m1")["latency"];
    assert_eq!(l["auto_timeouts_ms"]["timeout"], 500, "{l}");
    assert_eq!(named(&status["tiers"], "first")["timeout_ms"], "auto");
    let m = gw.metrics().await;
    assert!(
        m.contains("cascade_model_timeout_seconds{kind=\"timeout\",model=\"m1\"} 0.5"),
        "{m}"
    );
    assert!(m.contains(
        "cascade_model_latency_seconds{kind=\"total\",model=\"m1\",quantile=\"0.99\"} 0.05"
    ));

    up.script("m1", vec![Step::Hang]);
    let t0 = Instant::now();
    let resp = gw.ask("first").await;
    let took = t0.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-model"), "m2");
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(2000),
        "cut after {took:?}"
    );
}

/// A first-tier 400 in a race is the client's fault: it goes back as is and
/// the hedge in flight is cancelled, not waited for.
#[tokio::test]
async fn a_client_error_in_a_race_ends_it_at_once() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let gw = Gateway::start(&hedged(&up, &db, "hedge_after_ms = 100", ""), ENV).await;
    up.script("m1", vec![after(300, Step::Status(400, "bad request"))]);
    up.script("m2", vec![after(3000, Step::Ok)]);
    let t0 = Instant::now();
    let resp = gw.ask("t").await;
    assert_eq!(resp.status(), 400);
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    until("m2 was not cancelled", || up.delays_cut() == 1).await;
}
