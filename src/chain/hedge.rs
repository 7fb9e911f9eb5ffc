//! Hedging: when the attempt in flight has not answered within the tier's
//! `hedge_after_ms` (or its model's own latency percentile), one more
//! attempt starts on the next candidate (the tier's next model, else the
//! first model of a following tier) without stopping the first. The first
//! answer (on a `validate_output` tier, the first valid one) wins; the
//! others are dropped at once: their connections close, their permits are
//! freed unrecorded, their outcome is `cancelled`. A hedge takes one of its
//! tier's attempts and one of `max_total_attempts`; it is not a retry.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::breaker::{Admitted, Refused};
use super::classify::{classify, Verdict};
use super::route::Step;
use super::targets::Chain;
use super::types::{Check, Mode, Served};
use super::walk::{cancelled, count_fallback, land, At, Cursor, Picked, Walk};
use crate::config::{Hedge, HedgeAfter, ModelId};
use crate::providers::UpstreamError;

/// What a race needs to know of the walk around it.
pub(super) struct Race<'a> {
    pub(super) hedge: Hedge,
    /// The route's steps and which one the walk is on.
    pub(super) steps: (&'a [Step], usize),
    pub(super) mode: Mode,
    pub(super) deadline: Instant,
    pub(super) paid_allowed: &'a (dyn Fn() -> bool + Sync),
}

/// How long to wait for `model` before hedging (None: no hedge, as when a
/// percentile has too few samples behind it).
fn wait(chain: &Chain, h: &Hedge, model: ModelId, mode: Mode) -> Option<Duration> {
    match h.after {
        HedgeAfter::Fixed(d) => Some(d),
        HedgeAfter::Percentile(q) => chain.latency[model].quantile(mode.waits_for(), q),
    }
}

/// Run `first` (already counted as an attempt of `tier`), hedging it as the
/// tier says. `more(walk, target, from, now)` admits the next model of a
/// target from a position. Ok: the winner; Err: every attempt failed (the
/// last failure, and where it happened), or one failed in a way that ends
/// the request (the client's request is wrong: the others are cancelled).
pub(super) async fn race<T, P, G>(
    chain: &Chain,
    w: &mut Walk,
    (r, tier): (&Race<'_>, &mut Cursor),
    first: Picked<P>,
    check: Check<'_, T>,
    more: &mut G,
) -> Result<Served<T>, (UpstreamError, At)>
where
    P: Future<Output = Result<Admitted<T>, Refused>>,
    G: FnMut(&mut Walk, usize, usize, Instant) -> Option<Picked<P>>,
{
    let hedging_tier = tier.target;
    let mut at = first.at;
    at.number = w.total;
    at.started = Instant::now();
    // (where, call, whether it is a hedge)
    let mut flights: Vec<(At, Pin<Box<P>>, bool)> = vec![(at, first.call, false)];
    let mut hedges = 0u32;
    let mut timer: Option<Pin<Box<Sleep>>> = wait(chain, &r.hedge, at.model, r.mode)
        .map(|d| Box::pin(tokio::time::sleep_until(at.started + d)));
    let counter = |won: bool| {
        if let Some(c) = &chain.targets[hedging_tier].hedges {
            c[usize::from(!won)].inc();
        }
    };
    loop {
        let event = std::future::poll_fn(|cx| {
            for (i, (_, call, _)) in flights.iter_mut().enumerate() {
                if let Poll::Ready(result) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, result)));
                }
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        let Some((i, result)) = event else {
            timer = None;
            let now = Instant::now();
            let room = hedges < r.hedge.max
                && w.total < chain.config.policy.max_total_attempts
                && now < r.deadline;
            if !room {
                continue;
            }
            w.exclude = flights.iter().map(|f| f.0.model).collect();
            let next = candidate(chain, w, (r, &mut *tier), now, more);
            w.exclude.clear();
            if let Some(p) = next {
                w.total += 1;
                hedges += 1;
                w.run.hedges += 1;
                let mut at = p.at;
                at.number = w.total;
                at.started = now;
                at.hedge = true;
                if hedges < r.hedge.max {
                    timer = wait(chain, &r.hedge, at.model, r.mode)
                        .map(|d| Box::pin(tokio::time::sleep_until(now + d)));
                }
                flights.push((at, p.call, true));
            } else if let Some(d) = flights
                .first()
                .and_then(|f| wait(chain, &r.hedge, f.0.model, r.mode))
            {
                // nothing to hedge on now (every candidate refused): look
                // again after the same wait
                timer = Some(Box::pin(tokio::time::sleep_until(now + d)));
            }
            continue;
        };
        let (at, call, hedge) = flights.swap_remove(i);
        drop(call);
        // the others lose: stopped now, recorded before the last record (a
        // stream's attempt is the run's last until it ends)
        let mut stop_others = |w: &mut Walk| {
            let losers: Vec<_> = flights
                .drain(..)
                .map(|(at, call, hedge)| {
                    drop(call);
                    if hedge {
                        counter(false);
                    }
                    cancelled(chain, at)
                })
                .collect();
            let last = w.run.attempts.len().saturating_sub(1);
            w.run.attempts.splice(last..last, losers);
        };
        match land(chain, w, at, result, r.mode, check) {
            Ok(served) => {
                stop_others(w);
                if hedge {
                    counter(true);
                }
                if served.target != hedging_tier {
                    count_fallback(chain, hedging_tier, served.target);
                }
                return Ok(served);
            }
            Err(e) => {
                if hedge {
                    counter(false);
                }
                let first_tier = w.run.tried.first() == Some(&at.target);
                if classify(&e, first_tier) == Verdict::Fatal {
                    stop_others(w);
                    return Err((e, at));
                }
                if flights.is_empty() {
                    return Err((e, at));
                }
            }
        }
    }
}

/// The next attempt a hedge makes: the tier's next model not in flight
/// while it has attempts left, else the first admitted model of a following
/// tier (never a paid one on a spent budget; a minor request's route holds
/// no paid tier). Counted against the tier it runs on.
fn candidate<P, G>(
    chain: &Chain,
    w: &mut Walk,
    (r, tier): (&Race<'_>, &mut Cursor),
    now: Instant,
    more: &mut G,
) -> Option<Picked<P>>
where
    G: FnMut(&mut Walk, usize, usize, Instant) -> Option<Picked<P>>,
{
    let (steps, si) = r.steps;
    let paid_ok = |target: usize| chain.targets[target].free || (r.paid_allowed)();
    if tier.attempts <= steps[si].max_retries && paid_ok(tier.target) {
        if let Some(p) = more(w, tier.target, tier.next(), now) {
            tier.took(&p);
            return Some(p);
        }
    }
    for step in &steps[si + 1..] {
        let t = &chain.targets[step.target];
        if !t.enabled || !paid_ok(step.target) {
            continue;
        }
        let ahead = *w.ahead(chain, step.target, r.mode);
        if ahead.attempts > step.max_retries {
            continue;
        }
        if let Some(p) = more(w, step.target, ahead.next(), now) {
            w.ahead(chain, step.target, r.mode).took(&p);
            w.tried(step.target);
            return Some(p);
        }
    }
    None
}
