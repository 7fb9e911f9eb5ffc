//! What the chain runs over, resolved once at load: the targets a route's
//! steps point at, each model's health, each tier's escalation state.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use prometheus::{Histogram, IntCounter};

use super::health::Health;
use super::latency::{Kind, Latency};
use crate::config::{Config, Hedge, Limit, MidStream, ModelId, Strategy, TierId};
use crate::metrics::{AttemptMetrics, LazyCounters, Metrics};
use crate::outcome::RequestOutcome;
use crate::shared::{Attached, Event};

/// Something a chain step can point at: a tier, or (for requests naming a
/// model directly) a single model.
pub struct Target {
    /// The tier name, or `model:NAME` for a direct model request.
    pub label: String,
    pub tier: Option<TierId>,
    pub models: Vec<ModelId>,
    pub strategy: Strategy,
    /// Non-streaming: the whole attempt; streaming: the longest quiet gap.
    pub timeout: Limit,
    pub first_token_timeout: Limit,
    pub hedge: Option<Hedge>,
    /// cascade_hedges_total{tier=label, result=won|lost}, when `hedge` is set.
    pub hedges: Option<[IntCounter; 2]>,
    pub max_retries: u32,
    /// A timed-out attempt is retried here (else the next tier is tried).
    pub retry_on_timeout: bool,
    /// Answers are checked before they are served.
    pub validate_output: bool,
    pub mid_stream: MidStream,
    pub free: bool,
    pub enabled: bool,
    /// Aligned with `models`.
    pub metrics: Vec<AttemptMetrics>,
    pub request_duration: Histogram,
    /// cascade_requests_total{tier=label, outcome="success"}: the common case,
    /// resolved at load.
    pub served: IntCounter,
    /// cascade_requests_total{tier=label, outcome} for the other outcomes,
    /// by `RequestOutcome as usize`.
    pub outcomes: LazyCounters,
    /// cascade_fallbacks_total{from_tier=label, to_tier}, by target index.
    pub fallbacks: LazyCounters,
    /// `label` as the x-cascade-tier header value.
    pub label_header: Option<HeaderValue>,
    /// Where the next round-robin request starts.
    pub rr: AtomicUsize,
}

/// A tier's escalation state (docs/configuration.md, tiers): consecutive failed attempts across
/// requests, and escalations owed to the next requests. With shared state
/// (and Redis answering) both are counted in Redis and mirrored here.
#[derive(Debug, Default)]
pub struct Escalation {
    consecutive: AtomicU32,
    pending: AtomicU32,
    shared: OnceLock<Attached>,
}

impl Escalation {
    /// Share this tier's counts (once; later calls do nothing).
    pub fn attach(&self, link: &Arc<crate::shared::Link>, tier: &str) {
        let _ = self.shared.set(Attached::new(link, tier));
    }

    fn shared_live(&self) -> Option<&Attached> {
        self.shared.get().filter(|a| a.live())
    }

    /// Count a failed attempt; when the count reaches `after` it starts again
    /// from zero and one escalation is owed. Exact under concurrency: each
    /// failure moves the count by one, and only the one reaching `after` fires.
    /// Shared: Redis counts (exactly once per `after` across replicas).
    pub fn failure(&self, after: u32) -> bool {
        if let Some(s) = self.shared_live() {
            s.link.send(Event::EscFailure {
                tier: Arc::clone(&s.name),
                after,
            });
            return false;
        }
        let mut cur = self.consecutive.load(Ordering::Acquire);
        loop {
            let next = if cur + 1 >= after { 0 } else { cur + 1 };
            match self.consecutive.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if next == 0 {
                        self.pending.fetch_add(1, Ordering::AcqRel);
                        return true;
                    }
                    return false;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn success(&self) {
        if self.consecutive.swap(0, Ordering::AcqRel) != 0 {
            if let Some(s) = self.shared_live() {
                s.link.send(Event::EscSuccess {
                    tier: Arc::clone(&s.name),
                });
            }
        }
    }

    /// Take one owed escalation, if any.
    pub fn take(&self) -> bool {
        let took = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok();
        if let Some(s) = self.shared_live().filter(|_| took) {
            s.link.send(Event::EscTaken {
                tier: Arc::clone(&s.name),
            });
        }
        took
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// The counts as Redis has them (the worker).
    pub fn mirror(&self, consecutive: u32, pending: u32) {
        self.consecutive.store(consecutive, Ordering::Release);
        self.pending.store(pending, Ordering::Release);
    }
}

/// The chain's world: the config it was built from, its targets (tiers
/// first, same index as `config.tiers`, then one per model), each model's
/// health and each tier's escalation state.
pub struct Chain {
    pub config: Arc<Config>,
    pub targets: Vec<Target>,
    /// One per model.
    pub health: Vec<Arc<Health>>,
    /// One per model.
    pub latency: Vec<Arc<Latency>>,
    /// One per tier.
    pub escalation: Vec<Arc<Escalation>>,
    pub metrics: Arc<Metrics>,
}

impl Chain {
    /// Resolve the targets of a config. With `previous` (a reload), model
    /// health and escalation counters are kept where nothing they depend on
    /// changed, so open circuits stay open.
    pub fn build(config: &Arc<Config>, metrics: &Arc<Metrics>, previous: Option<&Chain>) -> Chain {
        let health = config
            .models
            .iter()
            .map(|m| {
                let kept = previous.and_then(|old| {
                    let oc = &old.config;
                    let i = oc.models.iter().position(|om| {
                        om.name == m.name
                            && om.upstream == m.upstream
                            && om.max_concurrency == m.max_concurrency
                            && oc.providers[om.provider] == config.providers[m.provider]
                            && oc.breaker.failure_threshold == config.breaker.failure_threshold
                            && oc.breaker.open == config.breaker.open
                    })?;
                    Some(Arc::clone(&old.health[i]))
                });
                kept.unwrap_or_else(|| {
                    Arc::new(Health::new(
                        config.breaker,
                        m.max_concurrency,
                        metrics.circuit_open.with_label_values(&[&m.name]),
                    ))
                })
            })
            .collect();
        let latency = config
            .models
            .iter()
            .map(|m| {
                let kept = previous.and_then(|old| {
                    let i = old.config.models.iter().position(|om| {
                        om.name == m.name && om.upstream == m.upstream && om.provider == m.provider
                    })?;
                    let l = &old.latency[i];
                    l.same_adaptive(&config.policy.adaptive_timeout)
                        .then(|| Arc::clone(l))
                });
                kept.unwrap_or_else(|| Arc::new(Latency::new(&config.policy.adaptive_timeout)))
            })
            .collect();
        let escalation = config
            .tiers
            .iter()
            .map(|t| {
                previous
                    .and_then(|old| {
                        let i = old.config.tiers.iter().position(|ot| {
                            ot.name == t.name
                                && ot.escalate.map(|e| e.after) == t.escalate.map(|e| e.after)
                        })?;
                        Some(Arc::clone(&old.escalation[i]))
                    })
                    .unwrap_or_default()
            })
            .collect();
        let n_targets = config.tiers.len() + config.models.len();
        let mut targets = Vec::with_capacity(n_targets);
        for (i, t) in config.tiers.iter().enumerate() {
            targets.push(Target {
                label: t.name.clone(),
                tier: Some(i),
                metrics: t
                    .models
                    .iter()
                    .map(|&m| AttemptMetrics::new(metrics, &t.name, &config.models[m].name))
                    .collect(),
                request_duration: metrics.request_duration.with_label_values(&[&t.name]),
                served: metrics.requests.with_label_values(&[&t.name, "success"]),
                outcomes: LazyCounters::new(RequestOutcome::COUNT),
                fallbacks: LazyCounters::new(n_targets),
                label_header: HeaderValue::from_str(&t.name).ok(),
                models: t.models.clone(),
                strategy: t.strategy,
                timeout: t.timeout,
                first_token_timeout: t.first_token_timeout,
                hedge: t.hedge,
                hedges: t.hedge.map(|_| {
                    ["won", "lost"].map(|r| metrics.hedges.with_label_values(&[&t.name, r]))
                }),
                max_retries: t.max_retries,
                retry_on_timeout: t.retry_on_timeout,
                validate_output: t.validate_output,
                mid_stream: t.mid_stream,
                free: t.free,
                enabled: t.enabled,
                rr: AtomicUsize::new(0),
            });
        }
        let p = &config.policy;
        for (i, m) in config.models.iter().enumerate() {
            let label = config.target_label(config.tiers.len() + i);
            targets.push(Target {
                metrics: vec![AttemptMetrics::new(metrics, &label, &m.name)],
                request_duration: metrics.request_duration.with_label_values(&[&label]),
                served: metrics.requests.with_label_values(&[&label, "success"]),
                outcomes: LazyCounters::new(RequestOutcome::COUNT),
                fallbacks: LazyCounters::new(n_targets),
                label_header: HeaderValue::from_str(&label).ok(),
                label,
                tier: None,
                models: vec![i],
                strategy: Strategy::Ordered,
                timeout: Limit::Fixed(p.default_timeout),
                first_token_timeout: Limit::Fixed(p.default_first_token_timeout),
                hedge: None,
                hedges: None,
                max_retries: p.default_max_retries,
                retry_on_timeout: p.retry_on_timeout,
                validate_output: false,
                mid_stream: MidStream::Error,
                free: m.prices.is_free(),
                enabled: true,
                rr: AtomicUsize::new(0),
            });
        }
        Chain {
            config: Arc::clone(config),
            targets,
            health,
            latency,
            escalation,
            metrics: Arc::clone(metrics),
        }
    }

    /// How long an attempt on `model` for `target` may wait for `answer`:
    /// the whole answer (`Total`), or a stream's first content (`Ttft`).
    pub fn answer_limit(&self, target: usize, model: ModelId, answer: Kind) -> Duration {
        let t = &self.targets[target];
        match answer {
            Kind::Ttft => self.resolve(t.first_token_timeout, model, Kind::Ttft),
            Kind::Total | Kind::Gap => self.resolve(t.timeout, model, answer),
        }
    }

    /// The longest quiet gap in a stream on `target` from `model`.
    pub fn gap_limit(&self, target: usize, model: ModelId) -> Duration {
        self.resolve(self.targets[target].timeout, model, Kind::Gap)
    }

    fn resolve(&self, limit: Limit, model: ModelId, kind: Kind) -> Duration {
        match limit {
            Limit::Fixed(d) => d,
            Limit::Auto => self.latency[model].timeout(kind, &self.config.policy.adaptive_timeout),
        }
    }

    pub fn tier_target(&self, tier: TierId) -> usize {
        tier
    }

    pub fn model_target(&self, model: ModelId) -> usize {
        self.config.tiers.len() + model
    }

    /// The labels of `targets` joined with ',' (x-cascade-chain, the ledger,
    /// the log line).
    pub fn label(&self, targets: &[usize]) -> String {
        let mut out = String::new();
        for (i, &t) in targets.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.targets[t].label);
        }
        out
    }
}
