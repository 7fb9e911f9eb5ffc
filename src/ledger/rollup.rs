//! Hourly rollups and retention. Each hour, once it has ended (and a minute
//! more, for rows still in the writer's queue), is folded into `rollups`
//! (per endpoint, tier, model and key) and `attempt_rollups` (per tier and
//! model); `rollup_state` says up to where. A row that arrives for an hour
//! already folded is added to the rollups as it is written (the writer does
//! that, `late_rows`). Reports read the
//! rollups for the whole folded hours of their window and rows for the rest
//! (`Sources`), so every figure stays exact however old the rows are. Rows
//! older than `retention_days` are deleted in small batches, only from
//! folded hours: their hours live on in the rollups.

use super::db::{ints, one_if, transaction, Cell, Db, DbError, Dialect};

pub const HOUR_MS: i64 = 3_600_000;
/// An hour is folded this long after it ended (rows may still be queued).
const FOLD_DELAY_MS: i64 = 60_000;
/// Rows deleted per statement, and statements per maintenance pass.
const PRUNE_BATCH: i64 = 5_000;
const PRUNE_ROUNDS: usize = 20;

/// Up to where (exclusive, an hour boundary) rows are folded; None for a
/// SQLite ledger written before rollups existed (read, not migrated, by
/// `cascade report`). `lock`: inside a transaction, the row lock to take
/// (see `Dialect::lock`).
pub fn folded_until(db: &mut dyn Db, lock: Option<bool>) -> Result<Option<i64>, DbError> {
    if db.dialect() == Dialect::Sqlite {
        let has = db
            .one(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'rollup_state'",
                &[],
            )?
            .int();
        if has == 0 {
            return Ok(None);
        }
    }
    let lock = lock.map_or("", |exclusive| db.dialect().lock(exclusive));
    Ok(
        match db.one(
            &format!("SELECT folded_until_ms FROM rollup_state{lock}"),
            &[],
        )? {
            Cell::Int(v) => Some(v),
            _ => None,
        },
    )
}

/// Fold every hour that ended at least a minute before `now_ms` and is not
/// folded yet. Returns the rows folded. Replicas sharing a store fold one
/// at a time (the state row is locked), each hour once.
pub fn fold(db: &mut dyn Db, now_ms: i64) -> Result<usize, DbError> {
    let upto = (now_ms - FOLD_DELAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    match folded_until(db, None)? {
        Some(from) if from < upto => {}
        _ => return Ok(0),
    }
    transaction(db, |db| {
        let Some(from) = folded_until(db, Some(true))?.filter(|f| *f < upto) else {
            return Ok(0); // another replica folded meanwhile
        };
        let p = ints(&[from, upto]);
        let d = db.dialect();
        let n = db.run(
            &format!(
                "INSERT INTO rollups (hour_ms, endpoint, tier, model, key, requests, free_served, fallbacks, \
                 prompt_tokens, completion_tokens, cost_nanos, wasted_nanos, savings_nanos) \
                 SELECT (ts_ms / 3600000) * 3600000 AS h, endpoint, tier, model, key, COUNT(*), {}, {}, \
                 {}, {}, {}, {}, {} \
                 FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY h, endpoint, tier, model, key",
                d.sum(&one_if("free AND tier IS NOT NULL")),
                d.sum(&one_if("fallback")),
                d.sum("prompt_tokens"),
                d.sum("completion_tokens"),
                d.sum("cost_nanos"),
                d.sum("wasted_nanos"),
                d.sum("savings_nanos"),
            ),
            &p,
        )?;
        db.run(
            &format!(
                "INSERT INTO attempt_rollups (hour_ms, tier, model, attempts, failures) \
                 SELECT (ts_ms / 3600000) * 3600000 AS h, tier, model, COUNT(*), {} \
                 FROM attempts WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY h, tier, model",
                d.sum(&one_if("outcome <> 'success'"))
            ),
            &p,
        )?;
        db.run(
            "UPDATE rollup_state SET folded_until_ms = ?1",
            &ints(&[upto]),
        )?;
        Ok(n as usize)
    })
}

/// Where retention cuts: rows before this are past it (None: kept forever).
pub fn cutoff(now_ms: i64, retention: Option<std::time::Duration>) -> Option<i64> {
    retention.map(|keep| now_ms - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// Delete rows older than `before_ms` (never from hours not folded yet), a
/// batch at a time. Returns the rows deleted.
pub fn prune(db: &mut dyn Db, before_ms: i64) -> Result<usize, DbError> {
    let Some(folded) = folded_until(db, None)? else {
        return Ok(0);
    };
    let before = before_ms.min(folded);
    db.run(
        "UPDATE rollup_state SET pruned_until_ms = ?1 WHERE pruned_until_ms < ?1",
        &ints(&[before]),
    )?;
    let mut deleted = 0;
    for table in ["requests", "attempts"] {
        let sql = db.dialect().delete_batch(table);
        for _ in 0..PRUNE_ROUNDS {
            let n = db.run(&sql, &ints(&[before, PRUNE_BATCH]))? as usize;
            deleted += n;
            if (n as i64) < PRUNE_BATCH {
                break;
            }
        }
    }
    Ok(deleted)
}

/// What a report over `[since, now)` reads: the CTEs `r` (requests) and
/// `a` (attempts), rollups for the whole folded hours in the window, rows
/// for the rest; bound to `?1` (since), `?2`, `?3` (the folded whole hours).
pub struct Sources {
    pub sql: String,
    pub params: [i64; 3],
}

impl Sources {
    pub fn new(db: &mut dyn Db, since: i64) -> Result<Sources, DbError> {
        // a SQLite ledger the gateway has not migrated yet (read by `cascade
        // report`) has no endpoint column: its rows were all chat
        let has_endpoint = db.dialect() == Dialect::Postgres
            || db
                .one(
                    "SELECT COUNT(*) FROM pragma_table_info('requests') WHERE name = 'endpoint'",
                    &[],
                )?
                .int()
                > 0;
        let endpoint = if has_endpoint { "endpoint" } else { "'chat'" };
        let folded = folded_until(db, None)?;
        let pruned = if folded.is_some() {
            db.one("SELECT pruned_until_ms FROM rollup_state", &[])?
                .int()
        } else {
            0
        };
        // a window starting where rows were deleted reads its first hour whole
        // from the rollups (its rows are gone)
        let hour = since.div_euclid(HOUR_MS) * HOUR_MS;
        let first_whole = if since < pruned || since == hour {
            hour
        } else {
            hour + HOUR_MS
        };
        let (lo, hi) = match folded {
            Some(f) if f > first_whole => (first_whole, f),
            _ => (since, since),
        };
        let rolled = if folded.is_some() {
            "UNION ALL SELECT hour_ms, endpoint, tier, model, key, requests, free_served, fallbacks, \
             prompt_tokens, completion_tokens, cost_nanos, wasted_nanos, savings_nanos \
             FROM rollups WHERE hour_ms >= ?2 AND hour_ms < ?3"
        } else {
            ""
        };
        let rolled_attempts = if folded.is_some() {
            "UNION ALL SELECT tier, model, attempts, failures FROM attempt_rollups \
             WHERE hour_ms >= ?2 AND hour_ms < ?3"
        } else {
            ""
        };
        // two index ranges of rows (an OR would scan the table)
        let row = format!(
            "SELECT (ts_ms / 3600000) * 3600000, {endpoint}, tier, model, key, 1, \
             {}, {}, prompt_tokens, completion_tokens, cost_nanos, \
             wasted_nanos, savings_nanos FROM requests",
            one_if("free AND tier IS NOT NULL"),
            one_if("fallback"),
        );
        let attempt = format!(
            "SELECT tier, model, 1, {} FROM attempts",
            one_if("outcome <> 'success'")
        );
        let sql = format!(
            "WITH r (hour, endpoint, tier, model, key, requests, free_served, fallbacks, prompt, \
             completion, cost, wasted, savings) AS ( \
             {row} WHERE ts_ms >= ?1 AND ts_ms < ?2 UNION ALL {row} WHERE ts_ms >= ?3 AND ts_ms >= ?1 \
             {rolled}), \
             a (tier, model, attempts, failures) AS ( \
             {attempt} WHERE ts_ms >= ?1 AND ts_ms < ?2 UNION ALL {attempt} WHERE ts_ms >= ?3 AND ts_ms >= ?1 \
             {rolled_attempts}) "
        );
        Ok(Sources {
            sql,
            params: [since, lo, hi],
        })
    }

    /// `sql` prefixed with the CTEs.
    pub fn query(&self, sql: &str) -> String {
        format!("{}{sql}", self.sql)
    }

    /// Run a query over the sources.
    pub fn rows(&self, db: &mut dyn Db, sql: &str) -> Result<Vec<super::db::Row>, DbError> {
        db.rows(&self.query(sql), &ints(&self.params))
    }
}
