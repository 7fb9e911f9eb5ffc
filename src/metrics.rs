//! The Prometheus registry and typed handles (docs/api.md, metrics). Label values come from
//! config names and enums, never from client-supplied strings.

use std::sync::OnceLock;

use crate::outcome::AttemptOutcome;
use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub retries: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub savings: Counter,
    pub circuit_open: IntGaugeVec,
    pub escalations: IntCounterVec,
    pub in_flight: IntGauge,
    pub key_cost: CounterVec,
    pub client_disconnects: IntCounterVec,
    pub stream_events_dropped: IntCounterVec,
    pub ledger_dropped: IntCounter,
    /// cascade_shared_state_up: 1 while Redis answers (always 1 with `local`).
    pub shared_state_up: IntGauge,
    pub config_reloads: IntCounterVec,
    pub hedges: IntCounterVec,
    pub spans_dropped: IntCounter,
    /// Set from each model's latency windows when scraped.
    pub model_latency: GaugeVec,
    pub model_timeout: GaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn float_counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<CounterVec, prometheus::Error> {
    let c = CounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let savings = Counter::new(
            "cascade_savings_usd_total",
            "Baseline price minus actual cost, in USD",
        )?;
        r.register(Box::new(savings.clone()))?;
        let in_flight = IntGauge::new("cascade_in_flight_requests", "Requests being served")?;
        r.register(Box::new(in_flight.clone()))?;
        let ledger_dropped = IntCounter::new(
            "cascade_ledger_dropped_total",
            "Ledger rows dropped because the writer's queue was full",
        )?;
        r.register(Box::new(ledger_dropped.clone()))?;
        let shared_state_up = IntGauge::new(
            "cascade_shared_state_up",
            "1 while the shared state (Redis) answers; always 1 with the local backend",
        )?;
        shared_state_up.set(1);
        r.register(Box::new(shared_state_up.clone()))?;
        let spans_dropped = IntCounter::new(
            "cascade_spans_dropped_total",
            "Spans not exported: the export queue was full or the collector did not take them",
        )?;
        r.register(Box::new(spans_dropped.clone()))?;
        let circuit_open = IntGaugeVec::new(
            Opts::new("cascade_circuit_open", "1 while a model's circuit is open"),
            &["model"],
        )?;
        r.register(Box::new(circuit_open.clone()))?;
        Ok(Metrics {
            requests: counter(
                &r,
                "cascade_requests_total",
                "Chat completion requests",
                &["tier", "outcome"],
            )?,
            attempts: counter(
                &r,
                "cascade_attempts_total",
                "Upstream attempts",
                &["tier", "model", "outcome"],
            )?,
            fallbacks: counter(
                &r,
                "cascade_fallbacks_total",
                "Falls from one tier to the next",
                &["from_tier", "to_tier"],
            )?,
            retries: counter(
                &r,
                "cascade_retries_total",
                "Same-tier retries, by the model that failed",
                &["tier", "model"],
            )?,
            request_duration: histogram(
                &r,
                "cascade_request_duration_seconds",
                "Request latency",
                &["tier"],
            )?,
            upstream_duration: histogram(
                &r,
                "cascade_upstream_duration_seconds",
                "Upstream attempt latency",
                &["tier", "model"],
            )?,
            ttft: histogram(
                &r,
                "cascade_time_to_first_token_seconds",
                "Time to first token per attempt",
                &["tier", "model"],
            )?,
            tokens: counter(
                &r,
                "cascade_tokens_total",
                "Tokens",
                &["tier", "model", "kind"],
            )?,
            cost: float_counter(
                &r,
                "cascade_cost_usd_total",
                "Spend in USD",
                &["tier", "model"],
            )?,
            savings,
            circuit_open,
            escalations: counter(
                &r,
                "cascade_escalations_total",
                "Escalations",
                &["from_tier", "to_tier"],
            )?,
            in_flight,
            key_cost: float_counter(
                &r,
                "cascade_key_cost_usd_total",
                "Spend per named key in USD",
                &["key"],
            )?,
            client_disconnects: counter(
                &r,
                "cascade_client_disconnects_total",
                "Clients gone before the answer ended",
                &["tier"],
            )?,
            stream_events_dropped: counter(
                &r,
                "cascade_stream_events_dropped_total",
                "Malformed events dropped from streams that had started",
                &["tier", "model"],
            )?,
            ledger_dropped,
            shared_state_up,
            config_reloads: counter(
                &r,
                "cascade_config_reloads_total",
                "Config reloads",
                &["result"],
            )?,
            hedges: counter(
                &r,
                "cascade_hedges_total",
                "Hedged attempts, by whether they served the request",
                &["tier", "result"],
            )?,
            model_latency: gauge(
                &r,
                "cascade_model_latency_seconds",
                "A model's recent latency percentiles (successful attempts)",
                &["model", "kind", "quantile"],
            )?,
            model_timeout: gauge(
                &r,
                "cascade_model_timeout_seconds",
                "What an \"auto\" timeout on a model is now",
                &["model", "kind"],
            )?,
            spans_dropped,
            registry: r,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Handles for one (tier label, model) pair, resolved once at load so the
/// request path does no label hashing.
#[derive(Clone)]
pub struct AttemptMetrics {
    pub outcomes: [IntCounter; 8],
    pub retries: IntCounter,
    pub upstream_duration: Histogram,
    pub ttft: Histogram,
    pub prompt_tokens: IntCounter,
    pub completion_tokens: IntCounter,
    pub cost: Counter,
    pub events_dropped: IntCounter,
}

impl AttemptMetrics {
    pub fn new(m: &Metrics, tier: &str, model: &str) -> AttemptMetrics {
        AttemptMetrics {
            outcomes: AttemptOutcome::ALL
                .map(|o| m.attempts.with_label_values(&[tier, model, o.as_str()])),
            retries: m.retries.with_label_values(&[tier, model]),
            upstream_duration: m.upstream_duration.with_label_values(&[tier, model]),
            ttft: m.ttft.with_label_values(&[tier, model]),
            prompt_tokens: m.tokens.with_label_values(&[tier, model, "prompt"]),
            completion_tokens: m.tokens.with_label_values(&[tier, model, "completion"]),
            cost: m.cost.with_label_values(&[tier, model]),
            events_dropped: m.stream_events_dropped.with_label_values(&[tier, model]),
        }
    }
}

/// Counters of one family for label sets known only when first used (a
/// fallback from one tier to another, a request outcome other than success):
/// resolved through the family's map (which is behind a lock) once, then read
/// lock-free. Created at first use, so /metrics lists only the label sets
/// that happened.
pub struct LazyCounters(Box<[OnceLock<IntCounter>]>);

impl LazyCounters {
    pub fn new(n: usize) -> Self {
        LazyCounters((0..n).map(|_| OnceLock::new()).collect())
    }

    /// The counter in slot `i`, made by `make` the first time.
    pub fn get(&self, i: usize, make: impl FnOnce() -> IntCounter) -> Option<&IntCounter> {
        self.0.get(i).map(|slot| slot.get_or_init(make))
    }
}
