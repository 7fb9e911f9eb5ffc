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

use rusqlite::{params, Connection, OptionalExtension};

pub const HOUR_MS: i64 = 3_600_000;
/// An hour is folded this long after it ended (rows may still be queued).
const FOLD_DELAY_MS: i64 = 60_000;
/// Rows deleted per statement, and statements per maintenance pass.
const PRUNE_BATCH: i64 = 5_000;
const PRUNE_ROUNDS: usize = 20;

/// Up to where (exclusive, an hour boundary) rows are folded; None for a
/// ledger written before rollups existed (read, not migrated, by `cascade
/// report`).
pub fn folded_until(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'rollup_state'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    conn.query_row("SELECT folded_until_ms FROM rollup_state", [], |r| r.get(0))
        .optional()
}

/// Fold every hour that ended at least a minute before `now_ms` and is not
/// folded yet. Returns the rows folded.
pub fn fold(conn: &mut Connection, now_ms: i64) -> rusqlite::Result<usize> {
    let upto = (now_ms - FOLD_DELAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let Some(from) = folded_until(conn)? else {
        return Ok(0);
    };
    if from >= upto {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let n = tx.execute(
        "INSERT INTO rollups (hour_ms, endpoint, tier, model, key, requests, free_served, fallbacks, \
         prompt_tokens, completion_tokens, cost_nanos, wasted_nanos, savings_nanos) \
         SELECT (ts_ms / 3600000) * 3600000 AS h, endpoint, tier, model, key, COUNT(*), \
         CAST(TOTAL(free AND tier IS NOT NULL) AS INTEGER), CAST(TOTAL(fallback) AS INTEGER), \
         CAST(TOTAL(prompt_tokens) AS INTEGER), CAST(TOTAL(completion_tokens) AS INTEGER), \
         CAST(TOTAL(cost_nanos) AS INTEGER), CAST(TOTAL(wasted_nanos) AS INTEGER), \
         CAST(TOTAL(savings_nanos) AS INTEGER) \
         FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY h, endpoint, tier, model, key",
        params![from, upto],
    )?;
    tx.execute(
        "INSERT INTO attempt_rollups (hour_ms, tier, model, attempts, failures) \
         SELECT (ts_ms / 3600000) * 3600000 AS h, tier, model, COUNT(*), \
         CAST(TOTAL(outcome != 'success') AS INTEGER) \
         FROM attempts WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY h, tier, model",
        params![from, upto],
    )?;
    tx.execute(
        "UPDATE rollup_state SET folded_until_ms = ?1",
        params![upto],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Where retention cuts: rows before this are past it (None: kept forever).
pub fn cutoff(now_ms: i64, retention: Option<std::time::Duration>) -> Option<i64> {
    retention.map(|keep| now_ms - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// Delete rows older than `before_ms` (never from hours not folded yet), a
/// batch at a time. Returns the rows deleted.
pub fn prune(conn: &Connection, before_ms: i64) -> rusqlite::Result<usize> {
    let Some(folded) = folded_until(conn)? else {
        return Ok(0);
    };
    let before = before_ms.min(folded);
    conn.execute(
        "UPDATE rollup_state SET pruned_until_ms = MAX(pruned_until_ms, ?1)",
        params![before],
    )?;
    let mut deleted = 0;
    for table in ["requests", "attempts"] {
        for _ in 0..PRUNE_ROUNDS {
            let n = conn.execute(
                &format!(
                    "DELETE FROM {table} WHERE rowid IN \
                     (SELECT rowid FROM {table} WHERE ts_ms < ?1 LIMIT ?2)"
                ),
                params![before, PRUNE_BATCH],
            )?;
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
    pub fn new(conn: &Connection, since: i64) -> rusqlite::Result<Sources> {
        // a ledger the gateway has not migrated yet (read by `cascade report`)
        // has no endpoint column: its rows were all chat
        let has_endpoint: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('requests') WHERE name = 'endpoint'",
            [],
            |row| row.get(0),
        )?;
        let endpoint = if has_endpoint { "endpoint" } else { "'chat'" };
        let folded = folded_until(conn)?;
        let pruned: i64 = if folded.is_some() {
            conn.query_row("SELECT pruned_until_ms FROM rollup_state", [], |r| r.get(0))?
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
             (free AND tier IS NOT NULL), fallback, prompt_tokens, completion_tokens, cost_nanos, \
             wasted_nanos, savings_nanos FROM requests"
        );
        let attempt = "SELECT tier, model, 1, outcome != 'success' FROM attempts";
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
}
