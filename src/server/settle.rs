//! The accountant: every request, served or not, streamed or not, ends as one
//! `Settlement`, settled once: its metrics, its spend against the budgets,
//! its ledger row, its log line, and the report it answers with (response
//! headers, or a stream's closing comment). Only here are those built.

use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use super::headers::{apply, Report};
use super::state::AppState;
use crate::api::Endpoint;
use crate::chain::{Route, Run, Served, StreamEnd};
use crate::config::ModelId;
use crate::cost::{self, Usage, Usd};
use crate::error::GatewayError;
use crate::ledger::{time, AttemptRow, RequestRow};
use crate::outcome::RequestOutcome;
use crate::runtime::Runtime;

/// Keeps cascade_in_flight_requests right however the request ends.
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Who asked, known before anything else.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub request_id: String,
    /// The named key, if any.
    pub key: Option<String>,
    /// How the log line names the caller ("-" before authentication).
    pub key_label: String,
    pub session: Option<String>,
    /// The API it came in on.
    pub endpoint: Endpoint,
    pub started: Instant,
    /// Its trace, when tracing is on.
    pub trace: Option<crate::telemetry::TraceCtx>,
    /// The request's messages, for its span (`[telemetry] capture_content`).
    pub prompt: Option<Box<str>>,
    /// The answer's choices (non-streaming), likewise.
    pub completion: Option<Box<str>>,
}

/// The attempt that served: (target, model, the model's index in the target).
#[derive(Clone, Copy, Debug)]
pub struct ServedBy {
    pub target: usize,
    pub model: ModelId,
    pub index: usize,
}

impl<T> From<&Served<T>> for ServedBy {
    fn from(s: &Served<T>) -> Self {
        ServedBy {
            target: s.target,
            model: s.model,
            index: s.index,
        }
    }
}

/// Everything known about a finished request.
pub struct Settlement {
    pub ticket: Ticket,
    pub route: Option<Route>,
    /// The chain's walk (empty when it never ran).
    pub run: Run,
    pub served: Option<ServedBy>,
    pub usage: Option<Usage>,
    /// The upstream gave no usable token counts: they were estimated.
    pub usage_estimated: bool,
    pub cost: Usd,
    /// Billed on attempts that did not serve (a stream cut mid-way).
    pub wasted: Usd,
    pub savings: Usd,
    pub status: u16,
    pub outcome: RequestOutcome,
    pub stream: bool,
}

impl Settlement {
    /// A request refused or failed with `err`, before or after running.
    pub fn refused(ticket: Ticket, err: &GatewayError, route: Option<Route>, run: Run) -> Self {
        let outcome = match err {
            GatewayError::AllModelsFailed { .. } => RequestOutcome::Failed,
            GatewayError::InvalidApiKey
            | GatewayError::AdminOnly
            | GatewayError::TierNotAllowed(_)
            | GatewayError::BudgetExceeded(_) => RequestOutcome::Rejected,
            _ => RequestOutcome::ClientError,
        };
        Settlement {
            ticket,
            route,
            run,
            served: None,
            usage: None,
            usage_estimated: false,
            cost: Usd::ZERO,
            wasted: Usd::ZERO,
            savings: Usd::ZERO,
            status: err.status().as_u16(),
            outcome,
            stream: false,
        }
    }

    /// A request served by `by`, not priced yet.
    pub fn served(ticket: Ticket, route: Route, run: Run, by: ServedBy, stream: bool) -> Self {
        Settlement {
            ticket,
            route: Some(route),
            run,
            served: Some(by),
            usage: None,
            usage_estimated: false,
            cost: Usd::ZERO,
            wasted: Usd::ZERO,
            savings: Usd::ZERO,
            status: 200,
            outcome: RequestOutcome::Success,
            stream,
        }
    }

    /// Price what the serving model answered: its usage as reported, else
    /// `estimate` (and say so); the cost, and the savings against the
    /// baseline.
    pub fn price(&mut self, rt: &Runtime, usage: Option<Usage>, estimate: impl FnOnce() -> Usage) {
        let Some(by) = self.served else { return };
        self.usage_estimated = usage.is_none();
        let usage = usage.unwrap_or_else(estimate);
        self.usage = Some(usage);
        self.cost = cost::cost(&rt.config.models[by.model].prices, &usage);
        self.savings = self
            .route
            .as_ref()
            .map_or(Usd::ZERO, |r| savings(rt, r, by.model, &usage, self.cost));
    }

    /// Served by a tier other than the chain's first.
    fn fallback(&self) -> bool {
        self.served
            .is_some_and(|b| Some(b.target) != self.first_target())
    }

    fn first_target(&self) -> Option<usize> {
        self.route
            .as_ref()
            .and_then(|r| r.steps.first().map(|s| s.target))
    }
}

/// How a stream ended, with what it saw.
pub struct StreamTally {
    /// The usage the upstream reported, if it did.
    pub usage: Option<Usage>,
    /// Characters of the request's messages, for an estimate.
    pub prompt_chars: usize,
    /// Characters of content the upstream streamed.
    pub text_chars: usize,
    /// A continued stream (`mid_stream = "continue"`): the legs before the
    /// one now relayed, and which model that one is.
    pub prior: Option<super::splice::Prior>,
}

/// Settle a stream that had started, by how it ended: priced when done;
/// when it broke, what was billed is spent and wasted; when the client left,
/// what was billed is spent, status 499. The closing comment (unsent when
/// the client left).
pub fn stream_ended(
    state: &AppState,
    rt: &Runtime,
    (mut s, by): (Settlement, ServedBy),
    tally: &StreamTally,
    end: StreamEnd<'_>,
) -> Bytes {
    let leg = tally
        .usage
        .unwrap_or_else(|| cost::estimate(tally.prompt_chars, tally.text_chars));
    // a continued stream: the legs before this one, and this one's model
    let (prior_cost, mut usage, leg_model) = match tally.prior {
        Some(p) => (p.cost, p.usage, p.model),
        None => (Usd::ZERO, Usage::default(), by.model),
    };
    usage.add(leg);
    let prices = &rt.config.models[leg_model].prices;
    match end {
        StreamEnd::Done if tally.prior.is_some() => {
            s.price(rt, Some(usage), || usage);
            s.cost = prior_cost + cost::cost(prices, &leg);
            if let Some(route) = &s.route {
                s.savings = savings(rt, route, by.model, &usage, s.cost);
            }
        }
        StreamEnd::Done => s.price(rt, Some(usage), || usage),
        StreamEnd::Broke(e) => {
            s.usage = Some(usage);
            s.wasted += prior_cost + cost::token_cost(prices, &leg);
            s.outcome = RequestOutcome::Failed;
            tracing::warn!(request_id = %s.ticket.request_id, error = %e, "stream interrupted after it started");
        }
        StreamEnd::ClientGone => {
            s.usage = Some(usage);
            s.cost = prior_cost + cost::token_cost(prices, &leg);
            s.outcome = RequestOutcome::ClientError;
            s.status = 499;
            rt.metrics
                .client_disconnects
                .with_label_values(&[&rt.chain.targets[by.target].label])
                .inc();
            tracing::info!(request_id = %s.ticket.request_id, "client disconnected mid-stream; upstream cancelled");
        }
    }
    s.usage_estimated = tally.usage.is_none() || tally.prior.is_some_and(|p| p.estimated);
    let remaining = settle(state, rt, &s);
    let named = |target: usize, model: ModelId| {
        format!(
            "{}/{}",
            rt.chain.targets[target].label, rt.config.models[model].name
        )
    };
    // a continued stream names both: the model that began it, the last that continued it
    let continued_by = tally
        .prior
        .map(|p| (named(by.target, by.model), named(p.target, p.model)));
    closing_comment(&s, &usage, remaining, continued_by)
}

/// `: cascade {json}` with what the stream cost, before `[DONE]`.
fn closing_comment(
    s: &Settlement,
    usage: &Usage,
    remaining: Option<Usd>,
    continued_by: Option<(String, String)>,
) -> Bytes {
    let mut report = json!({
        "cost_usd": (s.cost + s.wasted).to_json(),
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "savings_usd": s.savings.to_json(),
    });
    if s.usage_estimated {
        report["usage_estimated"] = json!(true);
    }
    if let Some(left) = remaining {
        report["budget_remaining_usd"] = left.to_json();
    }
    if let Some((from, by)) = continued_by {
        report["served_by"] = json!(from);
        report["continued_by"] = json!(by);
    }
    Bytes::from(format!(
        ": cascade {}\n\n",
        crate::api::to_plain_json(&report)
    ))
}

/// The response headers of a request: on a settled one with its cost; on a
/// stream as it starts (its cost comes in the closing comment).
pub fn headers(
    h: &mut HeaderMap,
    rt: &Runtime,
    s: &Settlement,
    budget_remaining: Option<Usd>,
    settled: bool,
) {
    let report = Report {
        request_id: &s.ticket.request_id,
        run: &s.run,
        served: s.served.map(|b| (b.target, b.model)),
        first_target: s.first_target(),
        // all attempts (docs/api.md): what failed attempts were billed too
        cost: s.cost + s.wasted,
        savings: s.savings,
        cost_in_headers: settled && !s.stream,
        escalated: s.route.as_ref().is_some_and(|r| r.escalated),
        budget_remaining,
        usage_estimated: settled && s.usage_estimated,
    };
    apply(h, rt, &report);
}

/// Count, spend, record and log a finished request, once. Returns what is
/// left of the tightest budget that applies.
pub fn settle(state: &AppState, rt: &Runtime, s: &Settlement) -> Option<Usd> {
    let cfg = &rt.config;
    let targets = &rt.chain.targets;
    let elapsed = s.ticket.started.elapsed();
    let outcome_counter = |lazy: &crate::metrics::LazyCounters, tier: &str| {
        let c = lazy.get(s.outcome.index(), || {
            rt.metrics
                .requests
                .with_label_values(&[tier, s.outcome.as_str()])
        });
        if let Some(c) = c {
            c.inc();
        }
    };
    match s.served {
        Some(by) if s.outcome == RequestOutcome::Success => targets[by.target].served.inc(),
        Some(by) => outcome_counter(&targets[by.target].outcomes, &targets[by.target].label),
        None => outcome_counter(&rt.unserved, "none"),
    }
    match s.served {
        Some(by) => targets[by.target]
            .request_duration
            .observe(elapsed.as_secs_f64()),
        None => rt.unserved_duration.observe(elapsed.as_secs_f64()),
    }
    let spent = s.cost + s.wasted;
    if let (Some(by), Some(u)) = (s.served, s.usage) {
        let m = &targets[by.target].metrics[by.index];
        m.prompt_tokens.inc_by(u.prompt);
        m.completion_tokens.inc_by(u.completion);
        m.cost.inc_by(spent.as_f64());
    }
    if s.savings > Usd::ZERO {
        rt.metrics.savings.inc_by(s.savings.as_f64());
    }
    let key = s
        .ticket
        .key
        .as_ref()
        .and_then(|k| cfg.keys.iter().position(|nk| &nk.name == k));
    if let Some(c) = key.and_then(|i| rt.key_cost.get(i)) {
        c.inc_by(spent.as_f64());
    }
    let now = time::now_ms();
    let session = s.ticket.session.as_deref();
    state
        .budgets()
        .record(s.ticket.key.as_deref(), session, spent, now);
    if let (Some(ledger), Some(route)) = (state.ledger(), &s.route) {
        ledger.record(ledger_row(rt, s, route, now, elapsed));
    }
    log_request(rt, s, elapsed);
    // an unauthenticated caller leaves no trace and takes no place on the page
    if s.status != 401 {
        export_spans(rt, s, elapsed);
        remember(state, rt, s, (now, spent, elapsed));
    }
    let key = key.map(|i| &cfg.keys[i]);
    state.budgets().remaining(cfg, key, session, now)
}

/// The request in the ring of the last ones (the page's list).
fn remember(
    state: &AppState,
    rt: &Runtime,
    s: &Settlement,
    (now, spent, elapsed): (i64, Usd, Duration),
) {
    state.recent().push(super::recent::Entry {
        config: std::sync::Arc::clone(&rt.config),
        at_ms: now,
        request_id: s.ticket.request_id.clone(),
        endpoint: s.ticket.endpoint.as_str(),
        task: s.route.as_ref().and_then(|r| r.task),
        target: s.served.map(|b| b.target),
        model: s.served.map(|b| b.model),
        attempts: s.run.attempts.len(),
        hedged: s.run.hedges > 0,
        fallback: s.fallback(),
        status: s.status,
        outcome: s.outcome.as_str(),
        stream: s.stream,
        cost: spent,
        latency_ms: elapsed.as_secs_f64() * 1000.0,
    });
}

/// Hand the request's spans to the exporter, when it is traced and sampled.
fn export_spans(rt: &Runtime, s: &Settlement, elapsed: Duration) {
    let (Some(exporter), Some(ctx)) = (&rt.traces, s.ticket.trace) else {
        return;
    };
    if !ctx.sampled {
        return;
    }
    let started = s.ticket.started;
    let copied = crate::telemetry::spans::Finished {
        ctx,
        config: std::sync::Arc::clone(&rt.config),
        start: std::time::SystemTime::now()
            .checked_sub(elapsed)
            .unwrap_or(std::time::UNIX_EPOCH),
        elapsed,
        request_id: s.ticket.request_id.clone(),
        endpoint: s.ticket.endpoint.as_str(),
        task: s.route.as_ref().and_then(|r| r.task),
        first_target: s
            .route
            .as_ref()
            .and_then(|r| r.steps.first().map(|s| s.target)),
        served: s.served.map(|b| (b.target, b.model)),
        attempts: s
            .run
            .attempts
            .iter()
            .map(|a| crate::telemetry::spans::Attempt {
                target: a.target,
                model: a.model,
                number: a.attempt,
                offset: a.started.saturating_duration_since(started),
                elapsed: a.elapsed,
                status: a.status,
                outcome: a.outcome,
                hedge: a.hedge,
            })
            .collect(),
        usage: s.usage,
        cost: s.cost + s.wasted,
        status: s.status,
        outcome: s.outcome.as_str(),
        stream: s.stream,
        prompt: s.ticket.prompt.clone(),
        completion: s.ticket.completion.clone(),
    };
    exporter.submit(crate::telemetry::Job {
        count: 1 + copied.attempts.len(),
        build: Box::new(move || crate::telemetry::spans::spans(copied)),
    });
}

fn ledger_row(
    rt: &Runtime,
    s: &Settlement,
    route: &Route,
    now: i64,
    elapsed: Duration,
) -> RequestRow {
    let cfg = &rt.config;
    let label = |t: usize| rt.chain.targets[t].label.clone();
    let nanos = |u: Usd| u.nanos_i64();
    let usage = s.usage.unwrap_or_default();
    let first = s.first_target();
    RequestRow {
        id: s.ticket.request_id.clone(),
        ts_ms: now,
        endpoint: s.ticket.endpoint.as_str(),
        task: route.task.map(|t| cfg.tasks[t].name.clone()),
        key: s.ticket.key.clone(),
        session: s.ticket.session.clone(),
        chain: rt.chain.label(&s.run.tried),
        first_tier: first.map(label),
        tier: s.served.map(|b| label(b.target)),
        model: s.served.map(|b| cfg.models[b.model].name.clone()),
        free: s.served.is_some_and(|b| rt.chain.targets[b.target].free),
        fallback: s.fallback(),
        escalated: route.escalated,
        status: s.status,
        stream: s.stream,
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        cost_nanos: nanos(s.cost),
        savings_nanos: nanos(s.savings),
        wasted_nanos: nanos(s.wasted),
        latency_ms: elapsed.as_millis() as u64,
        attempts: s
            .run
            .attempts
            .iter()
            .map(|a| AttemptRow {
                tier: label(a.target),
                model: cfg.models[a.model].name.clone(),
                attempt: a.attempt,
                outcome: a.outcome.as_str(),
                status: a.status,
                elapsed_ms: a.elapsed.as_millis() as u64,
            })
            .collect(),
    }
}

fn log_request(rt: &Runtime, s: &Settlement, elapsed: Duration) {
    if !tracing::enabled!(target: "cascade::request", tracing::Level::INFO) {
        return;
    }
    let chain = rt.chain.label(&s.run.tried);
    let task = s
        .route
        .as_ref()
        .and_then(|r| r.task)
        .map(|t| rt.config.tasks[t].name.as_str());
    let tier = s.served.map(|b| rt.chain.targets[b.target].label.as_str());
    let model = s.served.map(|b| rt.config.models[b.model].name.as_str());
    tracing::info!(
        target: "cascade::request",
        request_id = %s.ticket.request_id,
        key = %s.ticket.key_label,
        task,
        chain = chain.as_str(),
        tier,
        model,
        attempts = s.run.attempts.len(),
        status = s.status,
        outcome = s.outcome.as_str(),
        stream = s.stream,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        cost_usd = %(s.cost + s.wasted),
        prompt_tokens = s.usage.map(|u| u.prompt),
        completion_tokens = s.usage.map(|u| u.completion),
        message = s.ticket.endpoint.log_message(),
    );
}

/// The baseline's price for these tokens minus the cost: the configured
/// baseline model (when it answers in the served model's kind), else the
/// priciest model of the request's chain.
fn savings(rt: &Runtime, route: &Route, served: ModelId, usage: &Usage, cost: Usd) -> Usd {
    let cfg = &rt.config;
    let baseline = cfg
        .baseline_model
        .filter(|&m| cfg.models[m].kind.compatible(&cfg.models[served].kind));
    let baseline = match baseline {
        Some(m) => cost::cost(&cfg.models[m].prices, usage),
        None => route
            .steps
            .iter()
            .flat_map(|s| rt.chain.targets[s.target].models.iter())
            .map(|&m| cost::cost(&cfg.models[m].prices, usage))
            .max()
            .unwrap_or(Usd::ZERO),
    };
    baseline - cost
}

/// The `attempts` of an `all_models_failed` body.
pub fn attempts_json(rt: &Runtime, run: &Run) -> serde_json::Value {
    let cfg = &rt.config;
    run.attempts
        .iter()
        .map(|a| {
            json!({
                "tier": rt.chain.targets[a.target].label,
                "model": cfg.models[a.model].name,
                "provider": cfg.model_provider(a.model).name,
                "attempt": a.attempt,
                "status": a.status,
                "error": a.error,
                "elapsed_ms": a.elapsed.as_millis() as u64,
            })
        })
        .collect()
}
