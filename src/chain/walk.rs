//! One step of the walk: where a tier starts (its strategy), admission (the
//! next model its health admits, its call built under the per-model stack)
//! and the attempt itself (made, classified, recorded).

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
use crate::config::{ModelId, Strategy};
use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

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
    /// Models with an attempt in flight (a hedge goes elsewhere).
    pub(super) exclude: Vec<ModelId>,
    /// The tier the walk itself is on (a fallback is counted leaving it).
    pub(super) on: Option<usize>,
    /// Tiers a hedge reached before the walk did: where they stand.
    pub(super) ahead: Vec<Cursor>,
}

/// Where the walk stands on one tier.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cursor {
    pub(super) target: usize,
    /// Where its strategy starts this request.
    pub(super) start: usize,
    /// Models tried or passed over since `start`.
    pub(super) cursor: usize,
    /// Attempts made on it.
    pub(super) attempts: u32,
}

impl Cursor {
    pub(super) fn next(&self) -> usize {
        self.start + self.cursor
    }

    /// An attempt was made on the model `skipped` past `next()`.
    pub(super) fn took<P>(&mut self, picked: &Picked<P>) {
        self.cursor += picked.skipped + 1;
        self.attempts += 1;
    }
}

/// An admitted attempt, not yet awaited.
pub(super) struct Picked<P> {
    /// Models of the tier passed over to reach it.
    pub(super) skipped: usize,
    pub(super) at: At,
    pub(super) call: Pin<Box<P>>,
}

/// Which attempt: where, on what, how long it may take, when it started.
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    pub(super) target: usize,
    pub(super) index: usize,
    pub(super) model: ModelId,
    /// What bounds its answer.
    pub(super) limit: Duration,
    /// 1-based, across the request (set when it starts).
    pub(super) number: u32,
    pub(super) started: Instant,
    /// Started as a hedge.
    pub(super) hedge: bool,
}

impl Walk {
    /// `continuing`: the target and model of a stream that broke (the walk
    /// continues it from there).
    pub(super) fn new(run: Run, continuing: Option<(usize, ModelId)>) -> Walk {
        Walk {
            total: u32::try_from(run.attempts.len()).unwrap_or(u32::MAX),
            deadline_hit: false,
            back_at: None,
            min_window: None,
            retry_delay: Duration::ZERO,
            tier_pause: Duration::ZERO,
            budget_skipped: false,
            on: continuing.map(|c| c.0),
            run,
            continuing: continuing.map(|c| c.1),
            exclude: Vec::new(),
            ahead: Vec::new(),
        }
    }

    /// Where the walk starts on `target`: where a hedge left it, else where
    /// its strategy says.
    pub(super) fn enter(&mut self, chain: &Chain, target: usize, mode: Mode) -> Cursor {
        match self.ahead.iter().position(|c| c.target == target) {
            Some(i) => self.ahead.swap_remove(i),
            None => Cursor {
                target,
                start: start(chain, target, mode),
                cursor: 0,
                attempts: 0,
            },
        }
    }

    /// A hedge's view of a tier the walk has not reached: kept for when it does.
    pub(super) fn ahead(&mut self, chain: &Chain, target: usize, mode: Mode) -> &mut Cursor {
        let i = match self.ahead.iter().position(|c| c.target == target) {
            Some(i) => i,
            None => {
                let c = self.enter(chain, target, mode);
                self.ahead.push(c);
                self.ahead.len() - 1
            }
        };
        &mut self.ahead[i]
    }

    /// The walk makes an attempt on `target`: a tier it had not been on is
    /// a fallback from the last one.
    pub(super) fn arrive(&mut self, chain: &Chain, target: usize) {
        if self.on != Some(target) {
            if let Some(from) = self.on {
                count_fallback(chain, from, target);
            }
            self.on = Some(target);
        }
        self.tried(target);
    }

    /// `target` got an attempt (the walk's or a hedge's).
    pub(super) fn tried(&mut self, target: usize) {
        if !self.run.tried.contains(&target) {
            self.run.tried.push(target);
        }
    }

    /// Whether a model may be tried now: enabled, and (after a
    /// context-length failure) with a larger window or one not configured
    /// (it may well be larger).
    fn eligible(&self, chain: &Chain, model: ModelId) -> bool {
        let m = &chain.config.models[model];
        m.enabled
            && !self.exclude.contains(&model)
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
        (mode, deadline): (Mode, Instant),
        call: &mut F,
    ) -> Option<Picked<impl Future<Output = Result<Admitted<T>, Refused>>>>
    where
        F: FnMut(Call) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let t = &chain.targets[target];
        let models = &t.models;
        let n = models.len();
        for k in 0..n {
            let index = (from + k) % n;
            let model = models[index];
            if !self.eligible(chain, model) {
                continue;
            }
            let limit = chain
                .answer_limit(target, model, mode.waits_for())
                .min(deadline.saturating_duration_since(now));
            // a buffered stream bounds its own time: the deadline and the
            // first-token timeout until its first content, the gap after it
            let outer = match (mode, t.mid_stream) {
                (Mode::Stream, crate::config::MidStream::Buffer { .. })
                    if self.continuing.is_none() =>
                {
                    None
                }
                _ => Some(limit),
            };
            let mut stack =
                HealthLayer::new(Arc::clone(&chain.health[model]), mode == Mode::Stream).layer(
                    tower::service_fn(|()| {
                        let attempt = call(Call {
                            model,
                            target,
                            limit,
                            attempt: self.total + 1,
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
                        at: At {
                            target,
                            index,
                            model,
                            limit,
                            number: 0,
                            started: now,
                            hedge: false,
                        },
                        call: pending,
                    })
                }
            }
        }
        None
    }
}

/// Where a tier's attempts start this request, by its strategy.
fn start(chain: &Chain, target: usize, mode: Mode) -> usize {
    let t = &chain.targets[target];
    match t.strategy {
        Strategy::Ordered => 0,
        Strategy::RoundRobin => t.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        Strategy::LeastLatency => fastest(chain, target, mode, Instant::now()),
    }
}

/// `least_latency`: a model owed a probe (no sample, or none for 10 s) if
/// there is one, else the lowest estimate times the attempts in flight on
/// it plus one; estimates within 10% of the lowest are drawn at random.
/// Models their health would refuse are not considered.
fn fastest(chain: &Chain, target: usize, mode: Mode, now: Instant) -> usize {
    let t = &chain.targets[target];
    let mut ranked: Vec<(usize, f64)> = Vec::with_capacity(t.models.len());
    for (i, &m) in t.models.iter().enumerate() {
        let health = &chain.health[m];
        if !chain.config.models[m].enabled || !health.would_admit(now) {
            continue;
        }
        match chain.latency[m].rank(mode.waits_for(), now) {
            None => return i,
            Some(r) => ranked.push((i, r * f64::from(health.in_flight() + 1))),
        }
    }
    let best = ranked.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let near = |r: f64| r <= best * 1.1 || r == best;
    let n = ranked.iter().filter(|r| near(r.1)).count();
    if n == 0 {
        return 0;
    }
    let k = rand::random_range(0..n);
    ranked
        .iter()
        .filter(|r| near(r.1))
        .nth(k)
        .map_or(0, |r| r.0)
}

/// One admitted attempt: make the call and `land` it.
pub(super) async fn attempt<T, P>(
    chain: &Chain,
    w: &mut Walk,
    picked: Picked<P>,
    mode: Mode,
    check: Check<'_, T>,
) -> Result<Served<T>, UpstreamError>
where
    P: Future<Output = Result<Admitted<T>, Refused>>,
{
    let mut at = picked.at;
    at.number = w.total;
    at.started = Instant::now();
    let result = picked.call.await;
    land(chain, w, at, result, mode, check)
}

/// What an attempt came back with: classified and recorded (the attempt
/// metrics, a stream's when it ends; the model's latency; the tier's
/// escalation count; the run's record).
pub(super) fn land<T>(
    chain: &Chain,
    w: &mut Walk,
    at: At,
    result: Result<Admitted<T>, Refused>,
    mode: Mode,
    check: Check<'_, T>,
) -> Result<Served<T>, UpstreamError> {
    let target = at.target;
    let t = &chain.targets[target];
    let metrics = &t.metrics[at.index];
    let started = at.started;
    let now = Instant::now();
    let elapsed = now.duration_since(started);
    let mut record = AttemptRecord {
        target,
        model: at.model,
        attempt: at.number,
        status: Some(200),
        outcome: AttemptOutcome::Success,
        error: None,
        elapsed,
        retry_after: None,
        started,
        hedge: at.hedge,
    };
    // an answer not worth serving is a failed attempt (its permit freed,
    // nothing said about the model's health)
    let invalid = match &result {
        Ok(a) if t.validate_output => check(at.model, &a.value).err(),
        _ => None,
    };
    let result = match (result, invalid) {
        (Ok(_), Some(why)) => Err(Refused::Failed(UpstreamError::InvalidOutput(why))),
        (result, _) => result,
    };
    let latency = &chain.latency[at.model];
    // a held stream answers when it is complete: its wait is no time to
    // first token, and it has no gaps to learn from
    let sampled = mode == Mode::Complete
        || w.continuing.is_some()
        || !matches!(t.mid_stream, crate::config::MidStream::Buffer { .. });
    let err = match result {
        Ok(Admitted { value, permit }) => {
            if let Some(tier) = t.tier {
                chain.escalation[tier].success();
            }
            if sampled {
                latency.success(mode.waits_for(), elapsed, now);
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
                        index: at.index,
                        model: at.model,
                        started,
                        permit,
                        longest_gap: sampled.then_some(Duration::ZERO),
                    }
                }),
            };
            w.run.attempts.push(record);
            return Ok(Served {
                target,
                model: at.model,
                index: at.index,
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
    if outcome != AttemptOutcome::ClientError {
        // a model that fails is not fast, however quickly it failed
        latency.failure(mode.waits_for(), elapsed.max(at.limit), now);
    }
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

/// A hedged attempt that lost: stopped (its call dropped, its slot freed,
/// nothing said about the model's health), recorded as `cancelled`.
pub(super) fn cancelled(chain: &Chain, at: At) -> AttemptRecord {
    chain.targets[at.target].metrics[at.index].outcomes[AttemptOutcome::Cancelled.index()].inc();
    AttemptRecord {
        target: at.target,
        model: at.model,
        attempt: at.number,
        status: None,
        outcome: AttemptOutcome::Cancelled,
        error: None,
        elapsed: at.started.elapsed(),
        retry_after: None,
        started: at.started,
        hedge: at.hedge,
    }
}

pub(super) fn count_fallback(chain: &Chain, from: usize, to: usize) {
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
