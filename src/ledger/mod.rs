//! The durable ledger: every finished request, with its attempts, in SQLite.
//! Rows go through a bounded channel to a batching writer thread, so a
//! request never waits on disk; a full channel drops the row, counts it in
//! cascade_ledger_dropped_total and logs. Each batch is one transaction, so
//! a kill -9 loses at most the rows of the last flush interval and never
//! corrupts the file (WAL).

mod report;
mod rollup;
mod schema;
pub mod time;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntCounter;
use rusqlite::{params, Connection};
use tokio::sync::mpsc;

pub use report::{render_table, Report, Window};

/// How many rows may wait for the writer.
const QUEUE: usize = 16_384;

#[derive(Clone, Debug, Default)]
pub struct RequestRow {
    pub id: String,
    pub ts_ms: i64,
    /// `chat`, `embeddings`, ...
    pub endpoint: &'static str,
    pub task: Option<String>,
    pub key: Option<String>,
    pub session: Option<String>,
    /// Tiers actually tried, comma-separated.
    pub chain: String,
    pub first_tier: Option<String>,
    pub tier: Option<String>,
    pub model: Option<String>,
    pub free: bool,
    pub fallback: bool,
    pub escalated: bool,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanos: i64,
    pub savings_nanos: i64,
    pub wasted_nanos: i64,
    pub latency_ms: u64,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Clone, Debug, Default)]
pub struct AttemptRow {
    pub tier: String,
    pub model: String,
    pub attempt: u32,
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub elapsed_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("ledger {path}: {message}")]
    Io { path: String, message: String },
}

/// What the writer receives: rows, or a request to write what it has now.
enum Msg {
    Row(Box<RequestRow>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The handle requests use. Cheap to share; `record` never blocks.
pub struct Ledger {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
    flushed: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Ledger {
    /// Open (creating and migrating) the database and start the writer.
    /// `retention`: rows older than that are deleted (their hours stay in
    /// the rollups); None keeps them forever.
    pub fn open(
        path: &Path,
        (flush_interval, retention): (Duration, Option<Duration>),
        dropped: IntCounter,
    ) -> Result<Ledger, LedgerError> {
        let conn = open_rw(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let flushed = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let path_s = path.display().to_string();
        let writer = {
            let flushed = Arc::clone(&flushed);
            let closing = Arc::clone(&closing);
            let p = path_s.clone();
            std::thread::Builder::new()
                .name("cascade-ledger".into())
                .spawn(move || {
                    write_loop(conn, rx, (flush_interval, retention), flushed, closing, p)
                })
                .map_err(|e| LedgerError::Io {
                    path: path_s,
                    message: format!("cannot start the writer: {e}"),
                })?
        };
        Ok(Ledger {
            path: path.to_path_buf(),
            tx,
            dropped,
            flushed,
            closing,
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue a row. Never blocks: a full queue drops it.
    pub fn record(&self, row: RequestRow) {
        if let Err(e) = self.tx.try_send(Msg::Row(Box::new(row))) {
            self.dropped.inc();
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "the writer's queue is full",
                mpsc::error::TrySendError::Closed(_) => "the writer has stopped",
            };
            tracing::warn!(reason, "ledger row dropped");
        }
    }

    /// Write every row queued so far (so a report includes them). Waits at
    /// most `timeout`; a full queue or a stopped writer just returns.
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Msg::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }

    /// Rows written and committed so far.
    pub fn rows_flushed(&self) -> u64 {
        self.flushed.load(Ordering::SeqCst)
    }

    /// Rows waiting for the writer.
    pub fn queued(&self) -> usize {
        QUEUE - self.tx.capacity()
    }

    /// Write what is queued and stop the writer (graceful shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Spend since `since_ms` (cost plus wasted), in nano-dollars, in total
    /// and by key and by session: what budgets start from.
    pub fn spend_since(&self, since_ms: i64) -> Result<Spend, LedgerError> {
        let conn = open_ro(&self.path)?;
        spend_since(&conn, since_ms).map_err(|e| sqlite(&self.path, e))
    }

    /// The cost report for a window.
    pub fn report(&self, window: Window, now_ms: i64) -> Result<Report, LedgerError> {
        report_at(&self.path, window, now_ms)
    }
}

/// Fold every ended hour and delete every row past `retention` now, in
/// one go (what the writer does a little at a time): for a ledger filled
/// in bulk (bench/ledger_fill.rs). Returns (rollup rows made, rows deleted).
pub fn compact(
    path: &Path,
    now_ms: i64,
    retention: Option<Duration>,
) -> Result<(usize, usize), LedgerError> {
    let mut conn = open_rw(path)?;
    let folded = rollup::fold(&mut conn, now_ms).map_err(|e| sqlite(path, e))?;
    let mut deleted = 0;
    if let Some(before) = rollup::cutoff(now_ms, retention) {
        loop {
            let n = rollup::prune(&conn, before).map_err(|e| sqlite(path, e))?;
            deleted += n;
            if n == 0 {
                break;
            }
        }
    }
    Ok((folded, deleted))
}

/// The cost report from a ledger file (used by `cascade report` too).
pub fn report_at(path: &Path, window: Window, now_ms: i64) -> Result<Report, LedgerError> {
    let conn = open_ro(path)?;
    report::build(&conn, window, now_ms).map_err(|e| sqlite(path, e))
}

#[derive(Debug, Default)]
pub struct Spend {
    pub total: i64,
    pub by_key: Vec<(String, i64)>,
    pub by_session: Vec<(String, i64)>,
}

fn spend_since(conn: &Connection, since_ms: i64) -> rusqlite::Result<Spend> {
    // rollups for folded whole hours, rows for the rest (sessions: rows only,
    // within retention)
    let src = rollup::Sources::new(conn, since_ms)?;
    let p = src.params;
    let total: i64 = conn.query_row(
        &src.query("SELECT CAST(TOTAL(cost + wasted) AS INTEGER) FROM r"),
        p,
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(&src.query(
        "SELECT key, CAST(TOTAL(cost + wasted) AS INTEGER) FROM r \
         WHERE key IS NOT NULL GROUP BY key",
    ))?;
    let by_key = stmt
        .query_map(p, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT session, CAST(TOTAL(cost_nanos + wasted_nanos) AS INTEGER) FROM requests \
         WHERE ts_ms >= ?1 AND session IS NOT NULL GROUP BY session",
    )?;
    let by_session = stmt
        .query_map(params![since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Spend {
        total,
        by_key,
        by_session,
    })
}

/// A count as SQLite stores it: saturated, never wrapped negative.
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sqlite(path: &Path, source: rusqlite::Error) -> LedgerError {
    LedgerError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

fn open_rw(path: &Path) -> Result<Connection, LedgerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| LedgerError::Io {
            path: path.display().to_string(),
            message: format!("cannot create {}: {e}", dir.display()),
        })?;
    }
    let conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|_| conn.busy_timeout(Duration::from_secs(5)))
        .map_err(|e| sqlite(path, e))?;
    schema::migrate(&conn).map_err(|e| sqlite(path, e))?;
    Ok(conn)
}

fn open_ro(path: &Path) -> Result<Connection, LedgerError> {
    if !path.exists() {
        return Err(LedgerError::Io {
            path: path.display().to_string(),
            message: "no ledger file (has the gateway run with this config?)".into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| sqlite(path, e))?;
    Ok(conn)
}

/// How often the writer folds ended hours and deletes rows past retention.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);

fn write_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    (period, retention): (Duration, Option<Duration>),
    flushed: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    path: String,
) {
    let period = period.max(Duration::from_millis(1));
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    let mut maintained: Option<std::time::Instant> = None;
    loop {
        if maintained.is_none_or(|t| t.elapsed() >= MAINTAIN_EVERY) {
            maintained = Some(std::time::Instant::now());
            maintain(&mut conn, time::now_ms(), retention, &path);
        }
        let stop = closing.load(Ordering::SeqCst);
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Row(row) => batch.push(*row),
                Msg::Flush(ack) => waiting.push(ack),
            }
        }
        if !batch.is_empty() {
            match write_batch(&mut conn, &batch) {
                Ok(()) => {
                    let total = flushed.fetch_add(batch.len() as u64, Ordering::SeqCst)
                        + batch.len() as u64;
                    tracing::debug!(rows = batch.len(), total, "ledger flushed");
                }
                Err(e) => {
                    tracing::error!(ledger = %path, rows = batch.len(), "ledger write failed, rows lost: {e}")
                }
            }
            batch.clear();
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
        std::thread::sleep(period);
    }
}

/// Fold the hours that ended; delete rows past retention.
fn maintain(conn: &mut Connection, now_ms: i64, retention: Option<Duration>, path: &str) {
    match rollup::fold(conn, now_ms) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rollup_rows = n, "ledger hours folded"),
        Err(e) => tracing::error!(ledger = %path, "ledger rollup failed: {e}"),
    }
    if let Some(before) = rollup::cutoff(now_ms, retention) {
        match rollup::prune(conn, before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "ledger rows past retention deleted"),
            Err(e) => tracing::error!(ledger = %path, "ledger retention failed: {e}"),
        }
    }
}

/// Rows written for hours already folded go into the rollups too (one
/// rollup row each: reports sum them).
fn late_rows(
    tx: &rusqlite::Transaction<'_>,
    rows: &[RequestRow],
    folded_until: i64,
) -> rusqlite::Result<()> {
    for r in rows.iter().filter(|r| r.ts_ms < folded_until) {
        let hour = r.ts_ms.div_euclid(rollup::HOUR_MS) * rollup::HOUR_MS;
        tx.prepare_cached(
            "INSERT INTO rollups (hour_ms, endpoint, tier, model, key, requests, free_served, fallbacks, \
             prompt_tokens, completion_tokens, cost_nanos, wasted_nanos, savings_nanos) \
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            hour,
            r.endpoint,
            r.tier,
            r.model,
            r.key,
            r.free && r.tier.is_some(),
            r.fallback,
            clamp_i64(r.prompt_tokens),
            clamp_i64(r.completion_tokens),
            r.cost_nanos,
            r.wasted_nanos,
            r.savings_nanos,
        ])?;
        for a in &r.attempts {
            tx.prepare_cached(
                "INSERT INTO attempt_rollups (hour_ms, tier, model, attempts, failures) \
                 VALUES (?1, ?2, ?3, 1, ?4)",
            )?
            .execute(params![hour, a.tier, a.model, a.outcome != "success"])?;
        }
    }
    Ok(())
}

fn write_batch(conn: &mut Connection, rows: &[RequestRow]) -> rusqlite::Result<()> {
    let folded = rollup::folded_until(conn)?.unwrap_or(i64::MIN);
    let tx = conn.transaction()?;
    // rows for hours already folded count in the rollups too
    if rows.iter().any(|r| r.ts_ms < folded) {
        late_rows(&tx, rows, folded)?;
    }
    {
        let mut req = tx.prepare_cached(
            "INSERT INTO requests (id, ts_ms, task, key, session, chain, first_tier, tier, model, free, fallback, \
             escalated, status, stream, prompt_tokens, completion_tokens, cost_nanos, savings_nanos, wasted_nanos, latency_ms, endpoint) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?;
        let mut att = tx.prepare_cached(
            "INSERT INTO attempts (request_id, ts_ms, tier, model, attempt, outcome, status, elapsed_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for r in rows {
            req.execute(params![
                r.id,
                r.ts_ms,
                r.task,
                r.key,
                r.session,
                r.chain,
                r.first_tier,
                r.tier,
                r.model,
                r.free,
                r.fallback,
                r.escalated,
                r.status,
                r.stream,
                clamp_i64(r.prompt_tokens),
                clamp_i64(r.completion_tokens),
                r.cost_nanos,
                r.savings_nanos,
                r.wasted_nanos,
                clamp_i64(r.latency_ms),
                r.endpoint,
            ])?;
            for a in &r.attempts {
                att.execute(params![
                    r.id,
                    r.ts_ms,
                    a.tier,
                    a.model,
                    a.attempt,
                    a.outcome,
                    a.status,
                    clamp_i64(a.elapsed_ms)
                ])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests;
