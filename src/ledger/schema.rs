//! Versioned migrations (PRAGMA user_version). Append, never edit.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the first release
    "CREATE TABLE requests (
        id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        task TEXT,
        key TEXT,
        session TEXT,
        chain TEXT NOT NULL,
        first_tier TEXT,
        tier TEXT,
        model TEXT,
        free INTEGER NOT NULL,
        fallback INTEGER NOT NULL,
        escalated INTEGER NOT NULL,
        status INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        savings_nanos INTEGER NOT NULL,
        wasted_nanos INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE TABLE attempts (
        request_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        status INTEGER,
        elapsed_ms INTEGER NOT NULL
    );
    CREATE INDEX attempts_ts ON attempts (ts_ms);",
    // 2: the client API of each request; rows from before were all chat
    "ALTER TABLE requests ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat'",
    // 3: hourly rollups (see rollup.rs); nothing folded yet: from the first row's hour
    "CREATE TABLE rollups (
        hour_ms INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        tier TEXT,
        model TEXT,
        key TEXT,
        requests INTEGER NOT NULL,
        free_served INTEGER NOT NULL,
        fallbacks INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        wasted_nanos INTEGER NOT NULL,
        savings_nanos INTEGER NOT NULL
    );
    CREATE INDEX rollups_hour ON rollups (hour_ms);
    CREATE TABLE attempt_rollups (
        hour_ms INTEGER NOT NULL,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        failures INTEGER NOT NULL
    );
    CREATE INDEX attempt_rollups_hour ON attempt_rollups (hour_ms);
    CREATE TABLE rollup_state (folded_until_ms INTEGER NOT NULL, pruned_until_ms INTEGER NOT NULL);
    INSERT INTO rollup_state SELECT COALESCE(MIN(ts_ms) / 3600000 * 3600000, 0), 0 FROM requests",
];

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
