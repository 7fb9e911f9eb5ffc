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
pub mod next;
mod route;
mod targets;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower::{Layer, Service};

use breaker::{Admitted, HealthLayer, Refused};
pub use classify::Verdict;
use health::{earliest, Permit, Unavailable};
use next::{Failed, Next};
pub use route::{Route, Step};
pub use targets::{Chain, Escalation, Target};

use crate::config::ModelId;
pub use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

/// One upstream attempt, as reported in metrics, logs and `all_models_failed`.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// Index into `Chain::targets`.
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

/// What the walk did, whatever the result.
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
    /// Where `model` is in its target's `models` (and `metrics`).
    pub index: usize,
    pub value: T,
    /// A stream's attempt, still open: finished when the stream ends.
    pub open: Option<OpenAttempt>,
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

/// One call the chain asks for.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub model: ModelId,
    /// Index into `Chain::targets` of the tier it is made for.
    pub target: usize,
    /// How long it may take (for a buffered stream: to its first content).
    pub limit: Duration,
}

/// How a stream that had started ended.
#[derive(Clone, Copy, Debug)]
pub enum StreamEnd<'a> {
    /// It finished as it should.
    Done,
    /// The upstream broke, went quiet too long, or sent what could not be read.
    Broke(&'a UpstreamError),
    /// The client went away; the upstream was cancelled.
    ClientGone,
}

/// A streaming attempt that answered: its outcome is known only when the
/// stream ends. Holds the model's concurrency slot until then.
pub struct OpenAttempt {
    target: usize,
    index: usize,
    started: Instant,
    permit: Option<Permit>,
}

impl OpenAttempt {
    /// A malformed event was dropped from the stream (it went on).
    pub fn dropped_event(&self, chain: &Chain) {
        chain.targets[self.target].metrics[self.index]
            .events_dropped
            .inc();
    }

    /// Record how the stream ended: the attempt's outcome and duration, the
    /// model's health, the tier's escalation count, and (when it broke) the
    /// attempt's record in `run`. A client that left says nothing about the
    /// upstream: the slot is freed, nothing is recorded.
    pub fn finish(mut self, chain: &Chain, run: &mut Run, end: StreamEnd<'_>) {
        let err = match end {
            StreamEnd::ClientGone => return,
            StreamEnd::Done => None,
            StreamEnd::Broke(e) => Some(e),
        };
        let target = &chain.targets[self.target];
        let outcome = err.map_or(AttemptOutcome::Success, classify::outcome);
        let m = &target.metrics[self.index];
        m.outcomes[outcome.index()].inc();
        m.upstream_duration
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(permit) = self.permit.take() {
            permit.record(err.map_or(classify::HealthEffect::Success, classify::health_effect));
        }
        if let Some(e) = err {
            // the attempt that started the stream failed after all
            if let Some(a) = run.attempts.last_mut() {
                a.outcome = outcome;
                a.status = e.status();
                a.error = Some(e.to_string());
            }
            escalation_failure(chain, self.target, outcome);
        }
    }
}

/// A failed attempt on a tier with `escalate` counts toward it, unless the
/// client's request was at fault.
fn escalation_failure(chain: &Chain, target: usize, outcome: AttemptOutcome) {
    let Some(t) = chain.targets[target].tier else {
        return;
    };
    if let (Some(esc), true) = (
        chain.config.tiers[t].escalate,
        outcome != AttemptOutcome::ClientError,
    ) {
        chain.escalation[t].failure(esc.after);
    }
}

/// An admitted attempt, not yet awaited.
struct Picked<P> {
    /// Models of the tier passed over to reach it.
    skipped: usize,
    index: usize,
    model: ModelId,
    call: Pin<Box<P>>,
}

/// The walk's state between attempts.
struct Walk {
    run: Run,
    /// Attempts on the whole request.
    total: u32,
    deadline_hit: bool,
    /// When the first model refused at admission may be back.
    back_at: Option<Instant>,
    /// After a context-length failure: only models with a larger window.
    min_window: Option<u64>,
    /// A retry's delay, slept before choosing the model (a 429's rest ends
    /// with its Retry-After).
    retry_delay: Duration,
    /// The pause between tiers, slept once the next tier has a model to try
    /// (so never after the last attempt).
    tier_pause: Duration,
    budget_skipped: bool,
}

/// How an answer is judged on tiers with `validate_output`: `Err` says why
/// it is not worth serving (the attempt fails, outcome `invalid_output`).
pub type Check<'a, T> = &'a (dyn Fn(ModelId, &T) -> Result<(), String> + Sync);

/// Run `call` down the route until an attempt succeeds, the chain is
/// exhausted, `max_total_attempts` is reached or `deadline` passes.
pub async fn execute<T, F, Fut>(
    chain: &Chain,
    route: &Route,
    deadline: Instant,
    mode: Mode,
    (paid_allowed, check): (&(dyn Fn() -> bool + Sync), Check<'_, T>),
    mut call: F,
) -> (Run, Result<Served<T>, Failure>)
where
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let policy = &chain.config.policy;
    let mut w = Walk {
        run: Run::default(),
        total: 0,
        deadline_hit: false,
        back_at: None,
        min_window: None,
        retry_delay: Duration::ZERO,
        tier_pause: Duration::ZERO,
        budget_skipped: false,
    };
    'steps: for step in &route.steps {
        let target = &chain.targets[step.target];
        if !target.enabled {
            continue;
        }
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
        while tier_attempts <= step.max_retries {
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
            let per_attempt = match mode {
                Mode::Complete => target.timeout,
                Mode::Stream => target.first_token_timeout,
            };
            let limit = per_attempt.min(deadline - now);
            // a buffered stream bounds its own time: the deadline and the
            // first-token timeout until its first content, the gap after it
            let outer = match (mode, target.mid_stream) {
                (Mode::Stream, crate::config::MidStream::Buffer { .. }) => None,
                _ => Some(limit),
            };
            let Some(picked) = w.pick(
                chain,
                step.target,
                (start + cursor, now),
                mode,
                (limit, outer),
                &mut call,
            ) else {
                break;
            };
            cursor += picked.skipped + 1;
            if w.run.tried.last() != Some(&step.target) {
                if let Some(&from) = w.run.tried.last() {
                    count_fallback(chain, from, step.target);
                }
                w.run.tried.push(step.target);
            }
            let first_tier = w.run.tried.len() == 1;
            w.total += 1;
            tier_attempts += 1;
            if let Some(failed) = retry_of.take() {
                target.metrics[failed].retries.inc();
            }
            let (index, model) = (picked.index, picked.model);
            let err = match attempt(chain, &mut w, step.target, picked, mode, check).await {
                Ok(served) => return (w.run, Ok(served)),
                Err(e) => e,
            };
            if matches!(err, UpstreamError::Timeout) && Instant::now() >= deadline {
                w.deadline_hit = true;
            }
            if w.deadline_hit {
                break 'steps;
            }
            let failed = Failed {
                err: &err,
                first_tier,
                tier_attempts,
                max_retries: step.max_retries,
                total: w.total,
                retry_on_timeout: target.retry_on_timeout,
            };
            match next::next(policy, &failed, Instant::now(), deadline, rand::random()) {
                Next::Fatal => return (w.run, Err(Failure::Fatal(err))),
                Next::Retry(delay) => {
                    retry_of = Some(index);
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

impl Walk {
    /// Whether a model may be tried now: enabled, and (after a
    /// context-length failure) with a larger window or one not configured
    /// (it may well be larger).
    fn eligible(&self, chain: &Chain, model: ModelId) -> bool {
        let m = &chain.config.models[model];
        m.enabled
            && self
                .min_window
                .is_none_or(|w| m.context_window.is_none_or(|mw| mw > w))
    }

    /// Sleep what is owed before the next attempt on `target`: a retry's
    /// delay, or the pause between tiers if a model of it would be admitted.
    /// Never past the deadline.
    async fn sleep_owed(&mut self, chain: &Chain, target: usize, deadline: Instant) {
        let delay = if !self.retry_delay.is_zero() {
            std::mem::take(&mut self.retry_delay)
        } else if !self.tier_pause.is_zero() {
            let pause = std::mem::take(&mut self.tier_pause);
            let now = Instant::now();
            let follows = chain.targets[target]
                .models
                .iter()
                .any(|&m| self.eligible(chain, m) && chain.health[m].would_admit(now));
            if follows {
                pause
            } else {
                Duration::ZERO
            }
        } else {
            return;
        };
        if !delay.is_zero() && Instant::now() + delay < deadline {
            tokio::time::sleep(delay).await;
        }
    }

    /// Admission: the next model of `target` in strategy order from `from`
    /// that its health admits, with its call built (the per-model stack:
    /// health -> timeout -> provider call). A model that refuses costs no
    /// attempt; when it may be back is kept for the Retry-After of a 503.
    fn pick<T, F, Fut>(
        &mut self,
        chain: &Chain,
        target: usize,
        (from, now): (usize, Instant),
        mode: Mode,
        (limit, outer): (Duration, Option<Duration>),
        call: &mut F,
    ) -> Option<Picked<impl Future<Output = Result<Admitted<T>, Refused>>>>
    where
        F: FnMut(Call) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let models = &chain.targets[target].models;
        let n = models.len();
        for k in 0..n {
            let index = (from + k) % n;
            let model = models[index];
            if !self.eligible(chain, model) {
                continue;
            }
            let mut stack =
                HealthLayer::new(Arc::clone(&chain.health[model]), mode == Mode::Stream).layer(
                    tower::service_fn(|()| {
                        let attempt = call(Call {
                            model,
                            target,
                            limit,
                        });
                        async move {
                            match outer {
                                Some(limit) => tokio::time::timeout(limit, attempt)
                                    .await
                                    .unwrap_or(Err(UpstreamError::Timeout)),
                                None => attempt.await,
                            }
                        }
                    }),
                );
            // service_fn is always ready. Boxed: the attempt (an HTTP
            // client's future under a timeout) is kilobytes, and every request
            // future holding it inline was copied whole at each layer on the
            // way in.
            let pending = Box::pin(stack.call(()));
            match pending.refused() {
                Some(why) => {
                    self.back_at = earliest(
                        self.back_at,
                        why.until().or(match why {
                            Unavailable::Saturated | Unavailable::Probing => {
                                Some(now + Duration::from_secs(1))
                            }
                            _ => None,
                        }),
                    );
                }
                None => {
                    return Some(Picked {
                        skipped: k,
                        index,
                        model,
                        call: pending,
                    })
                }
            }
        }
        None
    }
}

/// One admitted attempt: make the call (under its timeout), classify what
/// came back and record it: the attempt metrics (a stream's when it ends),
/// the tier's escalation count, the run's record.
async fn attempt<T, P>(
    chain: &Chain,
    w: &mut Walk,
    target: usize,
    picked: Picked<P>,
    mode: Mode,
    check: Check<'_, T>,
) -> Result<Served<T>, UpstreamError>
where
    P: Future<Output = Result<Admitted<T>, Refused>>,
{
    let t = &chain.targets[target];
    let metrics = &t.metrics[picked.index];
    let started = Instant::now();
    let result = picked.call.await;
    let elapsed = started.elapsed();
    let mut record = AttemptRecord {
        target,
        model: picked.model,
        attempt: w.total,
        status: Some(200),
        outcome: AttemptOutcome::Success,
        error: None,
        elapsed,
        retry_after: None,
    };
    // an answer not worth serving is a failed attempt (its permit freed,
    // nothing said about the model's health)
    let invalid = match &result {
        Ok(a) if t.validate_output => check(picked.model, &a.value).err(),
        _ => None,
    };
    let result = match (result, invalid) {
        (Ok(_), Some(why)) => Err(Refused::Failed(UpstreamError::InvalidOutput(why))),
        (result, _) => result,
    };
    let err = match result {
        Ok(Admitted { value, permit }) => {
            if let Some(tier) = t.tier {
                chain.escalation[tier].success();
            }
            let open = match mode {
                Mode::Complete => {
                    metrics.upstream_duration.observe(elapsed.as_secs_f64());
                    metrics.outcomes[AttemptOutcome::Success.index()].inc();
                    None
                }
                // a stream's attempt is counted when the stream ends (it
                // may still break); its first content came now
                Mode::Stream => Some({
                    metrics.ttft.observe(elapsed.as_secs_f64());
                    OpenAttempt {
                        target,
                        index: picked.index,
                        started,
                        permit,
                    }
                }),
            };
            w.run.attempts.push(record);
            return Ok(Served {
                target,
                model: picked.model,
                index: picked.index,
                value,
                open,
            });
        }
        Err(Refused::Failed(e)) => e,
        // admission was checked when picked; it cannot refuse now
        Err(Refused::Unavailable(_)) => UpstreamError::Connect("refused at admission".into()),
    };
    metrics.upstream_duration.observe(elapsed.as_secs_f64());
    let outcome = classify::outcome(&err);
    metrics.outcomes[outcome.index()].inc();
    escalation_failure(chain, target, outcome);
    record.status = err.status();
    record.outcome = outcome;
    record.error = Some(err.to_string());
    record.retry_after = match &err {
        UpstreamError::Status { retry_after, .. } => *retry_after,
        _ => None,
    };
    w.run.attempts.push(record);
    Err(err)
}

fn count_fallback(chain: &Chain, from: usize, to: usize) {
    let counter = chain.targets[from].fallbacks.get(to, || {
        chain
            .metrics
            .fallbacks
            .with_label_values(&[&chain.targets[from].label, &chain.targets[to].label])
    });
    if let Some(c) = counter {
        c.inc();
    }
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
