use super::*;
use crate::secret::Secret;
use crate::testing::pg_cluster::PgCluster;

fn temp_db() -> PathBuf {
    std::env::temp_dir()
        .join(format!("cascade-ledger-{:x}", rand::random::<u64>()))
        .join("ledger.db")
}

fn sqlite_store() -> LedgerStore {
    LedgerStore::Sqlite(temp_db())
}

/// A database of a new cluster (kept running while the cluster lives).
fn postgres_store() -> (LedgerStore, PgCluster) {
    let pg = PgCluster::start();
    let url = pg.database("ledger_unit");
    (
        LedgerStore::Postgres {
            url: Secret::new(&url),
            pool_size: 2,
        },
        pg,
    )
}

fn remove(store: &LedgerStore) {
    if let LedgerStore::Sqlite(path) = store {
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

fn row(id: &str, tier: &str, cost: i64, free: bool, fallback: bool) -> RequestRow {
    RequestRow {
        id: id.into(),
        ts_ms: time::now_ms(),
        chain: tier.into(),
        first_tier: Some(tier.into()),
        tier: Some(tier.into()),
        model: Some(format!("{tier}-model")),
        free,
        fallback,
        status: 200,
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_nanos: cost,
        key: Some("k".into()),
        attempts: vec![AttemptRow {
            tier: tier.into(),
            model: format!("{tier}-model"),
            attempt: 1,
            outcome: "success",
            status: Some(200),
            elapsed_ms: 3,
        }],
        ..RequestRow::default()
    }
}

#[test]
fn writes_reports_and_reopens_sqlite() {
    writes_reports_and_reopens(&sqlite_store());
}

#[test]
fn writes_reports_and_reopens_postgres() {
    let (store, _pg) = postgres_store();
    writes_reports_and_reopens(&store);
}

fn writes_reports_and_reopens(path: &LedgerStore) {
    let ledger = Ledger::open(
        path,
        (Duration::from_millis(5), None),
        IntCounter::new("d", "d").unwrap(),
    )
    .unwrap();
    ledger.record(row("a", "paid", 1_500, false, false));
    ledger.record(row("b", "free", 0, true, true));
    ledger.close();
    assert_eq!(ledger.rows_flushed(), 2);

    let report = report_at(path, Window::parse("24h").unwrap(), time::now_ms() + 1).unwrap();
    assert_eq!(report.requests, 2);
    assert_eq!(report.by_tier["paid"].calls, 1);
    assert_eq!(report.by_tier["paid"].attempts, 1);
    assert_eq!(report.free_call_percentage(), 50.0);
    assert_eq!(report.fallback_rate(), 0.5);
    let json = report.to_json();
    assert_eq!(json["total_cost_usd"], serde_json::json!(0.0000015));
    assert_eq!(json["by_key"]["k"]["requests"], 2);

    // reopening migrates nothing twice and keeps the rows
    let again = Ledger::open(
        path,
        (Duration::from_millis(5), None),
        IntCounter::new("d", "d").unwrap(),
    )
    .unwrap();
    assert_eq!(again.spend_since(0).unwrap().total, 1_500);
    again.close();
    remove(path);
}

#[test]
fn windows_parse() {
    assert_eq!(Window::parse("24h").unwrap().ms, 86_400_000);
    assert_eq!(Window::parse("7d").unwrap().ms, 7 * 86_400_000);
    assert!(Window::parse("soon").is_err());
    assert!(Window::parse("0d").is_err());
}

/// Rows over several hours, some in each tier, key, endpoint and outcome.
fn spread(hour: i64) -> Vec<RequestRow> {
    let mut rows = Vec::new();
    for i in 0..200i64 {
        // from five hours before `hour` to 40 minutes after it
        let ts = hour - 5 * rollup::HOUR_MS + i * (340 * 60_000 / 200);
        let paid = i % 3 != 0;
        let tier = if paid { "paid" } else { "free" };
        let mut r = row(
            &format!("r{i}"),
            tier,
            if paid { 1_000 + i } else { 0 },
            !paid,
            i % 4 == 0,
        );
        r.ts_ms = ts;
        r.key = (i % 5 != 0).then(|| format!("k{}", i % 2));
        r.endpoint = if i % 7 == 0 { "embeddings" } else { "chat" };
        r.wasted_nanos = if i % 11 == 0 { 77 } else { 0 };
        r.savings_nanos = i;
        if i % 13 == 0 {
            // a failure: no tier served it
            r.tier = None;
            r.model = None;
            r.status = 502;
            r.attempts[0].outcome = "upstream_error";
        }
        rows.push(r);
    }
    rows
}

#[test]
fn rollups_keep_every_report_exact_and_retention_keeps_the_days_sqlite() {
    rollups_exact(&sqlite_store());
}

#[test]
fn rollups_keep_every_report_exact_and_retention_keeps_the_days_postgres() {
    let (store, _pg) = postgres_store();
    rollups_exact(&store);
}

fn rollups_exact(store: &LedgerStore) {
    let mut db = open_rw(store).unwrap();
    let db = db.as_mut();
    let hour = 1_764_684_000_000; // an hour boundary
    let now = hour + 40 * 60_000;
    write_batch(db, &spread(hour)).unwrap();
    let report = |db: &mut dyn Db, since: i64| {
        let w = Window {
            ms: now - since,
            label: "custom",
        };
        report::build(db, w, now).unwrap().to_json()
    };
    // windows starting mid-hour, on an hour, before everything
    let windows = [
        hour - 3 * rollup::HOUR_MS - 17 * 60_000,
        hour - 2 * rollup::HOUR_MS,
        hour - 9 * rollup::HOUR_MS,
    ];
    let before: Vec<_> = windows.iter().map(|&s| report(db, s)).collect();
    let spend_before = spend_since(db, windows[0]).unwrap();
    assert!(before[0]["requests"].as_u64().unwrap() > 0);

    // the hours before `hour` are folded; the one in progress is not
    assert!(rollup::fold(db, now).unwrap() > 0);
    assert_eq!(rollup::folded_until(db, None).unwrap(), Some(hour));
    for (i, &s) in windows.iter().enumerate() {
        assert_eq!(report(db, s), before[i], "window {i}");
    }
    let spend_after = spend_since(db, windows[0]).unwrap();
    assert_eq!(spend_after.total, spend_before.total);
    assert_eq!(spend_after.by_key, spend_before.by_key);

    // a row for a folded hour still counts
    let mut late = row("late", "paid", 5_000, false, false);
    late.ts_ms = hour - 30 * 60_000;
    write_batch(db, &[late]).unwrap();
    let with_late = report(db, windows[0]);
    assert_eq!(
        with_late["requests"],
        before[0]["requests"].as_u64().unwrap() + 1
    );
    assert_eq!(
        with_late["by_tier"]["paid"]["attempts"],
        before[0]["by_tier"]["paid"]["attempts"].as_u64().unwrap() + 1
    );

    // retention: rows before `hour - 2h` go, their hours' figures stay
    let all = report(db, windows[2]);
    let count = |db: &mut dyn Db| db.one("SELECT COUNT(*) FROM requests", &[]).unwrap().int();
    let rows_before = count(db);
    assert!(rollup::prune(db, hour - 2 * rollup::HOUR_MS).unwrap() > 0);
    assert!(count(db) < rows_before);
    assert_eq!(report(db, windows[2]), all);
    // never from an hour not folded yet
    rollup::prune(db, now + rollup::HOUR_MS).unwrap();
    let left = db
        .one(
            "SELECT COUNT(*) FROM requests WHERE ts_ms >= ?1",
            &[Val::Int(hour)],
        )
        .unwrap()
        .int();
    assert!(left > 0);
    assert_eq!(report(db, windows[2]), all);
    remove(store);
}
