use super::*;

fn temp_db() -> PathBuf {
    std::env::temp_dir()
        .join(format!("cascade-ledger-{:x}", rand::random::<u64>()))
        .join("ledger.db")
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
fn writes_reports_and_reopens() {
    let path = temp_db();
    let ledger = Ledger::open(
        &path,
        Duration::from_millis(5),
        IntCounter::new("d", "d").unwrap(),
    )
    .unwrap();
    ledger.record(row("a", "paid", 1_500, false, false));
    ledger.record(row("b", "free", 0, true, true));
    ledger.close();
    assert_eq!(ledger.rows_flushed(), 2);

    let report = report_at(&path, Window::parse("24h").unwrap(), time::now_ms() + 1).unwrap();
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
        &path,
        Duration::from_millis(5),
        IntCounter::new("d", "d").unwrap(),
    )
    .unwrap();
    assert_eq!(again.spend_since(0).unwrap().total, 1_500);
    again.close();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn windows_parse() {
    assert_eq!(Window::parse("24h").unwrap().ms, 86_400_000);
    assert_eq!(Window::parse("7d").unwrap().ms, 7 * 86_400_000);
    assert!(Window::parse("soon").is_err());
    assert!(Window::parse("0d").is_err());
}
