//! The durable ledger: every finished request, with its attempts, in
//! SQLite (one process) or PostgreSQL (replicas sharing one ledger). Rows go
//! through a bounded channel to a batching writer thread, so a request never
//! waits on the store; a full channel drops the row, counts it in
//! cascade_ledger_dropped_total and logs. Each batch is one transaction of
//! multi-row inserts, so a kill -9 loses at most the rows of the last flush
//! interval. A store that is away (PostgreSQL restarting, a full disk) keeps
//! the rows waiting, up to the bound, and the writer retries.

mod db;
mod report;
mod rollup;
mod schema;
pub mod time;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntCounter;
use r2d2_postgres::{postgres::NoTls, r2d2, PostgresConnectionManager};
use tokio::sync::mpsc;

pub use crate::config::LedgerStore;
use db::{off_runtime, Db, DbError, Postgres, Sqlite, Val};
pub use report::{render_table, Report, Window};
#[cfg(test)]
use writer::write_batch;
use writer::{Writer, QUEUE};

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
    #[error("ledger {at}: {source}")]
    Store { at: String, source: DbError },
    #[error("ledger {at}: {message}")]
    Io { at: String, message: String },
}

/// What the writer receives: rows, or a request to write what it has now.
enum Msg {
    Row(Box<RequestRow>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where reads go: a SQLite file opened per read, or a pool.
enum Reader {
    Sqlite(PathBuf),
    Postgres(r2d2::Pool<PostgresConnectionManager<NoTls>>),
}

impl Reader {
    fn new(store: &LedgerStore) -> Result<Reader, DbError> {
        Ok(match store {
            LedgerStore::Sqlite(path) => Reader::Sqlite(path.clone()),
            LedgerStore::Postgres { url, pool_size } => {
                let manager = PostgresConnectionManager::new(db::pg_config(url)?, NoTls);
                Reader::Postgres(
                    r2d2::Pool::builder()
                        .max_size(u32::try_from(*pool_size).unwrap_or(u32::MAX))
                        .min_idle(Some(0))
                        .connection_timeout(Duration::from_secs(5))
                        .build_unchecked(manager),
                )
            }
        })
    }

    /// Run `f` on a connection (never on an async runtime thread).
    fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        off_runtime(|| match self {
            Reader::Sqlite(path) => {
                if !path.exists() {
                    return Err(DbError::Missing);
                }
                f(&mut Sqlite::open(path, true)?)
            }
            Reader::Postgres(pool) => f(&mut Postgres::new(pool.get()?)),
        })
    }
}

/// What logs and errors call a store (never with credentials).
pub fn label(store: &LedgerStore) -> String {
    match store {
        LedgerStore::Sqlite(path) => path.display().to_string(),
        LedgerStore::Postgres { url, .. } => db::pg_label(url),
    }
}

/// Open a store for writing, creating or migrating its schema.
fn open_rw(store: &LedgerStore) -> Result<Box<dyn Db>, DbError> {
    let mut db: Box<dyn Db> = match store {
        LedgerStore::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DbError::Other(format!("cannot create {}: {e}", dir.display())))?;
            }
            Box::new(Sqlite::open(path, false)?)
        }
        LedgerStore::Postgres { url, .. } => {
            let client = off_runtime(|| db::pg_config(url)?.connect(NoTls).map_err(DbError::from))?;
            Box::new(Postgres::new(Box::new(client)))
        }
    };
    off_runtime(|| schema::migrate(db.as_mut()))?;
    Ok(db)
}

/// The handle requests use. Cheap to share; `record` never blocks.
pub struct Ledger {
    at: String,
    backend: &'static str,
    reader: Reader,
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
    flushed: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Ledger {
    /// Open (creating and migrating) the store and start the writer.
    /// `retention`: rows older than that are deleted (their hours stay in
    /// the rollups); None keeps them forever. A PostgreSQL server that
    /// cannot be reached now is an error (budgets start from its rows).
    pub fn open(
        store: &LedgerStore,
        (flush_interval, retention): (Duration, Option<Duration>),
        dropped: IntCounter,
    ) -> Result<Ledger, LedgerError> {
        let at = label(store);
        let fail = |source| LedgerError::Store {
            at: at.clone(),
            source,
        };
        let conn = open_rw(store).map_err(fail)?;
        let reader = Reader::new(store).map_err(fail)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let flushed = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            store: store.clone(),
            db: Some(conn),
            at: at.clone(),
            retention,
            away: None,
        };
        let writer = {
            let flushed = Arc::clone(&flushed);
            let closing = Arc::clone(&closing);
            std::thread::Builder::new()
                .name("cascade-ledger".into())
                .spawn(move || writer.run(rx, flush_interval, flushed, closing))
                .map_err(|e| LedgerError::Io {
                    at: at.clone(),
                    message: format!("cannot start the writer: {e}"),
                })?
        };
        Ok(Ledger {
            at,
            backend: match store {
                LedgerStore::Sqlite(_) => "sqlite",
                LedgerStore::Postgres { .. } => "postgres",
            },
            reader,
            tx,
            dropped,
            flushed,
            closing,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Where the ledger is: a file path, or a PostgreSQL URL without
    /// credentials.
    pub fn location(&self) -> &str {
        &self.at
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.backend
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

    fn error(&self, source: DbError) -> LedgerError {
        LedgerError::Store {
            at: self.at.clone(),
            source,
        }
    }

    /// Spend since `since_ms` (cost plus wasted), in nano-dollars, in total
    /// and by key and by session: what budgets start from.
    pub fn spend_since(&self, since_ms: i64) -> Result<Spend, LedgerError> {
        self.reader
            .read(|db| spend_since(db, since_ms))
            .map_err(|e| self.error(e))
    }

    /// The cost report for a window.
    pub fn report(&self, window: Window, now_ms: i64) -> Result<Report, LedgerError> {
        self.reader
            .read(|db| report::build(db, window, now_ms))
            .map_err(|e| self.error(e))
    }
}

/// Fold every ended hour and delete every row past `retention` now, in
/// one go (what the writer does a little at a time): for a ledger filled
/// in bulk (bench/ledger_fill.rs). Returns (rollup rows made, rows deleted).
pub fn compact(
    store: &LedgerStore,
    now_ms: i64,
    retention: Option<Duration>,
) -> Result<(usize, usize), LedgerError> {
    let fail = |source| LedgerError::Store {
        at: label(store),
        source,
    };
    let mut db = open_rw(store).map_err(fail)?;
    off_runtime(|| {
        let folded = rollup::fold(db.as_mut(), now_ms)?;
        let mut deleted = 0;
        if let Some(before) = rollup::cutoff(now_ms, retention) {
            loop {
                let n = rollup::prune(db.as_mut(), before)?;
                deleted += n;
                if n == 0 {
                    break;
                }
            }
        }
        Ok((folded, deleted))
    })
    .map_err(fail)
}

/// The cost report from a ledger (used by `cascade report` too).
pub fn report_at(store: &LedgerStore, window: Window, now_ms: i64) -> Result<Report, LedgerError> {
    let fail = |source| LedgerError::Store {
        at: label(store),
        source,
    };
    let reader = Reader::new(store).map_err(fail)?;
    reader
        .read(|db| report::build(db, window, now_ms))
        .map_err(fail)
}

#[derive(Debug, Default)]
pub struct Spend {
    pub total: i64,
    pub by_key: Vec<(String, i64)>,
    pub by_session: Vec<(String, i64)>,
}

fn spend_since(db: &mut dyn Db, since_ms: i64) -> Result<Spend, DbError> {
    let d = db.dialect();
    // rollups for folded whole hours, rows for the rest (sessions: rows only,
    // within retention)
    let src = rollup::Sources::new(db, since_ms)?;
    let spent = d.sum("cost + wasted");
    let total = src
        .rows(db, &format!("SELECT {spent} FROM r"))?
        .first()
        .map_or(0, |row| row[0].int());
    let by_key = src
        .rows(
            db,
            &format!("SELECT key, {spent} FROM r WHERE key IS NOT NULL GROUP BY key"),
        )?
        .into_iter()
        .map(|row| (row[0].string(), row[1].int()))
        .collect();
    let by_session = db
        .rows(
            &format!(
                "SELECT session, {} FROM requests WHERE ts_ms >= ?1 AND session IS NOT NULL \
                 GROUP BY session",
                d.sum("cost_nanos + wasted_nanos")
            ),
            &[Val::Int(since_ms)],
        )?
        .into_iter()
        .map(|row| (row[0].string(), row[1].int()))
        .collect();
    Ok(Spend {
        total,
        by_key,
        by_session,
    })
}

#[cfg(test)]
mod tests;
