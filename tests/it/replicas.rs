//! Replicas sharing one PostgreSQL ledger: gateway processes on a real
//! PostgreSQL cluster started on a free loopback port.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{get_json, get_text, header, rows_flushed, temp_dir};
use crate::common::pg_cluster::{PgCluster, PASSWORD};
use crate::common::process::{free_port, spawn_logged, wait_ready, Proc};
use crate::common::Upstream;
use crate::{model, prelude, tier, UP_KEY};

/// A prelude whose ledger is the PostgreSQL database in CASCADE_LEDGER_URL,
/// flushed every 10 ms, with `extra` config after it.
pub fn config(up: &Upstream, extra: &str) -> String {
    [
        prelude(up, "").replace(
            "path = \"\"",
            "backend = \"postgres\"\nurl_env = \"CASCADE_LEDGER_URL\"\nflush_interval_ms = 10\npool_size = 2",
        ),
        model("m", "input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0"),
        tier("t", &["m"], ""),
        extra.to_string(),
    ]
    .concat()
}

/// A replica: the binary on a free port, its log in `dir`.
pub struct Replica {
    pub url: String,
    log: std::path::PathBuf,
    proc: Proc,
}

pub async fn replica(http: &reqwest::Client, config: &Path, db_url: &str, name: &str) -> Replica {
    let port = free_port();
    let log = config.with_file_name(format!("{name}.log"));
    let proc = spawn_logged(
        config,
        port,
        &[("UP_KEY", UP_KEY), ("CASCADE_LEDGER_URL", db_url)],
        &log,
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(http, &url).await;
    Replica { url, log, proc }
}

impl Replica {
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        get_text(http, &format!("{}/metrics", self.url)).await
    }

    /// A chat request; its cost header in nano-dollars.
    pub async fn ask(&self, http: &reqwest::Client) -> i64 {
        let resp = http
            .post(format!("{}/v1/chat/completions", self.url))
            .json(
                &serde_json::json!({"model": "t", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cost = nanos(header(&resp, "x-cascade-cost-usd").parse::<f64>().unwrap());
        let body: Value = resp.json().await.unwrap();
        assert!(!body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty());
        cost
    }

    pub async fn get(&self, http: &reqwest::Client, path: &str) -> Value {
        get_json(http, &format!("{}{path}", self.url)).await
    }

    /// SIGTERM, and wait for the drain (the ledger flushed).
    pub fn stop(mut self) -> String {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.proc.0.id() as i32, libc::SIGTERM) };
        let status = self.proc.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

pub fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Two replicas write one ledger: each one's report (and `cascade report`)
/// shows every replica's rows, the sums equal the response headers, the
/// daily budget both spent survives a restart of both, and the database
/// password shows nowhere.
#[tokio::test]
async fn two_replicas_share_one_postgres_ledger_and_budgets_survive_restarts() {
    let pg = PgCluster::start();
    let db_url = pg.database("replicas");
    let up = Upstream::start().await;
    let dir = temp_dir();
    let cfg = dir.0.join("cascade.toml");
    std::fs::write(&cfg, config(&up, "\n[budget]\ndaily_usd = 5.0\n")).unwrap();
    let http = reqwest::Client::new();
    let a = replica(&http, &cfg, &db_url, "a").await;
    let b = replica(&http, &cfg, &db_url, "b").await;

    let mut spent = 0;
    for _ in 0..6 {
        spent += a.ask(&http).await;
    }
    for _ in 0..4 {
        spent += b.ask(&http).await;
    }
    assert!(spent > 0);
    rows_flushed(&http, &a.url, 6).await;
    rows_flushed(&http, &b.url, 4).await;
    for r in [&a, &b] {
        let report = r.get(&http, "/v1/cascade/costs?since=24h").await;
        assert_eq!(report["requests"], 10, "{report}");
        assert_eq!(report["by_tier"]["t"]["calls"], 10);
        assert_eq!(nanos(report["total_cost_usd"].as_f64().unwrap()), spent);
        let status = r.get(&http, "/v1/cascade/status").await;
        assert_eq!(status["ledger"]["backend"], "postgres");
        assert!(!status.to_string().contains(PASSWORD));
    }
    assert_eq!(pg.value("replicas", "SELECT COUNT(*) FROM requests"), 10);

    // `cascade report` reads the same database
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["report", "--config"])
        .arg(&cfg)
        .args(["--since", "24h"])
        .env("UP_KEY", UP_KEY)
        .env("CASCADE_LEDGER_URL", &db_url)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["requests", "10"]),
        "{table}"
    );

    // both stopped, one started: the day's spend is where it was
    let logs = [a.stop(), b.stop()];
    let again = replica(&http, &cfg, &db_url, "again").await;
    let status = again.get(&http, "/v1/cascade/status").await;
    assert_eq!(
        nanos(status["budget"]["spent_today_usd"].as_f64().unwrap()),
        spent,
        "{status}"
    );
    let metrics = again.metrics(&http).await;
    let log = again.stop();
    for text in logs.iter().chain([&log, &metrics]) {
        assert!(!text.contains(PASSWORD), "the database password leaked");
    }
}

/// PostgreSQL stopped mid-run: every request is still answered, the rows
/// wait in the writer and arrive once it is back; none is dropped; one
/// warning for the outage.
#[tokio::test]
async fn postgres_stopped_mid_run_loses_no_row() {
    let mut pg = PgCluster::start();
    let db_url = pg.database("outage");
    let up = Upstream::start().await;
    let dir = temp_dir();
    let cfg = dir.0.join("cascade.toml");
    std::fs::write(&cfg, config(&up, "")).unwrap();
    let http = reqwest::Client::new();
    let gw = replica(&http, &cfg, &db_url, "gw").await;
    for _ in 0..5 {
        gw.ask(&http).await;
    }
    rows_flushed(&http, &gw.url, 5).await;

    pg.stop();
    for _ in 0..30 {
        gw.ask(&http).await;
    }
    let status = gw.get(&http, "/v1/cascade/status").await;
    assert_eq!(status["ledger"]["rows_flushed"], 5, "{status}");

    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.value("outage", "SELECT COUNT(*) FROM requests") < 35 {
        assert!(Instant::now() < deadline, "the waiting rows never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pg.value("outage", "SELECT COUNT(*) FROM requests"), 35);
    assert_eq!(
        pg.value("outage", "SELECT COUNT(*) FROM attempts"),
        35,
        "each request's attempt"
    );
    let metrics = gw.metrics(&http).await;
    assert!(
        metrics.contains("cascade_ledger_dropped_total 0"),
        "no row dropped"
    );
    let log = gw.stop();
    assert_eq!(log.matches("ledger unreachable").count(), 1, "{log}");
    assert!(log.contains("ledger reachable again"), "{log}");
    assert!(!log.contains(PASSWORD));
}
