//! One step of the walk: admission (the next model its health admits, its
//! call built under the per-model stack) and the attempt itself (made,
//! classified, recorded).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::breaker::{Admitted, HealthLayer, Refused};
use super::classify;
use super::health::{earliest, Unavailable};
use super::targets::Chain;
use super::types::{
    escalation_failure, AttemptRecord, Call, Check, Mode, OpenAttempt, Run, Served,
};
use crate::config::ModelId;
use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

/// An admitted attempt, not yet awaited.
/// The walk's state between attempts.
pub(super) struct Walk {
    pub(super) run: Run,
    /// Attempts on the whole request.
    pub(super) total: u32,
    pub(super) deadline_hit: bool,
    /// When the first model refused at admission may be back.
    pub(super) back_at: Option<Instant>,
    /// After a context-length failure: only models with a larger window.
    pub(super) min_window: Option<u64>,
    /// A retry's delay, slept before choosing the model (a 429's rest ends
    /// with its Retry-After).
    pub(super) retry_delay: Duration,
    /// The pause between tiers, slept once the next tier has a model to try
    /// (so never after the last attempt).
    pub(super) tier_pause: Duration,
    pub(super) budget_skipped: bool,
    /// Continuing a stream `Some(model)` broke: only models that take a
    /// prefill, never that one.
    pub(super) continuing: Option<ModelId>,
}

pub(super) struct Picked<P> {
    /// Models of the tier passed over to reach it.
    pub(super) skipped: usize,
    pub(super) index: usize,
    pub(super) model: ModelId,
    pub(super) call: Pin<Box<P>>,
}

impl Walk {
    pub(super) fn new(run: Run, continuing: Option<ModelId>) -> Walk {
        Walk {
            total: u32::try_from(run.attempts.len()).unwrap_or(u32::MAX),
            run,
            deadline_hit: false,
            back_at: None,
            min_window: None,
            retry_delay: Duration::ZERO,
            tier_pause: Duration::ZERO,
            budget_skipped: false,
            continuing,
        }
    }

    /// Whether a model may be tried now: enabled, and (after a
    /// context-length failure) with a larger window or one not configured
    /// (it may well be larger).
    fn eligible(&self, chain: &Chain, model: ModelId) -> bool {
        let m = &chain.config.models[model];
        m.enabled
            && self
                .continuing
                .is_none_or(|broken| m.prefill && model != broken)
            && self
                .min_window
                .is_none_or(|w| m.context_window.is_none_or(|mw| mw > w))
    }

    /// Sleep what is owed before the next attempt on `target`: a retry's
    /// delay, or the pause between tiers if a model of it would be admitted.
    /// Never past the deadline.
    pub(super) async fn sleep_owed(&mut self, chain: &Chain, target: usize, deadline: Instant) {
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
    pub(super) fn pick<T, F, Fut>(
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
pub(super) async fn attempt<T, P>(
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
