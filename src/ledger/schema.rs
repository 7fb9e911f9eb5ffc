//! Versioned migrations, one list per store. Append, never edit.

use super::db::{Db, DbError, Dialect, Val};

/// SQLite: versions in `PRAGMA user_version`.
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

/// PostgreSQL: today's schema at once (there were no earlier releases on
/// it); versions in `ledger_schema`. Booleans are BOOLEAN, counts INTEGER,
/// times, tokens and money BIGINT.
const PG_MIGRATIONS: &[&str] = &["CREATE TABLE requests (
        id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        task TEXT,
        key TEXT,
        session TEXT,
        chain TEXT NOT NULL,
        first_tier TEXT,
        tier TEXT,
        model TEXT,
        free BOOLEAN NOT NULL,
        fallback BOOLEAN NOT NULL,
        escalated BOOLEAN NOT NULL,
        status INTEGER NOT NULL,
        stream BOOLEAN NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL,
        savings_nanos BIGINT NOT NULL,
        wasted_nanos BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL,
        endpoint TEXT NOT NULL DEFAULT 'chat'
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE TABLE attempts (
        request_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        status INTEGER,
        elapsed_ms BIGINT NOT NULL
    );
    CREATE INDEX attempts_ts ON attempts (ts_ms);
    CREATE TABLE rollups (
        hour_ms BIGINT NOT NULL,
        endpoint TEXT NOT NULL,
        tier TEXT,
        model TEXT,
        key TEXT,
        requests BIGINT NOT NULL,
        free_served BIGINT NOT NULL,
        fallbacks BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL,
        wasted_nanos BIGINT NOT NULL,
        savings_nanos BIGINT NOT NULL
    );
    CREATE INDEX rollups_hour ON rollups (hour_ms);
    CREATE TABLE attempt_rollups (
        hour_ms BIGINT NOT NULL,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        failures BIGINT NOT NULL
    );
    CREATE INDEX attempt_rollups_hour ON attempt_rollups (hour_ms);
    CREATE TABLE rollup_state (folded_until_ms BIGINT NOT NULL, pruned_until_ms BIGINT NOT NULL);
    INSERT INTO rollup_state VALUES (0, 0)"];

/// Any key, the same in every replica: replicas starting together migrate
/// one at a time.
const PG_MIGRATION_LOCK: i64 = 0x0063_6173_6361_6465; // "cascade"

pub fn migrate(db: &mut dyn Db) -> Result<(), DbError> {
    match db.dialect() {
        Dialect::Sqlite => {
            let version = db.one("PRAGMA user_version", &[])?.int();
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
                db.batch(&format!(
                    "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                    i + 1
                ))?;
            }
            Ok(())
        }
        Dialect::Postgres => super::db::transaction(db, |db| {
            db.run(
                "SELECT pg_advisory_xact_lock(?1)",
                &[Val::Int(PG_MIGRATION_LOCK)],
            )?;
            db.batch("CREATE TABLE IF NOT EXISTS ledger_schema (version BIGINT NOT NULL)")?;
            let version = match db.one("SELECT MAX(version) FROM ledger_schema", &[])? {
                super::db::Cell::Int(v) => v,
                _ => 0,
            };
            for (i, sql) in PG_MIGRATIONS
                .iter()
                .enumerate()
                .skip(version.max(0) as usize)
            {
                db.batch(sql)?;
                db.run(
                    "INSERT INTO ledger_schema (version) VALUES (?1)",
                    &[Val::Int(i as i64 + 1)],
                )?;
            }
            Ok(())
        }),
    }
}
