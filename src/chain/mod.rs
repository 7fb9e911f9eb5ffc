//! The fallback chain: one ordered walk over the route's steps, with one
//! deadline around it. Each attempt is admitted, timed, made, classified and
//! recorded (`attempt`); after a failure `next` decides what follows (retry
//! here after how long, the next tier, stop). Classification is `classify`;
//! delays are `backoff`; admission is `breaker` (a tower layer over `health`).
//! This is the only place that retries and the only place that records an
//! attempt's outcome: a stream's attempt is finished here too
//! (`OpenAttempt::finish`) when the stream ends.

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod health;
mod hedge;
pub mod latency;
pub mod next;
mod route;
mod targets;
mod types;
mod walk;

use walk::{attempt, Walk};

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

pub use classify::Verdict;
use next::{Failed, Next};
pub use route::{Route, Step};
pub use targets::{Chain, Escalation, Target};
pub use types::{AttemptRecord, Call, Check, Failure, Mode, OpenAttempt, Run, Served, StreamEnd};

use crate::config::ModelId;
pub use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

/// Run `call` down the route until an attempt succeeds, the chain is
/// exhausted, `max_total_attempts` is reached or `deadline` passes.
pub async fn execute<T, F, Fut>(
    chain: &Chain,
    route: &Route,
    deadline: Instant,
    mode: Mode,
    (paid_allowed, check): (&(dyn Fn() -> bool + Sync), Check<'_, T>),
    call: F,
) -> (Run, Result<Served<T>, Failure>)
where
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let w = Walk::new(Run::default(), None);
    walk(
        chain,
        (route, &route.steps),
        w,
        (deadline, mode),
        (paid_allowed, check),
        call,
    )
    .await
}

/// `mid_stream = "continue"`: after `broken` (a target and model) broke a
/// committed stream, the next models of the route in chain order, from its
/// tier on, that take a prefill (never `broken` itself), until one starts a
/// stream. `run` is the request's walk so far: its attempts count toward
/// `max_total_attempts` and the continuation's are added to it.
pub async fn continuation<T, F, Fut>(
    chain: &Chain,
    route: &Route,
    (run, broken): (Run, (usize, ModelId)),
    deadline: Instant,
    paid_allowed: &(dyn Fn() -> bool + Sync),
    call: F,
) -> (Run, Result<Served<T>, Failure>)
where
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let (target, model) = broken;
    let from = route
        .steps
        .iter()
        .position(|s| s.target == target)
        .unwrap_or(route.steps.len());
    let w = Walk::new(run, Some((target, model)));
    walk(
        chain,
        (route, &route.steps[from..]),
        w,
        (deadline, Mode::Stream),
        (paid_allowed, &|_, _| Ok(())),
        call,
    )
    .await
}

async fn walk<T, F, Fut>(
    chain: &Chain,
    (route, steps): (&Route, &[Step]),
    mut w: Walk,
    (deadline, mode): (Instant, Mode),
    (paid_allowed, check): (&(dyn Fn() -> bool + Sync), Check<'_, T>),
    mut call: F,
) -> (Run, Result<Served<T>, Failure>)
where
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let policy = &chain.config.policy;
    'steps: for (si, step) in steps.iter().enumerate() {
        let target = &chain.targets[step.target];
        if !target.enabled {
            continue;
        }
        let mut tier = w.enter(chain, step.target, mode);
        // the model whose failure the next attempt on this tier retries
        let mut retry_of: Option<usize> = None;
        while tier.attempts <= step.max_retries {
            if w.total >= policy.max_total_attempts {
                break 'steps;
            }
            // budgets are checked before every attempt on a paid tier
            if !target.free && !paid_allowed() {
                w.budget_skipped = true;
                break;
            }
            w.sleep_owed(chain, step.target, deadline).await;
            let now = Instant::now();
            if now >= deadline {
                w.deadline_hit = true;
                break 'steps;
            }
            let Some(picked) = w.pick(
                chain,
                step.target,
                (tier.next(), now),
                (mode, deadline),
                &mut call,
            ) else {
                break;
            };
            tier.took(&picked);
            w.arrive(chain, step.target);
            w.total += 1;
            if let Some(failed) = retry_of.take() {
                target.metrics[failed].retries.inc();
            }
            let hedge = target.hedge.filter(|_| w.continuing.is_none());
            let result = match hedge {
                None => {
                    let at = picked.at;
                    attempt(chain, &mut w, picked, mode, check)
                        .await
                        .map_err(|e| (e, at))
                }
                Some(h) => {
                    let mut more = |w: &mut Walk, target: usize, from: usize, now: Instant| {
                        w.pick(chain, target, (from, now), (mode, deadline), &mut call)
                    };
                    let race = hedge::Race {
                        hedge: h,
                        steps: (steps, si),
                        mode,
                        deadline,
                        paid_allowed,
                    };
                    hedge::race(chain, &mut w, (&race, &mut tier), picked, check, &mut more).await
                }
            };
            // the failure that decides (in a race, the last one)
            let (err, failed_at) = match result {
                Ok(served) => return (w.run, Ok(served)),
                Err(failed) => failed,
            };
            let first_tier = w.run.tried.first() == Some(&failed_at.target);
            let model = failed_at.model;
            if matches!(err, UpstreamError::Timeout) && Instant::now() >= deadline {
                w.deadline_hit = true;
            }
            if w.deadline_hit {
                break 'steps;
            }
            let failed = Failed {
                err: &err,
                first_tier,
                tier_attempts: tier.attempts,
                max_retries: step.max_retries,
                total: w.total,
                retry_on_timeout: target.retry_on_timeout,
            };
            match next::next(policy, &failed, Instant::now(), deadline, rand::random()) {
                Next::Fatal => return (w.run, Err(Failure::Fatal(err))),
                Next::Retry(delay) => {
                    // a retry of a hedge that failed on a later tier is not
                    // counted for a model of this one
                    retry_of = (failed_at.target == step.target).then_some(failed_at.index);
                    w.retry_delay = delay;
                }
                Next::NextTier {
                    pause,
                    larger_window,
                } => {
                    if larger_window {
                        if let Some(win) = chain.config.models[model].context_window {
                            w.min_window = Some(w.min_window.map_or(win, |m| m.max(win)));
                        }
                    }
                    w.tier_pause = pause;
                    break;
                }
            }
        }
        // a retry owed on a tier that is done is not slept
        w.retry_delay = Duration::ZERO;
    }

    if w.run.attempts.is_empty() && w.budget_skipped && !w.deadline_hit {
        return (w.run, Err(Failure::BudgetExceeded));
    }
    let failure = give_up_status(chain, route, &w.run, w.deadline_hit, w.back_at);
    (w.run, Err(failure))
}

/// 502, or 504 when every failure was a timeout or the deadline ran out, or
/// 429 when every failure was a 429; 503 when no attempt could be made.
fn give_up_status(
    chain: &Chain,
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
            .flat_map(|s| chain.targets[s.target].models.iter())
            .filter_map(|&m| chain.health[m].resting_until())
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

#[cfg(test)]
mod tests;
