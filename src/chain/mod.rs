//! The fallback chain: one explicit ordered loop over the route's steps, with
//! one deadline around it, recording every attempt (SPEC 4.2). Classification
//! is `classify`; delays are `backoff`; each attempt goes through the
//! per-model stack of `breaker` (a tower layer over `health`). This is the
//! only place that retries.

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod health;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use breaker::{Admitted, HealthLayer, Refused};
use classify::classify;
pub use classify::{AttemptOutcome, Verdict};
use health::{earliest, Permit, Unavailable};
use tower::{Layer, Service};

use crate::config::ModelId;
use crate::providers::UpstreamError;
use crate::routing::Route;
use crate::runtime::Runtime;

/// One upstream attempt, as reported in metrics, logs and `all_models_failed`.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// Index into `Runtime::targets`.
    pub target: usize,
    pub model: ModelId,
    /// 1-based, across the whole request.
    pub attempt: u32,
    pub status: Option<u16>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub elapsed: Duration,
    /// The upstream's Retry-After, if it sent one.
    pub retry_after: Option<Duration>,
}

/// What the loop did, whatever the result.
#[derive(Debug, Default)]
pub struct Run {
    pub attempts: Vec<AttemptRecord>,
    /// Targets that got at least one attempt, in order.
    pub tried: Vec<usize>,
}

/// The attempt that answered.
pub struct Served<T> {
    pub target: usize,
    pub model: ModelId,
    pub value: T,
    /// Held while a stream is open (the model's concurrency slot); its
    /// outcome is reported when the stream ends. None when already reported.
    pub permit: Option<Permit>,
}

#[derive(Debug)]
pub enum Failure {
    /// Every tier left was paid and a budget is spent (free_only).
    BudgetExceeded,
    /// The client's request is wrong (a 400/413/422 from the first tier):
    /// the upstream's answer goes back as is.
    Fatal(UpstreamError),
    AllFailed {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
}

/// How long an attempt may take: streaming attempts are bounded by the
/// first-token timeout, others by the tier's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Complete,
    Stream,
}

/// Run `call` down the route until an attempt succeeds, the chain is
/// exhausted, `max_total_attempts` is reached or `deadline` passes.
pub async fn execute<T, F, Fut>(
    rt: &Runtime,
    route: &Route,
    deadline: Instant,
    mode: Mode,
    paid_allowed: &(dyn Fn() -> bool + Sync),
    mut call: F,
) -> (Run, Result<Served<T>, Failure>)
where
    F: FnMut(ModelId, Duration) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let cfg = &rt.config;
    let policy = &cfg.policy;
    let mut run = Run::default();
    let mut total: u32 = 0;
    let mut deadline_hit = false;
    let mut back_at: Option<Instant> = None;
    // after a context-length failure: only models with a larger window
    let mut min_window: Option<u64> = None;
    // a delay owed before the next attempt, if there is one: a retry's is
    // slept before choosing the model (a 429's rest ends with its
    // Retry-After), the pause between tiers only once a model is chosen
    // (so it is never slept after the last attempt)
    let mut pending_delay = Duration::ZERO;
    let mut budget_skipped = false;

    'steps: for step in &route.steps {
        // enabled, and (after a context-length failure) a larger window
        let eligible = |model: ModelId| {
            let m = &cfg.models[model];
            m.enabled && min_window.is_none_or(|w| m.context_window.is_some_and(|mw| mw > w))
        };
        let target = &rt.targets[step.target];
        if !target.enabled {
            continue;
        }
        let n = target.models.len();
        let start = match target.strategy {
            crate::config::Strategy::Ordered => 0,
            crate::config::Strategy::RoundRobin => {
                target.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        };
        let mut cursor = 0usize;
        let mut tier_attempts: u32 = 0;
        // the model whose failure the next attempt on this tier retries
        let mut retry_of: Option<usize> = None;
        loop {
            if tier_attempts > step.max_retries {
                break;
            }
            if total >= policy.max_total_attempts {
                break 'steps;
            }
            // budgets are checked before every attempt on a paid tier
            if !target.free && !paid_allowed() {
                budget_skipped = true;
                break;
            }
            if retry_of.is_some() && !pending_delay.is_zero() {
                if Instant::now() + pending_delay < deadline {
                    tokio::time::sleep(pending_delay).await;
                }
                pending_delay = Duration::ZERO;
            }
            // the pause between tiers is owed only if an attempt follows
            if !pending_delay.is_zero() {
                let now = Instant::now();
                let follows = target
                    .models
                    .iter()
                    .any(|&m| eligible(m) && rt.health[m].would_admit(now));
                if follows && now + pending_delay < deadline {
                    tokio::time::sleep(pending_delay).await;
                }
                pending_delay = Duration::ZERO;
            }
            let now = Instant::now();
            if now >= deadline {
                deadline_hit = true;
                break 'steps;
            }
            let per_attempt = match mode {
                Mode::Complete => target.timeout,
                Mode::Stream => target.first_token_timeout,
            };
            let limit = per_attempt.min(deadline - now);
            // next model, in strategy order, through the per-model stack:
            // health (breaker, rest, concurrency) -> timeout -> provider call.
            // An unavailable model refuses at once and costs no attempt.
            let mut picked = None;
            for k in 0..n {
                let idx = (start + cursor + k) % n;
                let model = target.models[idx];
                if !eligible(model) {
                    continue;
                }
                let mut stack =
                    HealthLayer::new(Arc::clone(&rt.health[model]), mode == Mode::Stream).layer(
                        tower::service_fn(|()| {
                            let attempt = call(model, limit);
                            async move {
                                tokio::time::timeout(limit, attempt)
                                    .await
                                    .unwrap_or(Err(UpstreamError::Timeout))
                            }
                        }),
                    );
                // service_fn is always ready; the health check is in `call`.
                // Boxed: the attempt (an HTTP client's future under a timeout)
                // is kilobytes, and every request future holding it inline
                // was copied whole at each layer on the way in.
                let attempt = Box::pin(stack.call(()));
                match attempt.refused() {
                    Some(why) => {
                        back_at = earliest(
                            back_at,
                            why.until().or(match why {
                                Unavailable::Saturated | Unavailable::Probing => {
                                    Some(now + Duration::from_secs(1))
                                }
                                _ => None,
                            }),
                        )
                    }
                    None => {
                        cursor += k + 1;
                        picked = Some((idx, model, attempt));
                        break;
                    }
                }
            }
            let Some((idx, model, attempt)) = picked else {
                break;
            };
            if run.tried.last() != Some(&step.target) {
                if let Some(&from) = run.tried.last() {
                    rt_fallback(rt, from, step.target);
                }
                run.tried.push(step.target);
            }
            let first_tier = run.tried.len() == 1;
            total += 1;
            tier_attempts += 1;
            let metrics = &target.metrics[idx];
            if let Some(failed) = retry_of.take() {
                target.metrics[failed].retries.inc();
            }
            let started = Instant::now();
            let result = attempt.await;
            let elapsed = started.elapsed();
            let err = match result {
                Ok(Admitted { value, permit }) => {
                    if let Some(t) = target.tier {
                        rt.escalation[t].success();
                    }
                    // a stream's attempt is counted when the stream ends:
                    // it may still break
                    if mode == Mode::Complete {
                        metrics.upstream_duration.observe(elapsed.as_secs_f64());
                        metrics.outcomes[AttemptOutcome::Success.index()].inc();
                    }
                    run.attempts.push(AttemptRecord {
                        target: step.target,
                        model,
                        attempt: total,
                        status: Some(200),
                        outcome: AttemptOutcome::Success,
                        error: None,
                        elapsed,
                        retry_after: None,
                    });
                    return (
                        run,
                        Ok(Served {
                            target: step.target,
                            model,
                            value,
                            permit,
                        }),
                    );
                }
                Err(Refused::Failed(e)) => e,
                // admission was checked above; a refusal now changes nothing
                Err(Refused::Unavailable(_)) => continue,
            };
            if matches!(err, UpstreamError::Timeout) && Instant::now() >= deadline {
                deadline_hit = true;
            }
            metrics.upstream_duration.observe(elapsed.as_secs_f64());
            let outcome = classify::outcome(&err);
            metrics.outcomes[outcome.index()].inc();
            if let Some(esc) = target
                .tier
                .and_then(|t| cfg.tiers[t].escalate.map(|e| (t, e)))
            {
                if outcome != AttemptOutcome::ClientError {
                    rt.escalation[esc.0].failure(esc.1.after);
                }
            }
            run.attempts.push(AttemptRecord {
                target: step.target,
                model,
                attempt: total,
                status: err.status(),
                outcome,
                error: Some(err.to_string()),
                elapsed,
                retry_after: match &err {
                    UpstreamError::Status { retry_after, .. } => *retry_after,
                    _ => None,
                },
            });
            if deadline_hit {
                break 'steps;
            }
            match classify(&err, first_tier) {
                Verdict::Fatal => return (run, Err(Failure::Fatal(err))),
                Verdict::Fallback => {
                    pending_delay = between_tiers(policy, tier_attempts);
                    break;
                }
                Verdict::ContextLength => {
                    if let Some(w) = cfg.models[model].context_window {
                        min_window = Some(min_window.map_or(w, |m| m.max(w)));
                    }
                    pending_delay = between_tiers(policy, tier_attempts);
                    break;
                }
                Verdict::Retry => {
                    if tier_attempts > step.max_retries || total >= policy.max_total_attempts {
                        pending_delay = between_tiers(policy, tier_attempts);
                        break;
                    }
                    let retry_after = match &err {
                        UpstreamError::Status { retry_after, .. } if policy.respect_retry_after => {
                            *retry_after
                        }
                        _ => None,
                    };
                    let delay = match retry_after {
                        // longer than we would ever wait: fall back at once
                        Some(ra) if ra > policy.backoff_max => break,
                        Some(ra) => ra,
                        None => backoff::delay(policy, tier_attempts, rand::random::<f64>()),
                    };
                    if Instant::now() + delay >= deadline {
                        // a backoff that would outlast the deadline is not slept
                        break;
                    }
                    retry_of = Some(idx);
                    pending_delay = delay;
                }
            }
        }
    }

    if run.attempts.is_empty() && budget_skipped && !deadline_hit {
        return (run, Err(Failure::BudgetExceeded));
    }
    let status_and_retry = give_up_status(rt, route, &run, deadline_hit, back_at);
    (run, Err(status_and_retry))
}

fn between_tiers(policy: &crate::config::Policy, tier_attempts: u32) -> Duration {
    if policy.backoff_between_tiers {
        backoff::delay(policy, tier_attempts.max(1), rand::random::<f64>())
    } else {
        Duration::ZERO
    }
}

fn rt_fallback(rt: &Runtime, from: usize, to: usize) {
    let counter = rt.targets[from].fallbacks.get(to, || {
        rt.metrics
            .fallbacks
            .with_label_values(&[&rt.targets[from].label, &rt.targets[to].label])
    });
    if let Some(c) = counter {
        c.inc();
    }
}

/// 502, or 504 when every failure was a timeout or the deadline ran out, or
/// 429 when every failure was a 429; 503 when no attempt could be made.
fn give_up_status(
    rt: &Runtime,
    route: &Route,
    run: &Run,
    deadline_hit: bool,
    back_at: Option<Instant>,
) -> Failure {
    let outcomes = || run.attempts.iter().map(|a| a.outcome);
    if run.attempts.is_empty() {
        if deadline_hit {
            return Failure::AllFailed {
                status: StatusCode::GATEWAY_TIMEOUT,
                retry_after: None,
            };
        }
        return Failure::AllFailed {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: back_at.map(health::until),
        };
    }
    if deadline_hit || outcomes().all(|o| o == AttemptOutcome::Timeout) {
        return Failure::AllFailed {
            status: StatusCode::GATEWAY_TIMEOUT,
            retry_after: None,
        };
    }
    if outcomes().all(|o| o == AttemptOutcome::RateLimited) {
        // when the first of the chain's models is back
        let back = route
            .steps
            .iter()
            .flat_map(|s| rt.targets[s.target].models.iter())
            .filter_map(|&m| rt.health[m].resting_until())
            .min()
            .map(health::until)
            // no rests (breaker off): the shortest Retry-After the upstreams sent
            .or_else(|| run.attempts.iter().filter_map(|a| a.retry_after).min());
        return Failure::AllFailed {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: back,
        };
    }
    Failure::AllFailed {
        status: StatusCode::BAD_GATEWAY,
        retry_after: None,
    }
}
