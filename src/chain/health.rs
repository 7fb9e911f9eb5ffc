//! A model's health: circuit breaker, rate-limit rest and concurrency cap.
//! The chain asks `admit` before an attempt (an unavailable model is skipped
//! without spending an attempt) and reports the outcome through the permit.
//! State is per model; the lock is held for a few instructions, never across
//! an await.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use super::classify::HealthEffect;
use crate::config::Breaker;
use crate::shared::{Attached, Event};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe may go through; `probing` while it is in flight.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    rest_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Health {
    breaker: Breaker,
    max_concurrency: u32,
    in_flight: AtomicU32,
    state: Mutex<State>,
    open_gauge: IntGauge,
    /// With shared state: the link, and whether this replica holds the
    /// half-open probe (only the holder probes while Redis answers).
    shared: OnceLock<Attached>,
    probe_claimed: AtomicBool,
}

/// Why a model was skipped, and when it may be back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    Open(Instant),
    Resting(Instant),
    /// A half-open probe is in flight.
    Probing,
    Saturated,
}

impl Unavailable {
    pub fn until(self) -> Option<Instant> {
        match self {
            Unavailable::Open(t) | Unavailable::Resting(t) => Some(t),
            Unavailable::Probing | Unavailable::Saturated => None,
        }
    }
}

/// Leave to make one call. Dropping it without `record` (a cancelled call)
/// frees the slot and lets another probe through.
#[derive(Debug)]
pub struct Permit {
    health: Arc<Health>,
    probe: bool,
    recorded: bool,
}

impl Health {
    pub fn new(breaker: Breaker, max_concurrency: u32, open_gauge: IntGauge) -> Self {
        open_gauge.set(0);
        Self {
            breaker,
            max_concurrency,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(State {
                circuit: Circuit::Closed { failures: 0 },
                rest_until: None,
            }),
            open_gauge,
            shared: OnceLock::new(),
            probe_claimed: AtomicBool::new(false),
        }
    }

    /// Share this model's circuit and rests (once; later calls do nothing).
    pub fn attach(&self, link: &Arc<crate::shared::Link>, model: &str) {
        let _ = self.shared.set(Attached::new(link, model));
    }

    /// Shared, and Redis answering: probes are claimed, changes sent.
    fn shared_live(&self) -> Option<&Attached> {
        self.shared.get().filter(|a| a.live())
    }

    /// A probe is due (or nearly: within `lead`) and nobody here holds it.
    pub fn wants_probe(&self, now: Instant, lead: Duration) -> bool {
        if self.breaker.failure_threshold == 0 || self.probe_claimed.load(Ordering::Acquire) {
            return false;
        }
        match self.lock().circuit {
            Circuit::Open { until } => until <= now + lead,
            Circuit::HalfOpen { probing } => !probing,
            Circuit::Closed { .. } => false,
        }
    }

    /// This replica won the half-open probe.
    pub fn claim_probe(&self) {
        self.probe_claimed.store(true, Ordering::Release);
    }

    /// Another replica opened the circuit (or probes it): skip the model for
    /// `remaining`.
    pub fn apply_open(&self, remaining: Duration) {
        if self.breaker.failure_threshold == 0 {
            return;
        }
        let until = Instant::now() + remaining;
        let mut s = self.lock();
        let later = match s.circuit {
            Circuit::Open { until: u } => until > u + Duration::from_millis(50),
            _ => true,
        };
        if later {
            self.set_circuit(&mut s, Circuit::Open { until });
        }
        self.probe_claimed.store(false, Ordering::Release);
    }

    /// Another replica found the model up.
    pub fn apply_close(&self) {
        let mut s = self.lock();
        if !matches!(s.circuit, Circuit::Closed { .. }) {
            self.set_circuit(&mut s, Circuit::Closed { failures: 0 });
        }
        self.probe_claimed.store(false, Ordering::Release);
    }

    /// Another replica got a 429: rest at least `remaining`.
    pub fn apply_rest(&self, remaining: Duration) {
        let until = Instant::now() + remaining;
        let mut s = self.lock();
        if s.rest_until.is_none_or(|t| t < until) {
            s.rest_until = Some(until);
        }
    }

    /// With shared state, only the replica holding the probe may probe.
    fn may_probe(&self) -> bool {
        self.shared_live().is_none() || self.probe_claimed.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // a poisoned lock only means a panic elsewhere; the state is still usable
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn circuit(&self) -> Circuit {
        self.lock().circuit
    }

    pub fn resting_until(&self) -> Option<Instant> {
        self.lock().rest_until.filter(|t| *t > Instant::now())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether `admit` would let a call through now (changes nothing).
    pub fn would_admit(&self, now: Instant) -> bool {
        if self.max_concurrency > 0 && self.in_flight() >= self.max_concurrency {
            return false;
        }
        if self.breaker.failure_threshold == 0 {
            return true;
        }
        let s = self.lock();
        if s.rest_until.is_some_and(|t| t > now) {
            return false;
        }
        match s.circuit {
            Circuit::Closed { .. } => true,
            Circuit::HalfOpen { probing: false } => self.may_probe(),
            Circuit::Open { until } => until <= now && self.may_probe(),
            Circuit::HalfOpen { probing: true } => false,
        }
    }

    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, Unavailable> {
        let mut probe = false;
        if self.breaker.failure_threshold > 0 {
            let mut s = self.lock();
            if let Some(until) = s.rest_until {
                if until > now {
                    return Err(Unavailable::Resting(until));
                }
                s.rest_until = None;
            }
            match s.circuit {
                Circuit::Closed { .. } => {}
                Circuit::Open { until } if until > now => return Err(Unavailable::Open(until)),
                // another replica holds the probe
                Circuit::Open { .. } | Circuit::HalfOpen { probing: false }
                    if !self.may_probe() =>
                {
                    return Err(Unavailable::Probing)
                }
                Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => {
                    s.circuit = Circuit::HalfOpen { probing: true };
                    probe = true;
                }
                Circuit::HalfOpen { probing: true } => return Err(Unavailable::Probing),
            }
        }
        if self.max_concurrency > 0 {
            let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
            if prev >= self.max_concurrency {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                if probe {
                    self.lock().circuit = Circuit::HalfOpen { probing: false };
                }
                return Err(Unavailable::Saturated);
            }
        } else {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Permit {
            health: Arc::clone(self),
            probe,
            recorded: false,
        })
    }

    fn set_circuit(&self, s: &mut State, c: Circuit) {
        s.circuit = c;
        self.open_gauge
            .set(i64::from(!matches!(c, Circuit::Closed { .. })));
    }
}

impl Permit {
    /// Report what the call did to the model's health.
    pub fn record(mut self, effect: HealthEffect) {
        self.recorded = true;
        let h = &self.health;
        if h.breaker.failure_threshold == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = h.lock();
        let before = s.circuit;
        let mut rested = None;
        match effect {
            HealthEffect::Success => h.set_circuit(&mut s, Circuit::Closed { failures: 0 }),
            HealthEffect::Neutral => {
                if self.probe {
                    // the model answered: it is up
                    h.set_circuit(&mut s, Circuit::Closed { failures: 0 });
                }
            }
            HealthEffect::RateLimited(retry_after) => {
                let rest = retry_after.unwrap_or(h.breaker.open);
                s.rest_until = Some(now + rest);
                if self.probe {
                    h.set_circuit(&mut s, Circuit::HalfOpen { probing: false });
                }
                rested = Some(rest);
            }
            HealthEffect::Failure => {
                let open = Circuit::Open {
                    until: now + h.breaker.open,
                };
                match s.circuit {
                    Circuit::Closed { failures } => {
                        let failures = failures + 1;
                        if failures >= h.breaker.failure_threshold {
                            h.set_circuit(&mut s, open);
                        } else {
                            s.circuit = Circuit::Closed { failures };
                        }
                    }
                    Circuit::HalfOpen { .. } if self.probe => h.set_circuit(&mut s, open),
                    // a failure of a call admitted before the circuit opened
                    _ => {}
                }
            }
        }
        let opened = matches!(s.circuit, Circuit::Open { .. }) && s.circuit != before;
        let closed = !matches!(before, Circuit::Closed { .. })
            && matches!(s.circuit, Circuit::Closed { .. });
        drop(s);
        if self.probe {
            // the probe is spent: the next one is claimed again
            h.probe_claimed.store(false, Ordering::Release);
        }
        let Some(shared) = h.shared_live() else {
            return;
        };
        let model = Arc::clone(&shared.name);
        if let Some(rest) = rested {
            shared.link.send(Event::Rest {
                model: Arc::clone(&model),
                ms: millis(rest),
            });
        }
        if closed {
            shared.link.send(Event::Close { model });
        } else if opened {
            shared.link.send(Event::Open {
                model,
                ms: millis(h.breaker.open),
            });
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.probe && !self.recorded {
            let mut s = self.health.lock();
            if s.circuit == (Circuit::HalfOpen { probing: true }) {
                s.circuit = Circuit::HalfOpen { probing: false };
            }
        }
    }
}

/// The earliest of two optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Time from now until `t` (zero if past).
pub fn until(t: Instant) -> Duration {
    t.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32, open_ms: u64, max_concurrency: u32) -> Arc<Health> {
        Arc::new(Health::new(
            Breaker {
                failure_threshold: threshold,
                open: Duration::from_millis(open_ms),
            },
            max_concurrency,
            IntGauge::new("g", "g").unwrap(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_half_open_probe_closes() {
        let h = health(3, 1000, 0);
        for _ in 0..2 {
            h.admit(Instant::now())
                .unwrap()
                .record(HealthEffect::Failure);
        }
        assert_eq!(h.circuit(), Circuit::Closed { failures: 2 });
        h.admit(Instant::now())
            .unwrap()
            .record(HealthEffect::Failure);
        assert!(matches!(h.admit(Instant::now()), Err(Unavailable::Open(_))));
        assert_eq!(h.open_gauge.get(), 1);

        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = h.admit(Instant::now()).unwrap();
        // only one probe at a time
        assert_eq!(h.admit(Instant::now()).unwrap_err(), Unavailable::Probing);
        probe.record(HealthEffect::Success);
        assert_eq!(h.circuit(), Circuit::Closed { failures: 0 });
        assert_eq!(h.open_gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let h = health(1, 1000, 0);
        h.admit(Instant::now())
            .unwrap()
            .record(HealthEffect::Failure);
        tokio::time::advance(Duration::from_millis(1001)).await;
        h.admit(Instant::now())
            .unwrap()
            .record(HealthEffect::Failure);
        assert!(matches!(h.admit(Instant::now()), Err(Unavailable::Open(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_lets_another_through() {
        let h = health(1, 10, 0);
        h.admit(Instant::now())
            .unwrap()
            .record(HealthEffect::Failure);
        tokio::time::advance(Duration::from_millis(11)).await;
        drop(h.admit(Instant::now()).unwrap());
        assert!(h.admit(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_never_open_and_zero_threshold_disables() {
        let h = health(1, 1000, 0);
        for _ in 0..5 {
            h.admit(Instant::now())
                .unwrap()
                .record(HealthEffect::Neutral);
        }
        assert_eq!(h.circuit(), Circuit::Closed { failures: 0 });
        let off = health(0, 1000, 0);
        for _ in 0..5 {
            off.admit(Instant::now())
                .unwrap()
                .record(HealthEffect::Failure);
            off.admit(Instant::now())
                .unwrap()
                .record(HealthEffect::RateLimited(None));
        }
        assert!(off.admit(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_rests_for_retry_after() {
        let h = health(5, 30_000, 0);
        h.admit(Instant::now())
            .unwrap()
            .record(HealthEffect::RateLimited(Some(Duration::from_secs(2))));
        assert!(matches!(
            h.admit(Instant::now()),
            Err(Unavailable::Resting(_))
        ));
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert!(h.admit(Instant::now()).is_ok());
        // a 429 is not a failure
        assert_eq!(h.circuit(), Circuit::Closed { failures: 0 });
    }

    #[tokio::test]
    async fn saturation_skips_never_queues() {
        let h = health(5, 1000, 2);
        let a = h.admit(Instant::now()).unwrap();
        let _b = h.admit(Instant::now()).unwrap();
        assert_eq!(h.admit(Instant::now()).unwrap_err(), Unavailable::Saturated);
        drop(a);
        assert!(h.admit(Instant::now()).is_ok());
    }
}
