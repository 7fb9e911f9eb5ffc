//! The writer thread: rows from the channel written in batches (many rows
//! per INSERT), hours folded and old rows deleted every so often, and a
//! store that goes away kept at bay (rows held, bounded, retried).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::db::{transaction, Db, DbError, Dialect, Val};
use super::{open_rw, rollup, time, AttemptRow, LedgerStore, Msg, RequestRow};

/// How many rows may wait in the channel, and again in the writer's hand
/// while the store is away.
pub(super) const QUEUE: usize = 16_384;
/// Rows per INSERT statement.
const ROWS_PER_INSERT: usize = 100;
/// Between attempts to reach a store that is away.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A count as SQLite stores it: saturated, never wrapped negative.
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How often the writer folds ended hours and deletes rows past retention.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);

/// The writer thread's side: its own connection, re-made when the store
/// comes back.
pub(super) struct Writer {
    pub(super) store: LedgerStore,
    /// None while the store is away.
    pub(super) db: Option<Box<dyn Db>>,
    pub(super) at: String,
    pub(super) retention: Option<Duration>,
    /// Since when the store is away, and when to try it again.
    pub(super) away: Option<(Instant, Instant)>,
}

impl Writer {
    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        period: Duration,
        flushed: Arc<AtomicU64>,
        closing: Arc<AtomicBool>,
    ) {
        let period = period.max(Duration::from_millis(1));
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let mut maintained: Option<Instant> = None;
        loop {
            let stop = closing.load(Ordering::SeqCst);
            // rows wait here, up to the bound, while the store is away;
            // beyond it the channel fills and `record` drops (and counts)
            while batch.len() < QUEUE {
                match rx.try_recv() {
                    Ok(Msg::Row(row)) => batch.push(*row),
                    Ok(Msg::Flush(ack)) => waiting.push(ack),
                    Err(_) => break,
                }
            }
            self.reconnect(stop);
            if self.db.is_some() && maintained.is_none_or(|t| t.elapsed() >= MAINTAIN_EVERY) {
                maintained = Some(Instant::now());
                self.maintain(time::now_ms());
            }
            if !batch.is_empty() {
                if let Some(n) = self.write(&batch) {
                    let total = flushed.fetch_add(n, Ordering::SeqCst) + n;
                    tracing::debug!(rows = n, total, "ledger flushed");
                    batch.clear();
                }
            }
            for ack in waiting.drain(..) {
                let _ = ack.send(());
            }
            if stop {
                if !batch.is_empty() {
                    tracing::error!(ledger = %self.at, rows = batch.len(), "ledger unreachable at shutdown: rows lost");
                }
                return;
            }
            std::thread::sleep(period);
        }
    }

    /// Try the store again when it is away and it is time (or now, when
    /// stopping).
    fn reconnect(&mut self, now_anyway: bool) {
        let Some((since, next)) = self.away else {
            return;
        };
        if self.db.is_some() || (!now_anyway && Instant::now() < next) {
            return;
        }
        match open_rw(&self.store) {
            Ok(db) => {
                self.db = Some(db);
                tracing::info!(ledger = %self.at, away_s = since.elapsed().as_secs(), "ledger reachable again");
            }
            Err(e) => {
                tracing::debug!(ledger = %self.at, "ledger still unreachable: {e}");
                self.away = Some((since, Instant::now() + RECONNECT_EVERY));
            }
        }
    }

    /// Write a batch; the rows written, or None when they must wait.
    fn write(&mut self, batch: &[RequestRow]) -> Option<u64> {
        let db = self.db.as_mut()?;
        match write_batch(db.as_mut(), batch) {
            Ok(()) => {
                self.away = None;
                Some(batch.len() as u64)
            }
            Err(e) if e.transient() => {
                self.went_away(&e, batch.len());
                None
            }
            Err(e) => {
                tracing::error!(ledger = %self.at, rows = batch.len(), "ledger write failed, rows lost: {e}");
                Some(0)
            }
        }
    }

    /// The store stopped answering: log once per outage; a PostgreSQL
    /// connection is made anew (a SQLite file is kept and retried).
    fn went_away(&mut self, e: &DbError, rows: usize) {
        if self.away.is_none() {
            tracing::warn!(ledger = %self.at, rows, bound = 2 * QUEUE, "ledger unreachable, rows wait and are retried: {e}");
            let now = Instant::now();
            self.away = Some((now, now + RECONNECT_EVERY));
        }
        if self
            .db
            .as_ref()
            .is_some_and(|db| db.dialect() == Dialect::Postgres)
        {
            self.db = None;
        }
    }

    /// Fold the hours that ended; delete rows past retention.
    fn maintain(&mut self, now_ms: i64) {
        let Some(db) = self.db.as_mut() else {
            return;
        };
        match rollup::fold(db.as_mut(), now_ms) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rollup_rows = n, "ledger hours folded"),
            Err(e) => tracing::error!(ledger = %self.at, "ledger rollup failed: {e}"),
        }
        if let Some(before) = rollup::cutoff(now_ms, self.retention) {
            match rollup::prune(db.as_mut(), before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "ledger rows past retention deleted"),
                Err(e) => tracing::error!(ledger = %self.at, "ledger retention failed: {e}"),
            }
        }
    }
}

/// `INSERT INTO table (columns) VALUES (?1, ...), (...)` for `rows` rows.
fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns.len() {
            n += 1;
            sql.push_str(&format!("{}?{n}", if c == 0 { "" } else { ", " }));
        }
        sql.push(')');
    }
    sql
}

/// Insert `items`, many per statement, each as the values `values` makes.
fn insert_all<T>(
    db: &mut dyn Db,
    (table, columns): (&str, &[&str]),
    items: &[T],
    values: impl for<'a> Fn(&'a T, &mut Vec<Val<'a>>),
) -> Result<(), DbError> {
    for chunk in items.chunks(ROWS_PER_INSERT) {
        let mut params = Vec::with_capacity(chunk.len() * columns.len());
        for item in chunk {
            values(item, &mut params);
        }
        db.run(&insert_sql(table, columns, chunk.len()), &params)?;
    }
    Ok(())
}

const REQUEST_COLUMNS: &[&str] = &[
    "id",
    "ts_ms",
    "task",
    "key",
    "session",
    "chain",
    "first_tier",
    "tier",
    "model",
    "free",
    "fallback",
    "escalated",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "savings_nanos",
    "wasted_nanos",
    "latency_ms",
    "endpoint",
];
const ATTEMPT_COLUMNS: &[&str] = &[
    "request_id",
    "ts_ms",
    "tier",
    "model",
    "attempt",
    "outcome",
    "status",
    "elapsed_ms",
];
const ROLLUP_COLUMNS: &[&str] = &[
    "hour_ms",
    "endpoint",
    "tier",
    "model",
    "key",
    "requests",
    "free_served",
    "fallbacks",
    "prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "wasted_nanos",
    "savings_nanos",
];
const ATTEMPT_ROLLUP_COLUMNS: &[&str] = &["hour_ms", "tier", "model", "attempts", "failures"];

fn text(s: &Option<String>) -> Val<'_> {
    Val::Text(s.as_deref())
}

pub(super) fn write_batch(db: &mut dyn Db, rows: &[RequestRow]) -> Result<(), DbError> {
    let attempts: Vec<(&RequestRow, &AttemptRow)> = rows
        .iter()
        .flat_map(|r| r.attempts.iter().map(move |a| (r, a)))
        .collect();
    transaction(db, |db| {
        // rows for hours already folded count in the rollups too (under a
        // shared lock: a fold by another replica waits for this batch)
        let folded = rollup::folded_until(db, Some(false))?.unwrap_or(i64::MIN);
        let late: Vec<&RequestRow> = rows.iter().filter(|r| r.ts_ms < folded).collect();
        let hour = |ts: i64| ts.div_euclid(rollup::HOUR_MS) * rollup::HOUR_MS;
        insert_all(db, ("rollups", ROLLUP_COLUMNS), &late, |r, p| {
            p.extend([
                Val::Int(hour(r.ts_ms)),
                Val::Text(Some(r.endpoint)),
                text(&r.tier),
                text(&r.model),
                text(&r.key),
                Val::Int(1),
                Val::Int(i64::from(r.free && r.tier.is_some())),
                Val::Int(i64::from(r.fallback)),
                Val::Int(clamp_i64(r.prompt_tokens)),
                Val::Int(clamp_i64(r.completion_tokens)),
                Val::Int(r.cost_nanos),
                Val::Int(r.wasted_nanos),
                Val::Int(r.savings_nanos),
            ])
        })?;
        let late_attempts: Vec<&(&RequestRow, &AttemptRow)> =
            attempts.iter().filter(|(r, _)| r.ts_ms < folded).collect();
        insert_all(
            db,
            ("attempt_rollups", ATTEMPT_ROLLUP_COLUMNS),
            &late_attempts,
            |(r, a), p| {
                p.extend([
                    Val::Int(hour(r.ts_ms)),
                    Val::Text(Some(&a.tier)),
                    Val::Text(Some(&a.model)),
                    Val::Int(1),
                    Val::Int(i64::from(a.outcome != "success")),
                ])
            },
        )?;
        insert_all(db, ("requests", REQUEST_COLUMNS), rows, |r, p| {
            p.extend([
                Val::Text(Some(&r.id)),
                Val::Int(r.ts_ms),
                text(&r.task),
                text(&r.key),
                text(&r.session),
                Val::Text(Some(&r.chain)),
                text(&r.first_tier),
                text(&r.tier),
                text(&r.model),
                Val::Bool(r.free),
                Val::Bool(r.fallback),
                Val::Bool(r.escalated),
                Val::Int(r.status.into()),
                Val::Bool(r.stream),
                Val::Int(clamp_i64(r.prompt_tokens)),
                Val::Int(clamp_i64(r.completion_tokens)),
                Val::Int(r.cost_nanos),
                Val::Int(r.savings_nanos),
                Val::Int(r.wasted_nanos),
                Val::Int(clamp_i64(r.latency_ms)),
                Val::Text(Some(r.endpoint)),
            ])
        })?;
        insert_all(db, ("attempts", ATTEMPT_COLUMNS), &attempts, |(r, a), p| {
            p.extend([
                Val::Text(Some(&r.id)),
                Val::Int(r.ts_ms),
                Val::Text(Some(&a.tier)),
                Val::Text(Some(&a.model)),
                Val::Int(a.attempt.into()),
                Val::Text(Some(a.outcome)),
                match a.status {
                    Some(s) => Val::Int(s.into()),
                    None => Val::Null,
                },
                Val::Int(clamp_i64(a.elapsed_ms)),
            ])
        })
    })
}
