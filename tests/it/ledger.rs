//! The ledger over time: hourly rollups and retention, through the binary's
//! writer and its cost report.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::gateway::{header, temp_dir};
use crate::common::{Gateway, Upstream};
use crate::{model, prelude, tier, ENV};

const DAY_MS: i64 = 86_400_000;

fn config(up: &Upstream, db: &str, retention_days: u32) -> String {
    [
        crate::with_ledger(
            prelude(up, ""),
            db,
            &format!("retention_days = {retention_days}"),
        ),
        model("m", "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0"),
        tier("t", &["m"], ""),
    ]
    .concat()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A ledger from before rollups, with rows three and two days old: the
/// gateway folds them into hours, then deletes them past a one-day
/// retention; the 7-day report still counts them, and a live request adds
/// to it exactly.
#[tokio::test]
async fn old_rows_are_folded_then_deleted_and_the_report_is_unchanged() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    // a ledger from before rollups (schema version 2) holding old rows
    let now = now_ms();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE requests (id TEXT NOT NULL, ts_ms INTEGER NOT NULL, task TEXT, key TEXT, \
             session TEXT, chain TEXT NOT NULL, first_tier TEXT, tier TEXT, model TEXT, free INTEGER NOT NULL, \
             fallback INTEGER NOT NULL, escalated INTEGER NOT NULL, status INTEGER NOT NULL, \
             stream INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, \
             cost_nanos INTEGER NOT NULL, savings_nanos INTEGER NOT NULL, wasted_nanos INTEGER NOT NULL, \
             latency_ms INTEGER NOT NULL, endpoint TEXT NOT NULL DEFAULT 'chat'); \
             CREATE INDEX requests_ts ON requests (ts_ms); \
             CREATE TABLE attempts (request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, tier TEXT NOT NULL, \
             model TEXT NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL, status INTEGER, \
             elapsed_ms INTEGER NOT NULL); \
             CREATE INDEX attempts_ts ON attempts (ts_ms); \
             PRAGMA user_version = 2;",
        )
        .unwrap();
        for i in 0..50i64 {
            let ts = now - 3 * DAY_MS + i * 3_000_000;
            conn.execute(
                "INSERT INTO requests (id, ts_ms, task, key, session, chain, first_tier, tier, model, free, fallback, \
                 escalated, status, stream, prompt_tokens, completion_tokens, cost_nanos, savings_nanos, wasted_nanos, \
                 latency_ms, endpoint) VALUES (?1, ?2, NULL, 'k', NULL, 't', 't', 't', 'm', 0, 0, 0, 200, 0, 10, 5, \
                 ?3, 1, 0, 3, 'chat')",
                rusqlite::params![format!("old{i}"), ts, 1_000 + i],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (request_id, ts_ms, tier, model, attempt, outcome, status, elapsed_ms) \
                 VALUES (?1, ?2, 't', 'm', 1, 'success', 200, 3)",
                rusqlite::params![format!("old{i}"), ts],
            )
            .unwrap();
        }
    }
    let expected_cost: i64 = (0..50).map(|i| 1_000 + i).sum();

    // the gateway migrates it, folds its hours and deletes past a day
    let gw = Gateway::start(&config(&up, &db, 1), ENV).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let old: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE ts_ms < ?1",
                [now - DAY_MS],
                |r| r.get(0),
            )
            .unwrap();
        if old == 0 {
            let rolled: i64 = conn
                .query_row(
                    "SELECT CAST(TOTAL(requests) AS INTEGER) FROM rollups",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(rolled, 50, "every old row is in the rollups");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows past retention were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report: Value = gw.get_json("/v1/cascade/costs?since=7d").await;
    assert_eq!(report["requests"], 50);
    assert_eq!(report["by_tier"]["t"]["calls"], 50);
    assert_eq!(report["by_tier"]["t"]["attempts"], 50);
    assert_eq!(report["by_key"]["k"]["requests"], 50);
    let usd = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as i64;
    assert_eq!(usd(&report["total_cost_usd"]), expected_cost);

    // a live request adds exactly what its headers say
    let resp = gw.ask("t").await;
    let cost = usd(&Value::from(
        header(&resp, "x-cascade-cost-usd").parse::<f64>().unwrap(),
    ));
    gw.state
        .ledger()
        .unwrap()
        .flush(Duration::from_secs(2))
        .await;
    let report: Value = gw.get_json("/v1/cascade/costs?since=7d").await;
    assert_eq!(report["requests"], 51);
    assert_eq!(usd(&report["total_cost_usd"]), expected_cost + cost);
    // the 24-hour report sees only the live one
    let day: Value = gw.get_json("/v1/cascade/costs?since=24h").await;
    assert_eq!(day["requests"], 1);
}
