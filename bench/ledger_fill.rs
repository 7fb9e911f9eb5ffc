//! A ledger as months of traffic leave it: `DAYS` days of `PER_DAY` requests
//! (three tiers, four models, five keys, two endpoints, one to three attempts),
//! written in bulk into a fresh ledger (a SQLite file, or a PostgreSQL
//! database given as a postgres:// URL, filled with COPY), then compacted as
//! the writer would (ended hours folded into rollups; with `RETENTION_DAYS`,
//! older rows deleted), then the report over the whole window timed. Prints
//! one JSON line.
//!
//!   cargo run --release --example ledger_fill -- PATH|URL DAYS PER_DAY [RETENTION_DAYS]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cascade::ledger::{compact, report_at, time, Ledger, LedgerStore, Window};
use cascade::secret::Secret;
use rusqlite::params;

const TIERS: [(&str, &str); 3] = [("premium", "claude"), ("cheap", "llama"), ("local", "qwen")];

/// Request `i` of the generated traffic.
struct Req {
    id: String,
    ts: i64,
    key: String,
    chain: String,
    served: usize,
    stream: bool,
    prompt: i64,
    completion: i64,
    cost: i64,
    savings: i64,
    latency: i64,
    endpoint: &'static str,
}

fn request(i: i64, start: i64, step: i64) -> Req {
    let served = (i % 10) as usize % 3;
    let prompt = 200 + i % 800;
    let completion = 50 + i % 300;
    let cost = if served == 2 {
        0
    } else {
        prompt * 3 + completion * 15
    };
    Req {
        id: format!("req_{i:024x}"),
        ts: start + i * step,
        key: format!("key{}", i % 5),
        chain: TIERS[..=served]
            .iter()
            .map(|t| t.0)
            .collect::<Vec<_>>()
            .join(","),
        served,
        stream: i % 4 == 0,
        prompt,
        completion,
        cost,
        savings: (prompt * 15 + completion * 75) - cost,
        latency: 100 + i % 900,
        endpoint: if i % 9 == 0 { "embeddings" } else { "chat" },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: ledger_fill PATH DAYS PER_DAY [RETENTION_DAYS]");
        std::process::exit(2);
    }
    let target = &args[1];
    let store = if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        LedgerStore::Postgres {
            url: Secret::new(target),
            pool_size: 2,
        }
    } else {
        let _ = std::fs::remove_file(target);
        LedgerStore::Sqlite(PathBuf::from(target))
    };
    let days: i64 = args[2].parse().expect("DAYS");
    let per_day: i64 = args[3].parse().expect("PER_DAY");
    let retention = args
        .get(4)
        .map(|d| Duration::from_secs(d.parse::<u64>().expect("RETENTION_DAYS") * 86_400));

    // the schema, as the gateway makes it
    let counter = prometheus::IntCounter::new("d", "d").expect("counter");
    Ledger::open(&store, (Duration::from_millis(10), None), counter)
        .expect("open")
        .close();

    let now = time::now_ms();
    let start = now - days * 86_400_000;
    let total = days * per_day;
    let step = (days * 86_400_000) / total.max(1);
    // as if the gateway had been running since the first row: nothing after
    // it folded yet (the rows bypass the writer, which would fold as it goes)
    let folded_from = start.div_euclid(3_600_000) * 3_600_000;
    let t0 = Instant::now();
    match &store {
        LedgerStore::Sqlite(path) => fill_sqlite(path, total, (start, step), folded_from),
        LedgerStore::Postgres { url, .. } => {
            fill_postgres(url.expose(), total, (start, step), folded_from)
        }
    }
    let filled = t0.elapsed();
    let size_filled = size(&store, false);

    let t1 = Instant::now();
    let (rollup_rows, deleted) = compact(&store, now, retention).expect("compact");
    let compacted = t1.elapsed();
    let size_compacted = size(&store, false);

    let window = Window::parse(&format!("{days}d")).expect("window");
    let mut times = Vec::new();
    let mut requests = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let r = report_at(&store, window, now + 1).expect("report");
        times.push(t.elapsed().as_secs_f64());
        requests = r.requests;
    }
    times.sort_by(f64::total_cmp);
    // what the store converges to as new rows reuse the deleted pages
    let size_vacuumed = size(&store, true);
    println!(
        "{{\"backend\": \"{}\", \"days\": {days}, \"per_day\": {per_day}, \"retention_days\": {}, \"rows\": {total}, \
         \"fill_s\": {:.1}, \"size_mib\": {:.0}, \"compact_s\": {:.1}, \"rollup_rows\": {rollup_rows}, \
         \"rows_deleted\": {deleted}, \"size_after_compact_mib\": {:.0}, \"size_vacuumed_mib\": {:.0}, \
         \"report_requests\": {requests}, \"report_s_median\": {:.3}}}",
        match store {
            LedgerStore::Sqlite(_) => "sqlite",
            LedgerStore::Postgres { .. } => "postgres",
        },
        args.get(4).map_or("null".to_string(), String::clone),
        filled.as_secs_f64(),
        size_filled as f64 / 1048576.0,
        compacted.as_secs_f64(),
        size_compacted as f64 / 1048576.0,
        size_vacuumed as f64 / 1048576.0,
        times[1],
    );
}

/// The file's or the database's size in bytes; `vacuum`: after giving the
/// space of deleted rows back.
fn size(store: &LedgerStore, vacuum: bool) -> u64 {
    match store {
        LedgerStore::Sqlite(path) => {
            if vacuum {
                let conn = rusqlite::Connection::open(path).expect("open");
                conn.execute_batch("VACUUM").expect("vacuum");
            }
            std::fs::metadata(path).map_or(0, |m| m.len())
        }
        LedgerStore::Postgres { url, .. } => {
            let mut c = postgres::Client::connect(url.expose(), postgres::NoTls).expect("connect");
            if vacuum {
                c.batch_execute("VACUUM FULL").expect("vacuum");
            }
            let n: i64 = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .expect("size")
                .get(0);
            n as u64
        }
    }
}

fn fill_sqlite(path: &std::path::Path, total: i64, (start, step): (i64, i64), folded_from: i64) {
    let mut conn = rusqlite::Connection::open(path).expect("open");
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("pragma");
    conn.execute(
        "UPDATE rollup_state SET folded_until_ms = ?1",
        params![folded_from],
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
                let r = request(i, start, step);
                let (tier, model) = TIERS[r.served];
                req.execute(params![
                    r.id,
                    r.ts,
                    r.key,
                    r.chain,
                    tier,
                    model,
                    r.served == 2,
                    r.served > 0,
                    r.stream,
                    r.prompt,
                    r.completion,
                    r.cost,
                    r.savings,
                    r.latency,
                    r.endpoint,
                ])
                .expect("insert");
                for (n, (t, m)) in TIERS[..=r.served].iter().enumerate() {
                    let ok = n == r.served;
                    att.execute(params![
                        r.id,
                        r.ts,
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
}

/// The same rows through COPY (text format), requests then attempts.
fn fill_postgres(url: &str, total: i64, (start, step): (i64, i64), folded_from: i64) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.execute(
        "UPDATE rollup_state SET folded_until_ms = $1",
        &[&folded_from],
    )
    .expect("rollup state");
    let mut w = c
        .copy_in(
            "COPY requests (id, ts_ms, task, key, session, chain, first_tier, tier, model, free, \
             fallback, escalated, status, stream, prompt_tokens, completion_tokens, cost_nanos, \
             savings_nanos, wasted_nanos, latency_ms, endpoint) FROM STDIN",
        )
        .expect("copy");
    let mut buf = std::io::BufWriter::with_capacity(1 << 20, &mut w);
    for i in 0..total {
        let r = request(i, start, step);
        let (tier, model) = TIERS[r.served];
        writeln!(
            buf,
            "{}\t{}\tplan\t{}\t\\N\t{}\tpremium\t{tier}\t{model}\t{}\t{}\tf\t200\t{}\t{}\t{}\t{}\t{}\t0\t{}\t{}",
            r.id,
            r.ts,
            r.key,
            r.chain,
            r.served == 2,
            r.served > 0,
            r.stream,
            r.prompt,
            r.completion,
            r.cost,
            r.savings,
            r.latency,
            r.endpoint
        )
        .expect("copy");
    }
    buf.flush().expect("copy");
    drop(buf);
    w.finish().expect("copy");
    let mut w = c
        .copy_in(
            "COPY attempts (request_id, ts_ms, tier, model, attempt, outcome, status, elapsed_ms) FROM STDIN",
        )
        .expect("copy");
    let mut buf = std::io::BufWriter::with_capacity(1 << 20, &mut w);
    for i in 0..total {
        let r = request(i, start, step);
        for (n, (t, m)) in TIERS[..=r.served].iter().enumerate() {
            let ok = n == r.served;
            writeln!(
                buf,
                "{}\t{}\t{t}\t{m}\t{}\t{}\t{}\t{}",
                r.id,
                r.ts,
                n + 1,
                if ok { "success" } else { "upstream_error" },
                if ok { 200 } else { 503 },
                30 + i % 500
            )
            .expect("copy");
        }
    }
    buf.flush().expect("copy");
    drop(buf);
    w.finish().expect("copy");
    c.batch_execute("ANALYZE").expect("analyze");
}
