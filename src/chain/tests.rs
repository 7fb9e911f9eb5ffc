//! The walk on paused time: each attempt admitted, timed, made, classified
//! and recorded; what follows a failure; a stream's attempt finished when the
//! stream ends. The calls are closures, so no upstream is involved.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;
use crate::config::ModelId;

/// Tier `a` (m1: 1 s timeout, one retry, escalates to `b` after 2 failures)
/// falls back to tier `b` (m2, paid).
fn chain(extra: &str) -> Chain {
    crate::testing::chain(&chain_toml(extra), &[])
}

fn chain_toml(extra: &str) -> String {
    format!(
        r#"
[policy]
backoff_base_ms = 100
backoff_max_ms = 1000
backoff_jitter = false

[circuit_breaker]
failure_threshold = 0

[ledger]
path = ""

[providers.p]
kind = "mock"

[models.m1]
provider = "p"
model = "m1"

[models.m2]
provider = "p"
model = "m2"
input_usd_per_mtok = 1.0

[tiers.a]
models = ["m1"]
timeout_ms = 1000
first_token_timeout_ms = 500
max_retries = 1
fallback = ["b"]
escalate = {{ after_consecutive_failures = 2, to = "b" }}

[tiers.b]
models = ["m2"]
max_retries = 0
{extra}
"#
    )
}

fn route(c: &Chain) -> Route {
    Route {
        steps: vec![
            Step {
                target: c.tier_target(0),
                max_retries: 1,
            },
            Step {
                target: c.tier_target(1),
                max_retries: 0,
            },
        ],
        task: None,
        minor: false,
        escalated: false,
        task_retries: None,
        retries_cap: None,
    }
}

fn status(code: u16, retry_after_ms: Option<u64>) -> UpstreamError {
    UpstreamError::Status {
        status: code,
        message: format!("upstream said {code}"),
        retry_after: retry_after_ms.map(Duration::from_millis),
        context_length: false,
        body: Bytes::new(),
    }
}

fn outcomes(run: &Run) -> Vec<(usize, AttemptOutcome)> {
    run.attempts.iter().map(|a| (a.model, a.outcome)).collect()
}

fn count(c: &Chain, target: usize, outcome: AttemptOutcome) -> u64 {
    c.targets[target].metrics[0].outcomes[outcome.index()].get()
}

const FAR: Duration = Duration::from_secs(600);

/// Tier a with `retry_on_timeout = true`.
fn retrying_chain() -> Chain {
    let toml = chain_toml("").replace(
        "max_retries = 1\n",
        "max_retries = 1\nretry_on_timeout = true\n",
    );
    crate::testing::chain(&toml, &[])
}

#[tokio::test(start_paused = true)]
async fn a_silent_tier_is_left_at_once_by_default() {
    let c = chain("");
    let t0 = Instant::now();
    let (run, result) = execute(
        &c,
        &route(&c),
        t0 + FAR,
        Mode::Complete,
        (&|| true, &|_, _| Ok(())),
        |Call { model, .. }| async move {
            if model == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, UpstreamError>("from m2")
        },
    )
    .await;
    assert_eq!(result.unwrap().target, 1);
    assert_eq!(
        outcomes(&run),
        vec![(0, AttemptOutcome::Timeout), (1, AttemptOutcome::Success)]
    );
    // one timeout, no retry, no backoff
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_times_out_is_retried_then_falls_back() {
    let c = retrying_chain();
    let t0 = Instant::now();
    let (run, result) = execute(
        &c,
        &route(&c),
        t0 + FAR,
        Mode::Complete,
        (&|| true, &|_, _| Ok(())),
        |Call { model, .. }| async move {
            if model == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, UpstreamError>("from m2")
        },
    )
    .await;
    let served = result.unwrap();
    assert_eq!((served.target, served.model, served.index), (1, 1, 0));
    assert_eq!(served.value, "from m2");
    assert!(served.open.is_none());
    let (timeout, success) = (AttemptOutcome::Timeout, AttemptOutcome::Success);
    assert_eq!(
        outcomes(&run),
        vec![(0, timeout), (0, timeout), (1, success)]
    );
    assert_eq!(run.tried, vec![0, 1]);
    // each timeout took exactly the tier's timeout; the retry waited the
    // backoff (no jitter: base 100 ms)
    assert_eq!(run.attempts[0].elapsed, Duration::from_secs(1));
    assert_eq!(t0.elapsed(), Duration::from_millis(2100));
    assert_eq!(count(&c, 0, timeout), 2);
    assert_eq!(c.targets[0].metrics[0].retries.get(), 1);
    assert_eq!(count(&c, 1, success), 1);
    // the two failures reached tier a's escalation threshold: one is owed
    assert!(c.escalation[0].take());
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_its_retry_after_on_the_same_tier() {
    let c = chain("");
    let calls = AtomicU32::new(0);
    let t0 = Instant::now();
    let (run, result) = execute(
        &c,
        &route(&c),
        t0 + FAR,
        Mode::Complete,
        (&|| true, &|_, _| Ok(())),
        |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(status(429, Some(300)))
                } else {
                    Ok("second")
                }
            }
        },
    )
    .await;
    assert_eq!(result.unwrap().target, 0);
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert_eq!(
        run.attempts[0].retry_after,
        Some(Duration::from_millis(300))
    );
    assert_eq!(run.attempts[0].status, Some(429));
    assert_eq!(count(&c, 0, AttemptOutcome::RateLimited), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_error_on_the_first_tier_stops_the_walk() {
    let c = chain("");
    let (run, result) = execute(
        &c,
        &route(&c),
        Instant::now() + FAR,
        Mode::Complete,
        (&|| true, &|_, _| Ok(())),
        |_| async { Err::<(), _>(status(400, None)) },
    )
    .await;
    assert!(matches!(
        result,
        Err(Failure::Fatal(UpstreamError::Status { status: 400, .. }))
    ));
    assert_eq!(run.attempts.len(), 1);
    // a client's mistake says nothing about the tier: nothing is owed
    assert_eq!(c.escalation[0].consecutive(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_every_attempt_and_the_walk() {
    let c = chain("");
    let t0 = Instant::now();
    let (run, result) = execute(
        &c,
        &route(&c),
        t0 + Duration::from_millis(700),
        Mode::Complete,
        (&|| true, &|_, _| Ok(())),
        |_| async { std::future::pending::<Result<(), UpstreamError>>().await },
    )
    .await;
    assert_eq!(t0.elapsed(), Duration::from_millis(700));
    assert_eq!(run.attempts.len(), 1);
    assert!(matches!(
        result,
        Err(Failure::AllFailed { status, .. }) if status == StatusCode::GATEWAY_TIMEOUT
    ));
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_skips_paid_tiers() {
    let c = chain("");
    let (run, result) = execute(
        &c,
        &route(&c),
        Instant::now() + FAR,
        Mode::Complete,
        (&|| false, &|_, _| Ok(())),
        |Call { model, .. }| async move {
            if model == 0 {
                Err(status(503, None))
            } else {
                Ok(())
            }
        },
    )
    .await;
    // tier a is free and failed; tier b is paid and was not tried
    assert_eq!(run.tried, vec![0]);
    assert!(
        matches!(result, Err(Failure::AllFailed { status, .. }) if status == StatusCode::BAD_GATEWAY)
    );
    let mut only_paid = route(&c);
    only_paid.steps.remove(0);
    let (run, result) = execute(
        &c,
        &only_paid,
        Instant::now() + FAR,
        Mode::Complete,
        (&|| false, &|_, _| Ok(())),
        |_| async { Ok(()) },
    )
    .await;
    assert!(run.attempts.is_empty());
    assert!(matches!(result, Err(Failure::BudgetExceeded)));
}

#[tokio::test(start_paused = true)]
async fn a_stream_attempt_is_recorded_when_the_stream_ends() {
    let c = chain("");
    let t0 = Instant::now();
    let (mut run, result) = execute(
        &c,
        &route(&c),
        t0 + FAR,
        Mode::Stream,
        (&|| true, &|_, _| Ok(())),
        |Call { limit, .. }| async move {
            // the first-token timeout bounds a stream's attempt
            assert_eq!(limit, Duration::from_millis(500));
            Ok::<_, UpstreamError>(())
        },
    )
    .await;
    let served = result.unwrap();
    // not counted yet: the stream may still break
    assert_eq!(count(&c, 0, AttemptOutcome::Success), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broke = UpstreamError::MidStream("cut".into());
    served
        .open
        .unwrap()
        .finish(&c, &mut run, StreamEnd::Broke(&broke));
    assert_eq!(count(&c, 0, AttemptOutcome::UpstreamError), 1);
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::UpstreamError);
    assert!(run.attempts[0].error.as_deref().unwrap().contains("cut"));
    assert_eq!(c.escalation[0].consecutive(), 1);
    let h = &c.targets[0].metrics[0].upstream_duration;
    assert_eq!(h.get_sample_count(), 1);
    assert!((h.get_sample_sum() - 3.0).abs() < 1e-9);

    // a client that leaves records nothing
    let (mut run, result) = execute(
        &c,
        &route(&c),
        Instant::now() + FAR,
        Mode::Stream,
        (&|| true, &|_, _| Ok(())),
        |_| async { Ok::<_, UpstreamError>(()) },
    )
    .await;
    result
        .unwrap()
        .open
        .unwrap()
        .finish(&c, &mut run, StreamEnd::ClientGone);
    assert_eq!(count(&c, 0, AttemptOutcome::Success), 0);
    assert_eq!(run.attempts[0].outcome, AttemptOutcome::Success);
}

#[tokio::test(start_paused = true)]
async fn an_answer_refused_by_the_check_is_an_invalid_output_attempt() {
    let toml = chain_toml("").replace(
        "max_retries = 1\n",
        "max_retries = 1\nvalidate_output = true\n",
    );
    let c = crate::testing::chain(&toml, &[]);
    let check = |_: ModelId, v: &&str| {
        if v.is_empty() {
            Err("an empty answer".to_string())
        } else {
            Ok(())
        }
    };
    let (run, result) =
        execute(
            &c,
            &route(&c),
            Instant::now() + FAR,
            Mode::Complete,
            (&|| true, &check),
            |Call { model, .. }| async move {
                Ok::<_, UpstreamError>(if model == 0 { "" } else { "fine" })
            },
        )
        .await;
    assert_eq!(result.unwrap().value, "fine");
    let invalid = AttemptOutcome::InvalidOutput;
    assert_eq!(
        outcomes(&run),
        vec![(0, invalid), (0, invalid), (1, AttemptOutcome::Success)]
    );
    assert!(run.attempts[0].error.as_deref().unwrap().contains("empty"));
    assert_eq!(count(&c, 0, invalid), 2);
    // it counts for escalation (two failures owe one)
    assert!(c.escalation[0].take());
    // tier b does not validate: the same check is never asked there
    assert_eq!(count(&c, 1, AttemptOutcome::Success), 1);
}
