//! POST /v1/chat/completions: parse, authenticate, route, run the chain,
//! answer with the SPEC 5 headers. Every request is settled once (metrics,
//! budget, ledger, log line) by `settle`, streams when they end.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::auth::{self, Caller};
use super::headers::{apply, Report};
use super::stream::{self, RelayContext};
use super::AppState;
use crate::api::ChatBody;
use crate::budget;
use crate::chain::{self, AttemptRecord, Failure, Mode, Run};
use crate::config::OnExhausted;
use crate::cost::{self, Usage, Usd};
use crate::error::GatewayError;
use crate::ledger::{time, AttemptRow, RequestRow};
use crate::providers::{UpstreamError, UpstreamRequest};
use crate::routing::{self, Route, RouteRequest};
use crate::runtime::Runtime;

/// The `outcome` label of cascade_requests_total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    Success,
    Failed,
    ClientError,
    Rejected,
}

// the runtime keeps one lazily resolved counter per outcome
const _: () = assert!(RequestOutcome::Rejected as usize + 1 == crate::runtime::REQUEST_OUTCOMES);

impl RequestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Success => "success",
            RequestOutcome::Failed => "failed",
            RequestOutcome::ClientError => "client_error",
            RequestOutcome::Rejected => "rejected",
        }
    }

    fn of(e: &GatewayError) -> Self {
        match e {
            GatewayError::AllModelsFailed { .. } => RequestOutcome::Failed,
            GatewayError::InvalidApiKey
            | GatewayError::AdminOnly
            | GatewayError::TierNotAllowed(_)
            | GatewayError::BudgetExceeded(_) => RequestOutcome::Rejected,
            _ => RequestOutcome::ClientError,
        }
    }
}

// The request headers Cascade reads, built at compile time.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SESSION: HeaderName = HeaderName::from_static("x-cascade-session");
const TASK: HeaderName = HeaderName::from_static("x-cascade-task");
const TIER: HeaderName = HeaderName::from_static("x-cascade-tier");
const CHAIN: HeaderName = HeaderName::from_static("x-cascade-chain");
const MAX_RETRIES: HeaderName = HeaderName::from_static("x-cascade-max-retries");
const MINOR: HeaderName = HeaderName::from_static("x-cascade-minor");
const ESCALATE: HeaderName = HeaderName::from_static("x-cascade-escalate");

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

/// Everything known about a finished request.
pub struct Settlement {
    pub request_id: String,
    /// The named key, if any.
    pub key: Option<String>,
    pub key_label: String,
    pub session: Option<String>,
    pub route: Option<Route>,
    pub run: Option<Run>,
    /// (target, model) that served.
    pub served: Option<(usize, usize)>,
    pub usage: Option<Usage>,
    pub cost: Usd,
    /// Billed on attempts that did not serve (a stream cut mid-way).
    pub wasted: Usd,
    pub savings: Usd,
    pub status: u16,
    pub outcome: RequestOutcome,
    pub stream: bool,
    pub started: Instant,
}

/// Count, spend, record and log a finished request, once. Returns what is
/// left of the tightest budget that applies.
pub fn settle(state: &AppState, rt: &Runtime, s: &Settlement) -> Option<Usd> {
    let cfg = &rt.config;
    let elapsed = s.started.elapsed();
    let outcome_counter = |lazy: &crate::metrics::LazyCounters, tier: &str| {
        let c = lazy.get(s.outcome as usize, || {
            rt.metrics
                .requests
                .with_label_values(&[tier, s.outcome.as_str()])
        });
        if let Some(c) = c {
            c.inc();
        }
    };
    match s.served {
        Some((t, _)) if s.outcome == RequestOutcome::Success => rt.targets[t].served.inc(),
        Some((t, _)) => outcome_counter(&rt.targets[t].outcomes, &rt.targets[t].label),
        None => outcome_counter(&rt.unserved, "none"),
    }
    match s.served {
        Some((t, _)) => rt.targets[t]
            .request_duration
            .observe(elapsed.as_secs_f64()),
        None => rt.unserved_duration.observe(elapsed.as_secs_f64()),
    }
    let spent = s.cost + s.wasted;
    if let Some((target, model)) = s.served {
        let t = &rt.targets[target];
        if let (Some(i), Some(u)) = (t.models.iter().position(|&m| m == model), s.usage) {
            let m = &t.metrics[i];
            m.prompt_tokens.inc_by(u.prompt);
            m.completion_tokens.inc_by(u.completion);
            m.cost.inc_by(spent.as_f64());
        }
    }
    if s.savings > Usd::ZERO {
        rt.metrics.savings.inc_by(s.savings.as_f64());
    }
    let key = s
        .key
        .as_ref()
        .and_then(|k| cfg.keys.iter().position(|nk| &nk.name == k));
    if let Some(c) = key.and_then(|i| rt.key_cost.get(i)) {
        c.inc_by(spent.as_f64());
    }
    let now = time::now_ms();
    state
        .budgets()
        .record(s.key.as_deref(), s.session.as_deref(), spent, now);
    if let (Some(ledger), Some(route)) = (state.ledger(), &s.route) {
        ledger.record(ledger_row(rt, s, route, now, elapsed));
    }
    log_request(rt, s, elapsed);
    let key = key.map(|i| &cfg.keys[i]);
    state
        .budgets()
        .remaining(cfg, key, s.session.as_deref(), now)
}

fn ledger_row(
    rt: &Runtime,
    s: &Settlement,
    route: &Route,
    now: i64,
    elapsed: Duration,
) -> RequestRow {
    let cfg = &rt.config;
    let label = |t: usize| rt.targets[t].label.clone();
    let nanos = |u: Usd| u.nanos_i64();
    let usage = s.usage.unwrap_or_default();
    let first = route.steps.first().map(|st| st.target);
    RequestRow {
        id: s.request_id.clone(),
        ts_ms: now,
        task: route.task.map(|t| cfg.tasks[t].name.clone()),
        key: s.key.clone(),
        session: s.session.clone(),
        chain: s.run.as_ref().map_or(String::new(), |r| chain_label(rt, r)),
        first_tier: first.map(label),
        tier: s.served.map(|(t, _)| label(t)),
        model: s.served.map(|(_, m)| cfg.models[m].name.clone()),
        free: s.served.is_some_and(|(t, _)| rt.targets[t].free),
        fallback: s.served.is_some_and(|(t, _)| Some(t) != first),
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
            .as_ref()
            .map(|r| {
                r.attempts
                    .iter()
                    .map(|a| AttemptRow {
                        tier: label(a.target),
                        model: cfg.models[a.model].name.clone(),
                        attempt: a.attempt,
                        outcome: a.outcome.as_str(),
                        status: a.status,
                        elapsed_ms: a.elapsed.as_millis() as u64,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn chain_label(rt: &Runtime, run: &Run) -> String {
    run.tried
        .iter()
        .map(|&t| rt.targets[t].label.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn log_request(rt: &Runtime, s: &Settlement, elapsed: Duration) {
    let chain = s.run.as_ref().map(|r| chain_label(rt, r));
    let task = s
        .route
        .as_ref()
        .and_then(|r| r.task)
        .map(|t| rt.config.tasks[t].name.as_str());
    let tier = s.served.map(|(t, _)| rt.targets[t].label.as_str());
    let model = s.served.map(|(_, m)| rt.config.models[m].name.as_str());
    tracing::info!(
        target: "cascade::request",
        request_id = %s.request_id,
        key = %s.key_label,
        task,
        chain = chain.as_deref().unwrap_or(""),
        tier,
        model,
        attempts = s.run.as_ref().map_or(0, |r| r.attempts.len()),
        status = s.status,
        outcome = s.outcome.as_str(),
        stream = s.stream,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        cost_usd = %(s.cost + s.wasted),
        prompt_tokens = s.usage.map(|u| u.prompt),
        completion_tokens = s.usage.map(|u| u.completion),
        "chat completion"
    );
}

/// What the handler knows when it gives up.
struct Refusal {
    err: GatewayError,
    run: Option<Run>,
    route: Option<Route>,
}

impl From<GatewayError> for Refusal {
    fn from(err: GatewayError) -> Self {
        Refusal {
            err,
            run: None,
            route: None,
        }
    }
}

pub async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let request_id = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| plain_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let session = headers
        .get(&SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string);
    let caller = match auth::client(&rt.config, headers) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                &state,
                &rt,
                e.into(),
                request_id,
                None,
                "-".into(),
                session,
                started,
            )
        }
    };
    let key = caller.named().map(|k| k.name.clone());
    let key_label = caller.label().to_string();
    let ctx = Ctx {
        state: &state,
        rt: &rt,
        headers,
        request_id: &request_id,
        caller,
        session: session.as_deref(),
        started,
    };
    match handle(&ctx, body, in_flight).await {
        Ok(resp) => resp,
        Err(refusal) => refuse(
            &state, &rt, refusal, request_id, key, key_label, session, started,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn refuse(
    state: &AppState,
    rt: &Runtime,
    refusal: Refusal,
    request_id: String,
    key: Option<String>,
    key_label: String,
    session: Option<String>,
    started: Instant,
) -> Response {
    let outcome = RequestOutcome::of(&refusal.err);
    let status = refusal.err.status();
    let first_target = refusal
        .route
        .as_ref()
        .and_then(|r| r.steps.first().map(|s| s.target));
    let escalated = refusal.route.as_ref().is_some_and(|r| r.escalated);
    let s = Settlement {
        request_id,
        key,
        key_label,
        session,
        route: refusal.route,
        run: refusal.run,
        served: None,
        usage: None,
        cost: Usd::ZERO,
        wasted: Usd::ZERO,
        savings: Usd::ZERO,
        status: status.as_u16(),
        outcome,
        stream: false,
        started,
    };
    let remaining = settle(state, rt, &s);
    let mut resp = refusal.err.into_response();
    let report = Report {
        request_id: &s.request_id,
        run: s.run.as_ref(),
        served: None,
        first_target,
        cost: Usd::ZERO,
        savings: Usd::ZERO,
        cost_in_headers: true,
        escalated,
        budget_remaining: remaining,
        usage_estimated: false,
    };
    apply(resp.headers_mut(), rt, &report);
    resp
}

struct Ctx<'a> {
    state: &'a AppState,
    rt: &'a Arc<Runtime>,
    headers: &'a HeaderMap,
    request_id: &'a str,
    caller: Caller<'a>,
    session: Option<&'a str>,
    started: Instant,
}

impl Ctx<'_> {
    /// The settlement of a request this context served (nothing priced yet).
    fn served(&self, route: Route, run: Run, by: (usize, usize), stream: bool) -> Settlement {
        Settlement {
            request_id: self.request_id.to_string(),
            key: self.caller.named().map(|k| k.name.clone()),
            key_label: self.caller.label().to_string(),
            session: self.session.map(str::to_string),
            route: Some(route),
            run: Some(run),
            served: Some(by),
            usage: None,
            cost: Usd::ZERO,
            wasted: Usd::ZERO,
            savings: Usd::ZERO,
            status: 200,
            outcome: RequestOutcome::Success,
            stream,
            started: self.started,
        }
    }
}

async fn handle(ctx: &Ctx<'_>, body: Body, in_flight: InFlight) -> Result<Response, Refusal> {
    let rt = ctx.rt;
    let cfg = &rt.config;
    let headers = ctx.headers;
    let body = match tokio::time::timeout_at(
        ctx.started + cfg.server.request_timeout,
        read_body(body, headers, cfg.server.max_body_bytes),
    )
    .await
    {
        Ok(body) => body?,
        Err(_) => return Err(GatewayError::RequestTimeout.into()),
    };
    let body = ChatBody::parse(&body).map_err(|e| GatewayError::invalid(e.message, e.param))?;
    let h = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let route_req = RouteRequest {
        task_header: h(&TASK),
        tier_header: h(&TIER),
        model: body.model(),
        chain_header: h(&CHAIN),
        max_retries_header: headers.get(&MAX_RETRIES).map(|v| v.to_str().unwrap_or("?")),
        minor_header: h(&MINOR).is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    let key = ctx.caller.named();
    let mut route = routing::resolve(rt, &route_req, key)?;

    // a spent budget with on_exhausted = reject refuses everything
    let budgets = ctx.state.budgets();
    let remaining = || budgets.remaining(cfg, key, ctx.session, time::now_ms());
    if budget::on_exhausted(cfg) == OnExhausted::Reject && remaining().is_some_and(|r| r.is_zero())
    {
        return Err(Refusal {
            err: GatewayError::BudgetExceeded("the budget for this period is spent".into()),
            run: None,
            route: Some(route),
        });
    }
    let asked = h(&ESCALATE).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if let Some((from, to)) = routing::escalate(rt, &mut route, asked, key) {
        rt.metrics
            .escalations
            .with_label_values(&[&cfg.tiers[from].name, &cfg.tiers[to].name])
            .inc();
    }
    let paid_allowed = || remaining().is_none_or(|r| !r.is_zero());
    let deadline = ctx.started + cfg.server.request_timeout;
    let forwarded = forwardable(headers, ctx.request_id);

    if body.stream() {
        let (run, result) = chain::execute(
            rt,
            &route,
            deadline,
            Mode::Stream,
            &paid_allowed,
            |model, _limit| {
                let req = UpstreamRequest {
                    body: &body,
                    model: &cfg.models[model],
                    headers: &forwarded,
                    limits: cfg.policy.limits,
                };
                let max_hold = cfg.policy.limits.max_event_bytes;
                async move { stream::start(rt.open_stream(req), max_hold).await }
            },
        )
        .await;
        let served = match result {
            Ok(served) => served,
            Err(failure) => return Err(give_up(rt, failure, run, route)),
        };
        let mut resp = Response::new(Body::empty());
        let report = Report {
            request_id: ctx.request_id,
            run: Some(&run),
            served: Some((served.target, served.model)),
            first_target: route.steps.first().map(|s| s.target),
            cost: Usd::ZERO,
            savings: Usd::ZERO,
            cost_in_headers: false,
            escalated: route.escalated,
            budget_remaining: remaining(),
            usage_estimated: false,
        };
        apply(resp.headers_mut(), rt, &report);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let relay = stream::Relay::new(
            RelayContext {
                state: ctx.state.clone(),
                rt: Arc::clone(rt),
                client_wants_usage: body.client_wants_usage(),
                prompt_chars_estimate: body.raw("messages").map_or(0, str::len),
                permit: served.permit,
                // usage, cost and savings are filled in when the stream ends
                settlement: ctx.served(route, run, (served.target, served.model), true),
                _in_flight: in_flight,
            },
            served.value,
        );
        *resp.body_mut() = Body::from_stream(relay.into_stream());
        return Ok(resp);
    }

    let (run, result) = chain::execute(
        rt,
        &route,
        deadline,
        Mode::Complete,
        &paid_allowed,
        |model, _limit| {
            rt.complete(UpstreamRequest {
                body: &body,
                model: &cfg.models[model],
                headers: &forwarded,
                limits: cfg.policy.limits,
            })
        },
    )
    .await;
    let served = match result {
        Ok(served) => served,
        Err(failure) => return Err(give_up(rt, failure, run, route)),
    };
    let completion = served.value;
    // no usage, or absurd counts: estimated from the text, and said so
    let usage_estimated = completion.usage.is_none();
    let usage = completion.usage.unwrap_or_else(|| {
        cost::estimate(
            body.raw("messages").map_or(0, str::len),
            crate::api::completion_text_chars(&completion.body),
        )
    });
    let cost = cost::cost(&cfg.models[served.model].prices, &usage);
    let savings = savings(rt, &route, &usage, cost);
    let first_target = route.steps.first().map(|s| s.target);
    let escalated = route.escalated;
    let s = Settlement {
        usage: Some(usage),
        cost,
        savings,
        ..ctx.served(route, run, (served.target, served.model), false)
    };
    let budget_remaining = settle(ctx.state, rt, &s);
    let mut resp = Response::new(Body::from(completion.body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let report = Report {
        request_id: ctx.request_id,
        run: s.run.as_ref(),
        served: s.served,
        first_target,
        cost,
        savings,
        cost_in_headers: true,
        escalated,
        budget_remaining,
        usage_estimated,
    };
    apply(resp.headers_mut(), rt, &report);
    Ok(resp)
}

fn give_up(rt: &Runtime, failure: Failure, run: Run, route: Route) -> Refusal {
    let err = match failure {
        Failure::BudgetExceeded => GatewayError::BudgetExceeded(
            "the budget for this period is spent and every tier left is paid".into(),
        ),
        Failure::Fatal(UpstreamError::Status {
            status,
            message,
            body,
            ..
        }) => GatewayError::Rejected {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message,
            body,
        },
        Failure::Fatal(other) => GatewayError::invalid(other.to_string(), None),
        Failure::AllFailed {
            status,
            retry_after,
        } => GatewayError::AllModelsFailed {
            status,
            message: give_up_message(rt, &run, status),
            attempts: attempts_json(rt, &run.attempts),
            retry_after,
        },
    };
    Refusal {
        err,
        run: Some(run),
        route: Some(route),
    }
}

fn give_up_message(rt: &Runtime, run: &Run, status: StatusCode) -> String {
    if run.attempts.is_empty() {
        return if status == StatusCode::GATEWAY_TIMEOUT {
            "the request deadline ran out before any model could be tried".into()
        } else {
            "no model of the chain could be tried: every one is circuit-open, rate-limited, saturated or disabled".into()
        };
    }
    format!(
        "all models failed after {} attempt(s) on tier(s) {}",
        run.attempts.len(),
        chain_label(rt, run).replace(',', ", ")
    )
}

pub fn attempts_json(rt: &Runtime, attempts: &[AttemptRecord]) -> serde_json::Value {
    let cfg = &rt.config;
    attempts
        .iter()
        .map(|a| {
            json!({
                "tier": rt.targets[a.target].label,
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

/// The baseline's price for these tokens minus the cost: the configured
/// baseline model, else the priciest model of the request's chain.
pub fn savings(rt: &Runtime, route: &Route, usage: &Usage, cost: Usd) -> Usd {
    let cfg = &rt.config;
    let baseline = match cfg.baseline_model {
        Some(m) => cost::cost(&cfg.models[m].prices, usage),
        None => route
            .steps
            .iter()
            .flat_map(|s| rt.targets[s.target].models.iter())
            .map(|&m| cost::cost(&cfg.models[m].prices, usage))
            .max()
            .unwrap_or(Usd::ZERO),
    };
    baseline - cost
}

/// Read the body, refusing more than `max` bytes with a 413.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(GatewayError::RequestTooLarge(max));
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            GatewayError::RequestTooLarge(max)
        } else {
            GatewayError::invalid(format!("could not read the request body: {e}"), None)
        }
    })
}

/// The client headers an upstream may see (SPEC 4.1), with the request id.
fn forwardable(headers: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(crate::providers::FORWARDED_HEADERS.len());
    crate::providers::copy_forwarded(headers, &mut out);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(REQUEST_ID, v);
    }
    out
}

/// A client's request id is kept only when it is short and plain (1-128
/// letters, digits, '-', '_', '.'): it goes into log lines and upstream.
pub fn plain_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `req_` and 24 random hex digits.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(28);
    id.push_str("req_");
    let bits = rand::random::<u128>();
    for i in (0..24).rev() {
        id.push(char::from(HEX[((bits >> (i * 4)) & 0xf) as usize]));
    }
    id
}

#[cfg(test)]
mod tests {
    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, Fut, F: FnOnce(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// The request future is moved whole through every layer on the way in
    /// (axum's routing, tower's oneshot, hyper's dispatch): it was 11 KB, and
    /// those copies were 9% of the instructions per request, until the
    /// upstream attempt inside it was boxed (docs/benchmarks-notes.md).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(&super::completions);
        assert!(size <= 4096, "completions future is {size} bytes");
    }
}
