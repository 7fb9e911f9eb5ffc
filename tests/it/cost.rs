//! Issue "Cost intelligence": escalation, the ledger, budgets, the report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{
    body, db_value, get_json, header, named, rows_flushed, temp_dir, TempDir,
};
use crate::common::process::{free_port, spawn, wait_ready};
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude_with, tier, with_ledger, ENV};

/// The strategic planner's shape: kimi (paid) -> llama -> ollama; llama
/// escalates to kimi after 3 consecutive failures. Ledger at `ledger`.
fn planner(up: &Upstream, ledger: &str, extra: &str) -> String {
    format!(
        "{}{}{}{}{}{}{}{}",
        with_ledger(prelude_with(up, "", 0), ledger, ""),
        model("kimi-k2", "input_usd_per_mtok = 0.6\noutput_usd_per_mtok = 2.5"),
        model("llama-8b", ""),
        model("ollama-7b", ""),
        tier("kimi", &["kimi-k2"], "max_retries = 0\nfallback = [\"llama\", \"ollama\"]"),
        tier(
            "llama",
            &["llama-8b"],
            "max_retries = 0\nfallback = [\"ollama\"]\nescalate = { after_consecutive_failures = 3, to = \"kimi\" }"
        ),
        tier("ollama", &["ollama-7b"], "max_retries = 0"),
        extra,
    )
}

fn ledger_path(dir: &TempDir) -> String {
    dir.0.join("ledger.db").display().to_string()
}

#[tokio::test]
async fn three_failures_escalate_the_next_request_once() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&planner(&up, "", "\n[tasks.plan]\ntier = \"llama\"\n"), ENV).await;
    up.script("llama-8b", vec![Step::Status(503, "down")]);
    for _ in 0..3 {
        let resp = gw.ask("plan").await;
        assert_eq!(header(&resp, "x-cascade-tier"), "ollama");
        assert!(resp.headers().get("x-cascade-escalated").is_none());
    }
    let resp = gw.ask("plan").await;
    assert_eq!(header(&resp, "x-cascade-escalated"), "true");
    assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
    assert_eq!(header(&resp, "x-cascade-chain"), "kimi");
    assert_eq!(
        gw.metric(r#"cascade_escalations_total{from_tier="llama",to_tier="kimi"}"#)
            .await,
        1.0
    );
    // the count started again: the next request is not escalated
    let resp = gw.ask("plan").await;
    assert!(resp.headers().get("x-cascade-escalated").is_none());
    // a success resets the count
    // (the count is 1 now: the request above failed on llama)
    up.script(
        "llama-8b",
        vec![
            Step::Ok,
            Step::Status(503, "down"),
            Step::Status(503, "down"),
            Step::Ok,
            Step::Status(503, "down"),
        ],
    );
    for _ in 0..5 {
        assert!(gw
            .ask("plan")
            .await
            .headers()
            .get("x-cascade-escalated")
            .is_none());
    }
    // the client can ask, without touching the count
    let resp = gw
        .chat()
        .header("x-cascade-escalate", "true")
        .json(&body("plan"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-escalated"), "true");
    assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
    let status: Value = gw.get_json("/v1/cascade/status").await;
    let llama = named(&status["tiers"], "llama");
    assert_eq!(llama["escalate"]["consecutive_failures"], 1);
}

#[tokio::test]
async fn concurrent_failures_escalate_exactly_once_per_threshold() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&planner(&up, "", ""), ENV).await;
    up.script(
        "llama-8b",
        vec![Step::Delay(30, Box::new(Step::Status(503, "down")))],
    );
    let burst = (0..31).map(|_| gw.ask("llama"));
    let mut escalated = 0;
    for resp in futures_util::future::join_all(burst).await {
        escalated += usize::from(resp.headers().get("x-cascade-escalated").is_some());
    }
    let failures = up.count("llama-8b");
    up.script("llama-8b", vec![Step::Ok]);
    for _ in 0..20 {
        escalated += usize::from(
            gw.ask("llama")
                .await
                .headers()
                .get("x-cascade-escalated")
                .is_some(),
        );
    }
    assert_eq!(escalated, failures / 3, "{failures} failed attempts");
}

#[tokio::test]
async fn minor_requests_are_never_escalated_to_a_paid_tier() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &planner(
            &up,
            "",
            "\n[tasks.replan_minor]\ntier = \"llama\"\nminor = true\n",
        ),
        ENV,
    )
    .await;
    up.script("llama-8b", vec![Step::Status(503, "down")]);
    for _ in 0..6 {
        let resp = gw.ask("replan_minor").await;
        assert_eq!(header(&resp, "x-cascade-tier"), "ollama");
    }
    assert_eq!(up.count("kimi-k2"), 0);
}

async fn status(gw: &Gateway) -> Value {
    gw.get_json("/v1/cascade/status").await
}

#[tokio::test]
async fn the_ledger_records_success_fallback_and_failure() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = ledger_path(&dir);
    let gw = Gateway::start(&planner(&up, &db, ""), ENV).await;
    gw.ask("kimi").await; // success
    up.script("kimi-k2", vec![Step::Status(503, "down")]);
    gw.ask("kimi").await; // fallback to llama
    up.script("llama-8b", vec![Step::Status(503, "down")]);
    up.script("ollama-7b", vec![Step::Status(503, "down")]);
    assert_eq!(gw.ask("kimi").await.status(), 502); // total failure
    rows_flushed(&gw.http, &gw.url, 3).await;
    assert_eq!(db_value(&db, "SELECT COUNT(*) FROM requests"), 3);
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM requests WHERE status = 200 AND fallback = 0"
        ),
        1
    );
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM requests WHERE fallback = 1 AND tier = 'llama'"
        ),
        1
    );
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM requests WHERE status = 502 AND tier IS NULL"
        ),
        1
    );
    assert_eq!(db_value(&db, "SELECT COUNT(*) FROM attempts"), 1 + 2 + 3);
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'upstream_error'"
        ),
        4
    );
}

#[tokio::test]
async fn budgets_survive_restarts_and_skip_or_reject() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = ledger_path(&dir);
    // kimi costs 10 * 0.6 + 5 * 2.5 = 18.5 per Mtok = $0.0000185 a call
    let budget = "\n[budget]\ndaily_usd = 0.00003\n";
    let cfg = planner(&up, &db, budget);
    {
        let gw = Gateway::start(&cfg, ENV).await;
        let resp = gw.ask("kimi").await;
        assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
        assert_eq!(header(&resp, "x-cascade-budget-remaining-usd"), "0.0000115");
        rows_flushed(&gw.http, &gw.url, 1).await;
        gw.state.close();
    }
    // restart: the spend is still there
    let gw = Gateway::start(&cfg, ENV).await;
    let resp = gw.ask("kimi").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
    assert_eq!(header(&resp, "x-cascade-budget-remaining-usd"), "0");
    // spent: free_only skips the paid tier, fallbacks included
    let resp = gw.ask("kimi").await;
    assert_eq!(header(&resp, "x-cascade-tier"), "llama");
    assert_eq!(header(&resp, "x-cascade-chain"), "llama");
    assert_eq!(up.count("kimi-k2"), 2);
    // a chain left with nothing but paid tiers: 429 budget_exceeded
    let resp = gw.ask("model:kimi-k2").await;
    assert_eq!(resp.status(), 429);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "budget_exceeded");
    gw.state.close();

    // reject: every request refused once spent
    let gw = Gateway::start(
        &cfg.replace(
            budget,
            "\n[budget]\ndaily_usd = 0.00003\non_exhausted = \"reject\"\n",
        ),
        ENV,
    )
    .await;
    let resp = gw.ask("ollama").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "budget_exceeded");
    gw.state.close();
}

#[tokio::test]
async fn session_and_key_budgets() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = ledger_path(&dir);
    let cfg = planner(
        &up,
        &db,
        "\n[budget]\nsession_usd = 0.00002\n[keys.agent]\nkey_env = \"AGENT_KEY\"\ndaily_usd = 0.00004\n",
    );
    let mut env = ENV.to_vec();
    env.push(("AGENT_KEY", "ak-1"));
    let gw = Gateway::start(&cfg, &env).await;
    let ask = |session: &'static str| {
        gw.chat()
            .bearer_auth("ak-1")
            .header("x-cascade-session", session)
            .json(&body("kimi"))
            .send()
    };
    assert_eq!(header(&ask("s1").await.unwrap(), "x-cascade-tier"), "kimi");
    // s1 spent 0.0000185 of 0.00002: the next paid call is refused for s1 only
    assert_eq!(header(&ask("s1").await.unwrap(), "x-cascade-tier"), "kimi");
    assert_eq!(header(&ask("s1").await.unwrap(), "x-cascade-tier"), "llama");
    // the key has spent 0.000037 of 0.00004 today
    let resp = ask("s2").await.unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "kimi");
    assert_eq!(header(&resp, "x-cascade-budget-remaining-usd"), "0");
    assert_eq!(header(&ask("s3").await.unwrap(), "x-cascade-tier"), "llama");
    gw.state.close();
}

fn parse_usd(s: &str) -> i128 {
    // exact: nano-dollars from a plain decimal
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<i128>().unwrap() * 1_000_000_000 + frac.parse::<i128>().unwrap()
}

#[tokio::test]
async fn the_report_equals_the_sum_of_the_headers() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = ledger_path(&dir);
    let gw = Gateway::start(&planner(&up, &db, ""), ENV).await;
    up.script(
        "kimi-k2",
        vec![
            Step::Ok,
            Step::Status(503, "down"),
            Step::Text("x", 1000, 333),
        ],
    );
    let mut total: i128 = 0;
    let mut savings: i128 = 0;
    let mut free = 0;
    let mut fallbacks = 0;
    let n = 8;
    for _ in 0..n {
        let resp = gw.ask("kimi").await;
        total += parse_usd(header(&resp, "x-cascade-cost-usd"));
        savings += parse_usd(header(&resp, "x-cascade-savings-usd"));
        free += usize::from(header(&resp, "x-cascade-tier") != "kimi");
        fallbacks += usize::from(header(&resp, "x-cascade-fallback") == "true");
    }
    // no waiting for the writer: the report includes what is still queued
    let r: Value = gw.get_json("/v1/cascade/costs?since=24h").await;
    let usd = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as i128;
    assert_eq!(r["requests"], n);
    assert_eq!(usd(&r["total_cost_usd"]), total);
    assert_eq!(usd(&r["estimated_savings_usd"]), savings);
    assert_eq!(usd(&r["wasted_cost_usd"]), 0);
    assert_eq!(
        r["free_call_percentage"].as_f64().unwrap(),
        (free * 100) as f64 / n as f64
    );
    assert_eq!(
        r["fallback_rate"].as_f64().unwrap(),
        fallbacks as f64 / n as f64
    );
    assert_eq!(r["by_tier"]["kimi"]["failures"], 1);
    assert_eq!(usd(&r["by_tier"]["kimi"]["cost_usd"]), total);
    assert_eq!(
        r["by_model"]["kimi-k2"]["calls"].as_u64().unwrap() as usize,
        n - free
    );
    let bad = gw
        .http
        .get(format!("{}/v1/cascade/costs?since=forever", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

// --- kill -9: the real binary ------------------------------------------------

#[tokio::test]
async fn kill_9_loses_at_most_the_last_flush_and_never_corrupts() {
    let dir = temp_dir();
    let db: PathBuf = dir.0.join("ledger.db");
    let config = dir.0.join("cascade.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\npath = \"{}\"\nflush_interval_ms = 50\n[providers.m]\nkind = \"mock\"\n[models.a]\nprovider = \"m\"\nmodel = \"a\"\ninput_usd_per_mtok = 1.0\n[tiers.t]\nmodels = [\"a\"]\n",
            db.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut gw = spawn(&config, port);
    wait_ready(&http, &url).await;

    // load in the background while we watch the writer's counter
    let load_url = url.clone();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for _ in 0..400 {
            let _ = http
                .post(format!("{load_url}/v1/chat/completions"))
                .json(&body("t"))
                .send()
                .await;
        }
    });
    let mut reported = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reported < 100 {
        let s: Value = get_json(&http, &format!("{url}/v1/cascade/status")).await;
        reported = s["ledger"]["rows_flushed"].as_u64().unwrap();
        assert!(
            Instant::now() < deadline,
            "the writer never reported 100 rows"
        );
    }
    gw.0.kill().unwrap(); // SIGKILL
    gw.0.wait().unwrap();
    load.abort();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert!(
        rows as u64 >= reported,
        "{rows} rows on disk, {reported} reported flushed"
    );
    drop(conn);

    // and the gateway starts again on it
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _gw = spawn(&config, port);
    wait_ready(&http, &url).await;
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&body("t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_escalated_request_keeps_the_retry_cap() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&planner(&up, "", "").replace("tier(\"kimi\"", ""), ENV).await;
    up.script("llama-8b", vec![Step::Status(503, "down")]);
    up.script("kimi-k2", vec![Step::Status(503, "down")]);
    for _ in 0..3 {
        gw.ask("llama").await;
    }
    let resp = gw
        .chat()
        .header("x-cascade-max-retries", "0")
        .json(&body("llama"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-escalated"), "true");
    assert_eq!(
        up.count("kimi-k2"),
        1,
        "x-cascade-max-retries: 0 holds for the escalated tier too"
    );
}

#[tokio::test]
async fn a_stream_cut_midway_is_a_failed_attempt_in_the_ledger_and_for_escalation() {
    use crate::common::StreamScript;
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = ledger_path(&dir);
    let gw = Gateway::start(&planner(&up, &db, ""), ENV).await;
    let cut = StreamScript {
        cut: true,
        ..StreamScript::text(&["partial"])
    };
    up.script("llama-8b", vec![Step::Stream(cut)]);
    let b = serde_json::json!({"model": "llama", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let text = gw
        .chat()
        .json(&b)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("stream_interrupted"));
    let s = status(&gw).await;
    let llama = named(&s["tiers"], "llama");
    assert_eq!(llama["escalate"]["consecutive_failures"], 1);
    rows_flushed(&gw.http, &gw.url, 1).await;
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'upstream_error'"
        ),
        1
    );
    assert_eq!(
        db_value(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'success'"
        ),
        0
    );
    assert!(db_value(&db, "SELECT wasted_nanos FROM requests") >= 0);
}
