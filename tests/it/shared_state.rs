//! Replicas sharing budgets, circuits, rests and escalation counts through a
//! real redis-server on a free loopback port (`[state] backend = "redis"`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{header, temp_dir, TempDir};
use crate::common::redis_server::RedisServer;
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude_with, tier, with_ledger, UP_KEY};

/// `[state]` on `redis`, with a prefix of its own.
fn state(redis: &RedisServer) -> String {
    format!(
        "\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"t{:x}\"\n",
        redis.url(),
        rand::random::<u32>()
    )
}

/// Two replicas of one config, each with its own SQLite ledger.
async fn two(config: impl Fn(&str) -> String, dir: &TempDir) -> (Gateway, Gateway) {
    let env = &[("UP_KEY", UP_KEY)];
    let a = Gateway::start(&config(&dir.0.join("a.db").display().to_string()), env).await;
    let b = Gateway::start(&config(&dir.0.join("b.db").display().to_string()), env).await;
    for gw in [&a, &b] {
        until(
            gw,
            |s| s["state"]["up"] == true,
            "the replica never reached Redis",
        )
        .await;
    }
    (a, b)
}

/// Bounded poll of a replica's status until `ok` holds.
async fn until(gw: &Gateway, ok: impl Fn(&Value) -> bool, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = gw.get_json("/v1/cascade/status").await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn nanos(v: &Value) -> i64 {
    (v.as_f64()
        .unwrap_or_else(|| v.as_str().unwrap().parse().unwrap())
        * 1e9)
        .round() as i64
}

/// A chat request; (serving tier, cost in nano-USD).
async fn ask(gw: &Gateway, model: &str) -> (String, i64) {
    let resp = gw.ask(model).await;
    assert_eq!(resp.status(), 200);
    let tier = header(&resp, "x-cascade-tier").to_string();
    let cost = nanos(&Value::from(
        header(&resp, "x-cascade-cost-usd").parse::<f64>().unwrap(),
    ));
    (tier, cost)
}

/// paid (m, priced) falling back to free (f).
fn budget_config(up: &Upstream, state: &str, db: &str, budget: &str) -> String {
    [
        with_ledger(prelude_with(up, "", 0), db, ""),
        model("m", "input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0"),
        model("f", ""),
        tier("paid", &["m"], "fallback = [\"free\"]"),
        tier("free", &["f"], ""),
        budget.to_string(),
        state.to_string(),
    ]
    .concat()
}

/// A daily budget spent on two replicas: each sees the other's spend, the
/// overspend is at most one request per replica, and a $50,000 monthly
/// budget counts in integer nano-dollars without overflow.
#[tokio::test]
async fn a_daily_budget_is_spent_across_replicas() {
    let up = Upstream::start().await;
    let redis = RedisServer::start();
    let dir = temp_dir();
    // what one call costs
    let probe = Gateway::start(
        &budget_config(&up, &state(&redis), "", ""),
        &[("UP_KEY", UP_KEY)],
    )
    .await;
    let (_, cost) = ask(&probe, "paid").await;
    assert!(cost > 0);
    drop(probe);
    let redis2 = RedisServer::start();
    let budget = format!(
        "\n[budget]\ndaily_usd = {}\nmonthly_usd = 50000.0\n",
        (cost * 5 / 2) as f64 / 1e9
    );
    let shared = state(&redis2);
    let (a, b) = two(|db| budget_config(&up, &shared, db, &budget), &dir).await;

    let mut spent = 0;
    for gw in [&a, &b, &a] {
        let (tier, c) = ask(gw, "paid").await;
        assert_eq!(tier, "paid");
        spent += c;
        // the other replica sees it before its next request
        for other in [&a, &b] {
            until(
                other,
                |s| nanos(&s["budget"]["spent_today_usd"]) == spent,
                "the spend never reached the other replica",
            )
            .await;
        }
    }
    // 3 calls on a 2.5-call budget: spent, on both replicas
    for gw in [&a, &b] {
        let (tier, c) = ask(gw, "paid").await;
        assert_eq!(tier, "free", "a spent budget skips the paid tier");
        assert_eq!(c, 0);
    }
    assert_eq!(
        up.count("m"),
        4,
        "one call to learn the price, three within the budget"
    );
    let s = a.get_json("/v1/cascade/status").await;
    assert_eq!(nanos(&s["budget"]["spent_month_usd"]), spent);
    // the month holds $49,999.99 spent elsewhere: both replicas see it, exactly
    let prefix = s["state"]["key_prefix"].as_str().unwrap().to_string();
    let month_start = cascade::ledger::time::month_start_ms(cascade::ledger::time::now_ms());
    let key = format!("{prefix}:spend:month:{month_start}");
    assert_eq!(redis2.int(&key), spent);
    let big: i64 = 49_999_990_000_000; // $49,999.99 in nano-USD
    assert_eq!(
        redis2.command(&format!("INCRBY {key} {big}")).unwrap(),
        format!(":{}", big + spent)
    );
    for gw in [&a, &b] {
        let s = until(
            gw,
            |s| nanos(&s["budget"]["spent_month_usd"]) == big + spent,
            "the month's total never arrived",
        )
        .await;
        assert!(nanos(&s["budget"]["monthly_usd"]) == 50_000_000_000_000);
    }
}

/// A circuit opened through replica A is skipped by replica B without an
/// attempt of its own; when it may be tried again, one probe (on either
/// replica) decides for both. A 429 rest is shared likewise.
#[tokio::test]
async fn circuits_probes_and_rests_are_shared() {
    let up = Upstream::start().await;
    let redis = RedisServer::start();
    let dir = temp_dir();
    let shared = state(&redis);
    let config = |db: &str| {
        [
            with_ledger(prelude_with(&up, "", 2), db, "")
                .replace("open_ms = 60000", "open_ms = 1500"),
            model("m1", ""),
            model("m2", ""),
            tier("t", &["m1"], "max_retries = 1\nfallback = [\"u\"]"),
            tier("u", &["m2"], "max_retries = 0"),
            model("r1", ""),
            model("r2", ""),
            tier("r", &["r1"], "max_retries = 0\nfallback = [\"s\"]"),
            tier("s", &["r2"], "max_retries = 0"),
            shared.clone(),
        ]
        .concat()
    };
    let (a, b) = two(config, &dir).await;
    up.script("m1", vec![Step::Status(500, "down")]);
    // two failures (an attempt and its retry) through A open m1's circuit
    assert_eq!(ask(&a, "t").await.0, "u");
    assert_eq!(up.count("m1"), 2);
    let open = |s: &Value| {
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "m1" && m["circuit"] == "open")
    };
    // B skips m1 within a second, with no attempt of its own
    let t0 = Instant::now();
    until(&b, open, "B never saw the circuit open").await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    for _ in 0..5 {
        let resp = b.ask("t").await;
        assert_eq!(header(&resp, "x-cascade-model"), "m2");
    }
    assert_eq!(up.count("m1"), 2, "B made no attempt on the open model");

    // open time over: one probe among both replicas; it fails, both stay open
    probed(&up, [&a, &b], 3).await;
    for _ in 0..10 {
        a.ask("t").await;
        b.ask("t").await;
    }
    assert_eq!(up.count("m1"), 3, "one probe for both replicas");
    until(&a, open, "A: the failed probe reopens the circuit").await;
    until(&b, open, "B: the failed probe reopens the circuit").await;

    // next time the probe succeeds: closed on both, both use m1 again
    up.script("m1", vec![Step::Ok]);
    probed(&up, [&a, &b], 4).await;
    for gw in [&a, &b] {
        until(
            gw,
            |s| !open(s),
            "the probe's success never closed the circuit",
        )
        .await;
        let resp = gw.ask("t").await;
        assert_eq!(header(&resp, "x-cascade-model"), "m1");
    }

    // a 429 through A rests r1 on B too
    up.script("r1", vec![Step::RateLimited(vec![("retry-after", "30")])]);
    let resp = a.ask("r").await;
    assert_eq!(header(&resp, "x-cascade-model"), "r2");
    assert_eq!(up.count("r1"), 1);
    until(
        &b,
        |s| {
            s["models"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "r1" && !m["resting_for_ms"].is_null())
        },
        "B never saw the rest",
    )
    .await;
    for _ in 0..5 {
        let resp = b.ask("r").await;
        assert_eq!(header(&resp, "x-cascade-model"), "r2");
    }
    assert_eq!(up.count("r1"), 1, "B made no attempt on the resting model");
}

/// Requests on both replicas until `n` calls reached m1 (a probe).
async fn probed(up: &Upstream, replicas: [&Gateway; 2], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count("m1") < n {
        assert!(Instant::now() < deadline, "no probe reached m1");
        for gw in replicas {
            gw.ask("t").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// "Escalate after 3 consecutive failures" counts failures on every
/// replica, and escalates exactly once per 3.
#[tokio::test]
async fn failures_on_both_replicas_escalate_exactly_once() {
    let up = Upstream::start().await;
    let redis = RedisServer::start();
    let dir = temp_dir();
    let shared = state(&redis);
    let config = |db: &str| {
        [
            with_ledger(prelude_with(&up, "", 0), db, ""),
            model("kimi-k2", ""),
            model("llama-8b", ""),
            model("ollama-7b", ""),
            tier("kimi", &["kimi-k2"], "max_retries = 0\nfallback = [\"llama\", \"ollama\"]"),
            tier(
                "llama",
                &["llama-8b"],
                "max_retries = 0\nfallback = [\"ollama\"]\nescalate = { after_consecutive_failures = 3, to = \"kimi\" }",
            ),
            tier("ollama", &["ollama-7b"], "max_retries = 0"),
            "\n[tasks.plan]\ntier = \"llama\"\n".to_string(),
            shared.clone(),
        ]
        .concat()
    };
    let (a, b) = two(config, &dir).await;
    up.script("llama-8b", vec![Step::Status(503, "down")]);
    let escalation = |s: &Value| {
        s["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "llama")
            .unwrap()["escalate"]
            .clone()
    };
    // A, B, A: three failures split across the replicas
    let mut count = 0;
    for gw in [&a, &b, &a] {
        let resp = gw.ask("plan").await;
        assert_eq!(header(&resp, "x-cascade-tier"), "ollama");
        assert!(resp.headers().get("x-cascade-escalated").is_none());
        count = (count + 1) % 3;
        for other in [&a, &b] {
            until(
                other,
                |s| escalation(s)["consecutive_failures"] == count,
                "the count never reached both replicas",
            )
            .await;
        }
    }
    // owed on both; the next request (on B) escalates, and only that one
    for gw in [&a, &b] {
        until(
            gw,
            |s| escalation(s)["pending"] == 1,
            "the escalation is not owed",
        )
        .await;
    }
    let resp = b.ask("plan").await;
    assert_eq!(header(&resp, "x-cascade-escalated"), "true");
    assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
    for gw in [&a, &b] {
        until(
            gw,
            |s| escalation(s)["pending"] == 0,
            "the taken escalation is still owed",
        )
        .await;
    }
    up.script("llama-8b", vec![Step::Ok]);
    for gw in [&a, &b, &a, &b] {
        let resp = gw.ask("plan").await;
        assert!(resp.headers().get("x-cascade-escalated").is_none());
        assert_eq!(header(&resp, "x-cascade-tier"), "llama");
    }
    let total = a
        .metric(r#"cascade_escalations_total{from_tier="llama",to_tier="kimi"}"#)
        .await
        + b.metric(r#"cascade_escalations_total{from_tier="llama",to_tier="kimi"}"#)
            .await;
    assert_eq!(total, 1.0);
}

/// Two replica processes on one PostgreSQL ledger and one Redis; Redis
/// killed mid-run: every request is still answered, the gauge goes to 0
/// and one warning is logged; Redis back: the gauge is 1 again and the
/// spend made meanwhile is added; both replicas restarted: the budget is
/// where it was.
#[tokio::test]
async fn redis_killed_mid_run_then_back_then_replicas_restarted() {
    use crate::replicas::{config, replica};
    let pg = crate::common::pg_cluster::PgCluster::start();
    let db_url = pg.database("shared");
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let dir = temp_dir();
    let cfg = dir.0.join("cascade.toml");
    std::fs::write(
        &cfg,
        config(
            &up,
            &format!("\n[budget]\ndaily_usd = 5.0\n{}", state(&redis)),
        ),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let a = replica(&http, &cfg, &db_url, "a").await;
    let b = replica(&http, &cfg, &db_url, "b").await;
    for r in [&a, &b] {
        wait_spent(&http, r, 0, true).await;
    }
    let mut total = 0;
    for r in [&a, &b, &a, &b] {
        total += r.ask(&http).await;
    }
    for r in [&a, &b] {
        wait_spent(&http, r, total, true).await;
    }

    // Redis gone: every request answered; each replica enforces the last
    // known total plus its own spend
    redis.stop();
    let (mut own_a, mut own_b) = (0, 0);
    for _ in 0..4 {
        own_a += a.ask(&http).await;
        own_b += b.ask(&http).await;
    }
    for (r, own) in [(&a, own_a), (&b, own_b)] {
        wait_spent(&http, r, total + own, false).await;
        assert!(r.metrics(&http).await.contains("cascade_shared_state_up 0"));
    }

    // back: the spend made meanwhile is added, once
    redis.resume();
    total += own_a + own_b;
    for r in [&a, &b] {
        wait_spent(&http, r, total, true).await;
        assert!(r.metrics(&http).await.contains("cascade_shared_state_up 1"));
    }
    let prefix = a.get(&http, "/v1/cascade/status").await["state"]["key_prefix"]
        .as_str()
        .unwrap()
        .to_string();
    let day = cascade::ledger::time::day(cascade::ledger::time::now_ms());
    assert_eq!(redis.int(&format!("{prefix}:spend:day:{day}")), total);

    // both replicas restarted: the budget is where it was
    for log in [a.stop(), b.stop()] {
        assert_eq!(log.matches("shared state unreachable").count(), 1, "{log}");
        assert!(log.contains("shared state reachable"), "{log}");
    }
    let a = replica(&http, &cfg, &db_url, "a2").await;
    let b = replica(&http, &cfg, &db_url, "b2").await;
    for r in [&a, &b] {
        wait_spent(&http, r, total, true).await;
    }
    assert_eq!(redis.int(&format!("{prefix}:spend:day:{day}")), total);
}

/// Bounded poll until replica `r` reports `want` nano-USD spent today and its
/// shared state `up` (or not).
async fn wait_spent(http: &reqwest::Client, r: &crate::replicas::Replica, want: i64, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = r.get(http, "/v1/cascade/status").await;
        let spent = nanos(&s["budget"]["spent_today_usd"]);
        if spent == want && (s["state"]["up"] == true) == up {
            return;
        }
        assert!(Instant::now() < deadline, "wanted {want} (up {up}): {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
