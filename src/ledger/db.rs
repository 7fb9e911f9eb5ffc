//! The two stores a ledger can live in, behind one small interface: SQLite
//! (a file, one process) and PostgreSQL (shared by replicas). The SQL is
//! written once, in the subset both speak (`?N` parameters, `CASE` for
//! booleans, `CAST(COALESCE(SUM(..), 0) AS BIGINT)`); the PostgreSQL side
//! renumbers parameters. What differs (migrations, row locks, the physical
//! row id) asks `Dialect`.

use std::collections::HashMap;
use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The row lock a reader of `rollup_state` takes inside a transaction:
    /// `FOR UPDATE` to fold, `FOR SHARE` to write rows (so a fold and a
    /// write of rows for the hour it folds never interleave). SQLite has one
    /// writer per file and needs none.
    pub fn lock(self, exclusive: bool) -> &'static str {
        match (self, exclusive) {
            (Dialect::Sqlite, _) => "",
            (Dialect::Postgres, true) => " FOR UPDATE",
            (Dialect::Postgres, false) => " FOR SHARE",
        }
    }

    /// A sum that is 0 over no rows and an integer, saturated rather than
    /// an error whatever the rows hold (SQLite's TOTAL is a float; the
    /// PostgreSQL sum of BIGINTs is an exact NUMERIC, clamped).
    pub fn sum(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(TOTAL({expr}) AS INTEGER)"),
            Dialect::Postgres => format!(
                "CAST(LEAST(GREATEST(COALESCE(SUM({expr}), 0), -9223372036854775808), \
                 9223372036854775807) AS BIGINT)"
            ),
        }
    }

    /// Delete up to `?2` rows of `table` older than `?1`, found through its
    /// `ts_ms` index and deleted by physical row id. PostgreSQL plans
    /// `ctid IN (subquery)` as a join over the whole table; `= ANY(ARRAY(..))`
    /// is a TID scan of just the batch.
    pub fn delete_batch(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "DELETE FROM {table} WHERE rowid IN \
                 (SELECT rowid FROM {table} WHERE ts_ms < ?1 LIMIT ?2)"
            ),
            Dialect::Postgres => format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM {table} WHERE ts_ms < ?1 LIMIT ?2))"
            ),
        }
    }
}

/// 1 when `cond` holds, else 0 (booleans are 0/1 in SQLite, a type in
/// PostgreSQL).
pub fn one_if(cond: &str) -> String {
    format!("CASE WHEN {cond} THEN 1 ELSE 0 END")
}

/// A parameter.
#[derive(Clone, Copy, Debug)]
pub enum Val<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Text(Option<&'a str>),
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    /// The integer (0 for NULL).
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(v) => *v,
            Cell::Null | Cell::Text(_) => 0,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            Cell::Null | Cell::Int(_) => None,
        }
    }

    /// The text, or "" for NULL (grouping columns the query filters on).
    pub fn string(&self) -> String {
        self.text().unwrap_or_default().to_string()
    }
}

pub type Row = Vec<Cell>;

/// Integer parameters, as most queries take.
pub fn ints(values: &[i64]) -> Vec<Val<'static>> {
    values.iter().map(|v| Val::Int(*v)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Pool(#[from] r2d2_postgres::r2d2::Error),
    #[error("no ledger file (has the gateway run with this config?)")]
    Missing,
    #[error("{0}")]
    Other(String),
}

/// A PostgreSQL error with its cause (the driver's own text is terse:
/// "db error"); it never holds the connection URL.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match e.source() {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl DbError {
    /// The store is away (connection lost or refused, the server shutting
    /// down, a full disk) rather than the statement wrong: worth retrying.
    pub fn transient(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
            ),
            DbError::Sqlite(_) => false,
            DbError::Postgres(e) => match e.code() {
                None => true,
                // connection exceptions, insufficient resources, operator
                // intervention (shutdown), system errors
                Some(code) => ["08", "53", "57", "58"]
                    .iter()
                    .any(|class| code.code().starts_with(class)),
            },
            DbError::Pool(_) => true,
            DbError::Missing | DbError::Other(_) => false,
        }
    }
}

/// What the ledger asks of a store.
pub trait Db: Send {
    fn dialect(&self) -> Dialect;
    /// Run a statement; the rows it changed.
    fn run(&mut self, sql: &str, params: &[Val<'_>]) -> Result<u64, DbError>;
    fn rows(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError>;
    /// Statements without parameters (BEGIN, COMMIT, migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;

    /// The first row's first value.
    fn one(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Cell, DbError> {
        Ok(self
            .rows(sql, params)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Cell::Null))
    }
}

/// Run `f` in a transaction: committed when it returns Ok, rolled back
/// otherwise.
pub fn transaction<T>(
    db: &mut dyn Db,
    f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>,
) -> Result<T, DbError> {
    db.batch("BEGIN")?;
    match f(db) {
        Ok(v) => {
            db.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.batch("ROLLBACK");
            Err(e)
        }
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Val::Int(v) => ToSqlOutput::from(v),
            Val::Bool(v) => ToSqlOutput::from(v),
            Val::Text(Some(s)) => ToSqlOutput::from(s),
            Val::Text(None) | Val::Null => ToSqlOutput::from(rusqlite::types::Null),
        })
    }
}

impl ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            // the column decides the width (counts are INTEGER, sums BIGINT)
            Val::Int(v) if *ty == Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
            Val::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
            Val::Bool(v) => v.to_sql(ty, out),
            Val::Text(v) => v.to_sql(ty, out),
            Val::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <i32 as ToSql>::accepts(ty)
            || <i16 as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
            || <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// A SQLite file.
pub struct Sqlite(pub rusqlite::Connection);

impl Sqlite {
    pub fn open(path: &Path, read_only: bool) -> Result<Sqlite, DbError> {
        use rusqlite::OpenFlags as F;
        let conn = if read_only {
            rusqlite::Connection::open_with_flags(
                path,
                F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_NO_MUTEX,
            )?
        } else {
            let conn = rusqlite::Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Sqlite(conn))
    }
}

impl Db for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn run(&mut self, sql: &str, params: &[Val<'_>]) -> Result<u64, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn rows(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Int(v as i64),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Null | ValueRef::Blob(_) => Cell::Null,
                });
            }
            out.push(cells);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

/// Where a PostgreSQL ledger is, without its credentials: what logs,
/// errors and the status page show.
pub fn pg_label(url: &Secret) -> String {
    match url.expose().parse::<postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(postgres::config::Host::Tcp(h)) => h.clone(),
                Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{host}:{port}/{}",
                c.get_dbname().unwrap_or_default()
            )
        }
        Err(_) => "postgres (invalid url)".into(),
    }
}

/// The connection settings: a URL or key=value string, with a connect
/// timeout and TCP keepalives so a vanished server is noticed.
pub fn pg_config(url: &Secret) -> Result<postgres::Config, DbError> {
    let mut c: postgres::Config = url.expose().parse()?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(5));
    }
    c.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("cascade");
    Ok(c)
}

/// A PostgreSQL connection, with its statements prepared once.
pub struct Postgres<C> {
    client: C,
    prepared: HashMap<String, postgres::Statement>,
}

impl<C: std::ops::DerefMut<Target = postgres::Client> + Send> Postgres<C> {
    pub fn new(client: C) -> Self {
        Postgres {
            client,
            prepared: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&renumber(sql))?;
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// `?N` parameters as PostgreSQL writes them (`$N`). The ledger's SQL has
/// no `?` inside string literals.
fn renumber(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_params<'a>(params: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl<C: std::ops::DerefMut<Target = postgres::Client> + Send> Db for Postgres<C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run(&mut self, sql: &str, params: &[Val<'_>]) -> Result<u64, DbError> {
        let stmt = self.statement(sql)?;
        Ok(self.client.execute(&stmt, &pg_params(params))?)
    }

    fn rows(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError> {
        let stmt = self.statement(sql)?;
        let rows = self.client.query(&stmt, &pg_params(params))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_();
                        Ok(if *ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i)?
                                .map_or(Cell::Null, Cell::Int)
                        } else if *ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)?
                                .map_or(Cell::Null, |v| Cell::Int(v.into()))
                        } else if *ty == Type::INT2 {
                            row.try_get::<_, Option<i16>>(i)?
                                .map_or(Cell::Null, |v| Cell::Int(v.into()))
                        } else if *ty == Type::BOOL {
                            row.try_get::<_, Option<bool>>(i)?
                                .map_or(Cell::Null, |v| Cell::Int(v.into()))
                        } else {
                            row.try_get::<_, Option<String>>(i)?
                                .map_or(Cell::Null, Cell::Text)
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.client.batch_execute(sql)?)
    }
}

/// Run `f` where the blocking PostgreSQL client may block: never on a
/// thread that drives the async runtime (its own runtime would panic there).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbers_parameters() {
        assert_eq!(
            renumber("SELECT ?1 WHERE a >= ?2 AND b < ?12"),
            "SELECT $1 WHERE a >= $2 AND b < $12"
        );
    }

    #[test]
    fn label_hides_credentials() {
        let url = Secret::new("postgres://cascade:hunter2@db.internal:6543/ledger");
        assert_eq!(pg_label(&url), "postgres://db.internal:6543/ledger");
        let kv = Secret::new("host=10.0.0.5 user=c password=hunter2 dbname=l");
        assert_eq!(pg_label(&kv), "postgres://10.0.0.5:5432/l");
        assert!(!pg_label(&Secret::new("postgres://u:hunter2@[")).contains("hunter2"));
    }

    #[test]
    fn sqlite_round_trip() {
        let mut db = Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (a INTEGER, b TEXT)").unwrap();
        let n = db
            .run(
                "INSERT INTO t VALUES (?1, ?2), (?3, ?4)",
                &[
                    Val::Int(7),
                    Val::Text(Some("x")),
                    Val::Bool(true),
                    Val::Text(None),
                ],
            )
            .unwrap();
        assert_eq!(n, 2);
        let rows = db
            .rows(
                &format!(
                    "SELECT {}, b FROM t GROUP BY b ORDER BY b",
                    Dialect::Sqlite.sum("a")
                ),
                &[],
            )
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Cell::Int(1), Cell::Null],
                vec![Cell::Int(7), Cell::Text("x".into())]
            ]
        );
        assert_eq!(
            db.one("SELECT COUNT(*) FROM t WHERE a > ?1", &ints(&[5]))
                .unwrap(),
            Cell::Int(1)
        );
    }
}
