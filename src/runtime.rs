//! Everything a request needs, resolved once at load (and swapped whole on
//! reload): the validated config, one HTTP client per provider, each model's
//! health, and per-target metric handles.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use prometheus::{Counter, Histogram, IntCounter};

use crate::chain::health::Health;
use crate::config::{Config, ModelId, Strategy, TierId};
use crate::metrics::{AttemptMetrics, LazyCounters, Metrics};
use crate::providers::{Client, Completion, UpstreamError, UpstreamRequest, UpstreamStream};
use crate::secret::Scrubber;

/// Something a chain step can point at: a tier, or (for requests naming a
/// model directly) a single model.
pub struct Target {
    /// The tier name, or `model:NAME` for a direct model request.
    pub label: String,
    pub tier: Option<TierId>,
    pub models: Vec<ModelId>,
    pub strategy: Strategy,
    pub timeout: Duration,
    pub first_token_timeout: Duration,
    pub max_retries: u32,
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

pub struct Runtime {
    pub config: Arc<Config>,
    /// One per provider.
    pub clients: Vec<Arc<Client>>,
    /// One per model.
    pub health: Vec<Arc<Health>>,
    /// Tiers first (same index as `config.tiers`), then one per model.
    pub targets: Vec<Target>,
    /// One per tier.
    pub escalation: Vec<Arc<Escalation>>,
    pub metrics: Arc<Metrics>,
    /// One per model: its name and its provider's, as header values.
    pub model_headers: Vec<ModelHeaders>,
    /// cascade_requests_total{tier="none", outcome}, by `RequestOutcome as usize`.
    pub unserved: LazyCounters,
    /// cascade_request_duration_seconds{tier="none"}.
    pub unserved_duration: Histogram,
    /// cascade_key_cost_usd_total, one per named key (same index as `config.keys`).
    pub key_cost: Vec<Counter>,
    /// Every credential of this config, to clean what upstreams say.
    pub scrubber: Arc<Scrubber>,
}

/// How many values `RequestOutcome` has.
pub const REQUEST_OUTCOMES: usize = 4;

/// The x-cascade-model and x-cascade-provider values of one model.
pub struct ModelHeaders {
    pub model: Option<HeaderValue>,
    pub provider: Option<HeaderValue>,
}

/// A tier's escalation state (SPEC 4.4): consecutive failed attempts across
/// requests, and escalations owed to the next requests.
#[derive(Debug, Default)]
pub struct Escalation {
    consecutive: AtomicU32,
    pending: AtomicU32,
}

impl Escalation {
    /// Count a failed attempt; when the count reaches `after` it starts again
    /// from zero and one escalation is owed. Exact under concurrency: each
    /// failure moves the count by one, and only the one reaching `after` fires.
    pub fn failure(&self, after: u32) -> bool {
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
        self.consecutive.store(0, Ordering::Release);
    }

    /// Take one owed escalation, if any.
    pub fn take(&self) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok()
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }
}

impl Runtime {
    /// Resolve a config. With `previous` (a reload), provider clients, model
    /// health and escalation counters are kept where nothing they depend on
    /// changed, so pools stay warm and open circuits stay open.
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let clients = config
            .providers
            .iter()
            .map(|p| {
                let kept = previous.and_then(|old| {
                    let i = old.config.providers.iter().position(|op| op == p)?;
                    Some(Arc::clone(&old.clients[i]))
                });
                match kept {
                    Some(c) => Ok(c),
                    None => Client::new(p).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
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
                outcomes: LazyCounters::new(REQUEST_OUTCOMES),
                fallbacks: LazyCounters::new(n_targets),
                label_header: HeaderValue::from_str(&t.name).ok(),
                models: t.models.clone(),
                strategy: t.strategy,
                timeout: t.timeout,
                first_token_timeout: t.first_token_timeout,
                max_retries: t.max_retries,
                free: t.free,
                enabled: t.enabled,
                rr: AtomicUsize::new(0),
            });
        }
        let p = &config.policy;
        for (i, m) in config.models.iter().enumerate() {
            let label = format!("model:{}", m.name);
            targets.push(Target {
                metrics: vec![AttemptMetrics::new(metrics, &label, &m.name)],
                request_duration: metrics.request_duration.with_label_values(&[&label]),
                served: metrics.requests.with_label_values(&[&label, "success"]),
                outcomes: LazyCounters::new(REQUEST_OUTCOMES),
                fallbacks: LazyCounters::new(n_targets),
                label_header: HeaderValue::from_str(&label).ok(),
                label,
                tier: None,
                models: vec![i],
                strategy: Strategy::Ordered,
                timeout: p.default_timeout,
                first_token_timeout: p.default_first_token_timeout,
                max_retries: p.default_max_retries,
                free: m.prices.is_free(),
                enabled: true,
                rr: AtomicUsize::new(0),
            });
        }
        let model_headers = (0..config.models.len())
            .map(|m| ModelHeaders {
                model: HeaderValue::from_str(&config.models[m].name).ok(),
                provider: HeaderValue::from_str(&config.model_provider(m).name).ok(),
            })
            .collect();
        let key_cost = config
            .keys
            .iter()
            .map(|k| metrics.key_cost.with_label_values(&[&k.name]))
            .collect();
        let scrubber = Arc::new(Scrubber::new(config.credentials()));
        Ok(Runtime {
            scrubber,
            unserved: LazyCounters::new(REQUEST_OUTCOMES),
            unserved_duration: metrics.request_duration.with_label_values(&["none"]),
            key_cost,
            model_headers,
            escalation,
            config: Arc::new(config),
            clients,
            health,
            targets,
            metrics: Arc::clone(metrics),
        })
    }

    /// One non-streaming upstream call; what the upstream said in an error
    /// is scrubbed of every credential before anything else sees it.
    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let client = &self.clients[req.model.provider];
        client
            .complete(req)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))
    }

    /// Open an upstream stream; its errors, now and later, are scrubbed.
    pub async fn open_stream(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<UpstreamStream, UpstreamError> {
        use futures_util::StreamExt;
        let client = &self.clients[req.model.provider];
        let stream = client
            .stream(req)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))?;
        let scrubber = Arc::clone(&self.scrubber);
        Ok(Box::pin(
            stream.map(move |r| r.map_err(|e| e.scrubbed(&scrubber))),
        ))
    }

    pub fn tier_target(&self, tier: TierId) -> usize {
        tier
    }

    pub fn model_target(&self, model: ModelId) -> usize {
        self.config.tiers.len() + model
    }
}
