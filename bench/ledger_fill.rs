//! A ledger as months of traffic leave it: `DAYS` days of `PER_DAY` requests
//! (three tiers, four models, five keys, two endpoints, one to three attempts),
//! written in bulk into a fresh SQLite ledger, then compacted as the writer
//! would (ended hours folded into rollups; with `RETENTION_DAYS`, older rows
//! deleted), then the report over the whole window timed. Prints one JSON line.
//!
//!   cargo run --release --example ledger_fill -- PATH DAYS PER_DAY [RETENTION_DAYS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cascade::ledger::{compact, report_at, time, Ledger, Window};
use rusqlite::params;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: ledger_fill PATH DAYS PER_DAY [RETENTION_DAYS]");
        std::process::exit(2);
    }
    let path = PathBuf::from(&args[1]);
    let days: i64 = args[2].parse().expect("DAYS");
    let per_day: i64 = args[3].parse().expect("PER_DAY");
    let retention = args
        .get(4)
        .map(|d| Duration::from_secs(d.parse::<u64>().expect("RETENTION_DAYS") * 86_400));
    let _ = std::fs::remove_file(&path);

    // the schema, as the gateway makes it
    let counter = prometheus::IntCounter::new("d", "d").expect("counter");
    Ledger::open(&path, (Duration::from_millis(10), None), counter)
        .expect("open")
        .close();

    let now = time::now_ms();
    let start = now - days * 86_400_000;
    let total = days * per_day;
    let step = (days * 86_400_000) / total.max(1);
    let tiers = [("premium", "claude"), ("cheap", "llama"), ("local", "qwen")];
    let t0 = Instant::now();
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("pragma");
    // as if the gateway had been running since the first row: nothing after
    // it folded yet (the rows bypass the writer, which would fold as it goes)
    conn.execute(
        "UPDATE rollup_state SET folded_until_ms = ?1",
        params![start.div_euclid(3_600_000) * 3_600_000],
    )
    .expect("rollup state");
    let mut i = 0i64;
    while i < total {
        let tx = conn.transaction().expect("tx");
        {
            let mut req = tx
                .prepare_cached(
                    "INSERT INTO requests (id, ts_ms, task, key, session, chain, first_tier, tier, model, free, \
                     fallback, escalated, status, stream, prompt_tokens, completion_tokens, cost_nanos, \
                     savings_nanos, wasted_nanos, latency_ms, endpoint) VALUES (?1, ?2, 'plan', ?3, NULL, ?4, \
                     'premium', ?5, ?6, ?7, ?8, 0, 200, ?9, ?10, ?11, ?12, ?13, 0, ?14, ?15)",
                )
                .expect("prepare");
            let mut att = tx
                .prepare_cached(
                    "INSERT INTO attempts (request_id, ts_ms, tier, model, attempt, outcome, status, elapsed_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .expect("prepare");
            for _ in 0..100_000.min(total - i) {
                let ts = start + i * step;
                let served = (i % 10) as usize % 3;
                let (tier, model) = tiers[served];
                let id = format!("req_{i:024x}");
                let prompt = 200 + i % 800;
                let completion = 50 + i % 300;
                let cost = if served == 2 {
                    0
                } else {
                    prompt * 3 + completion * 15
                };
                req.execute(params![
                    id,
                    ts,
                    format!("key{}", i % 5),
                    tiers[..=served]
                        .iter()
                        .map(|t| t.0)
                        .collect::<Vec<_>>()
                        .join(","),
                    tier,
                    model,
                    served == 2,
                    served > 0,
                    i % 4 == 0,
                    prompt,
                    completion,
                    cost,
                    (prompt * 15 + completion * 75) - cost,
                    100 + i % 900,
                    if i % 9 == 0 { "embeddings" } else { "chat" },
                ])
                .expect("insert");
                for (n, (t, m)) in tiers[..=served].iter().enumerate() {
                    let ok = n == served;
                    att.execute(params![
                        id,
                        ts,
                        t,
                        m,
                        n as i64 + 1,
                        if ok { "success" } else { "upstream_error" },
                        if ok { 200 } else { 503 },
                        30 + i % 500,
                    ])
                    .expect("insert");
                }
                i += 1;
            }
        }
        tx.commit().expect("commit");
    }
    drop(conn);
    let filled = t0.elapsed();
    let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let size_filled = size(&path);

    let t1 = Instant::now();
    let (rollup_rows, deleted) = compact(&path, now, retention).expect("compact");
    let compacted = t1.elapsed();
    let size_compacted = size(&path);

    let window = Window::parse(&format!("{days}d")).expect("window");
    let mut times = Vec::new();
    let mut requests = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let r = report_at(&path, window, now + 1).expect("report");
        times.push(t.elapsed().as_secs_f64());
        requests = r.requests;
    }
    times.sort_by(f64::total_cmp);
    // what the file converges to as new rows reuse the deleted pages
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("VACUUM").expect("vacuum");
    drop(conn);
    println!(
        "{{\"days\": {days}, \"per_day\": {per_day}, \"retention_days\": {}, \"rows\": {total}, \
         \"fill_s\": {:.1}, \"file_mib\": {:.0}, \"compact_s\": {:.1}, \"rollup_rows\": {rollup_rows}, \
         \"rows_deleted\": {deleted}, \"file_after_compact_mib\": {:.0}, \"file_vacuumed_mib\": {:.0}, \
         \"report_requests\": {requests}, \"report_s_median\": {:.3}}}",
        args.get(4).map_or("null".to_string(), String::clone),
        filled.as_secs_f64(),
        size_filled as f64 / 1048576.0,
        compacted.as_secs_f64(),
        size_compacted as f64 / 1048576.0,
        size(&path) as f64 / 1048576.0,
        times[1],
    );
}
