//! POST /v1/chat/completions: parse, authenticate, route, run the chain,
//! answer with the SPEC 5 headers; count and log once per request.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::auth::{self, Caller};
use super::headers::{apply, Report};
use super::stream::{self, Started};
use super::AppState;
use crate::api::ChatBody;
use crate::chain::{self, AttemptRecord, Failure, Mode, Run};
use crate::cost::{self, Usage, Usd};
use crate::error::GatewayError;
use crate::providers::{UpstreamError, UpstreamRequest};
use crate::routing::{self, Route, RouteRequest};
use crate::runtime::Runtime;

/// The `outcome` label of cascade_requests_total.
#[derive(Clone, Copy, Debug)]
pub enum RequestOutcome {
    Success,
    Failed,
    ClientError,
    Rejected,
}

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

pub async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(new_request_id);

    match handle(&rt, &parts.headers, body, &request_id, started, in_flight).await {
        Ok(resp) => resp,
        Err((err, run, route, key)) => {
            let outcome = RequestOutcome::of(&err);
            let status = err.status();
            let mut resp = err.into_response();
            let report = Report {
                request_id: &request_id,
                run: run.as_ref(),
                served: None,
                first_target: route
                    .as_ref()
                    .and_then(|r| r.steps.first().map(|s| s.target)),
                cost: Usd::ZERO,
                savings: Usd::ZERO,
                cost_in_headers: true,
            };
            apply(resp.headers_mut(), &rt, &report);
            finish_request(&rt, "none", outcome, started.elapsed(), None);
            log_request(
                &rt,
                &request_id,
                &key,
                route.as_ref(),
                run.as_ref(),
                None,
                status.as_u16(),
                started.elapsed(),
                Usd::ZERO,
                None,
            );
            resp
        }
    }
}

type HandleError = (GatewayError, Option<Run>, Option<Route>, String);

async fn handle(
    rt: &Arc<Runtime>,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
    in_flight: InFlight,
) -> Result<Response, HandleError> {
    let cfg = &rt.config;
    let caller = auth::client(cfg, headers).map_err(|e| (e, None, None, "-".to_string()))?;
    let key_label = caller.label().to_string();
    let early = |e: GatewayError| (e, None, None, key_label.clone());

    let body = read_body(body, headers, cfg.server.max_body_bytes)
        .await
        .map_err(early)?;
    let body =
        ChatBody::parse(&body).map_err(|e| early(GatewayError::invalid(e.message, e.param)))?;
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let route_req = RouteRequest {
        task_header: h("x-cascade-task"),
        tier_header: h("x-cascade-tier"),
        model: body.model(),
        chain_header: h("x-cascade-chain"),
        max_retries_header: headers
            .get("x-cascade-max-retries")
            .map(|v| v.to_str().unwrap_or("?")),
        minor_header: h("x-cascade-minor").is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    let route = routing::resolve(rt, &route_req, caller.named()).map_err(early)?;
    let deadline = started + cfg.server.request_timeout;
    let forwarded = forwardable(headers, request_id);

    if body.stream() {
        return stream_completion(
            rt, route, body, forwarded, deadline, request_id, caller, started, in_flight,
        )
        .await;
    }

    let (run, result) = chain::execute(rt, &route, deadline, Mode::Complete, |model, _limit| {
        let client = &rt.clients[cfg.models[model].provider];
        client.complete(UpstreamRequest {
            body: &body,
            model: &cfg.models[model],
            headers: &forwarded,
        })
    })
    .await;

    let served = match result {
        Ok(served) => served,
        Err(failure) => return Err(failure_response(rt, failure, run, route, key_label)),
    };
    let completion = served.value;
    let usage = completion.usage.unwrap_or_default();
    let cost = cost::cost(&cfg.models[served.model].prices, &usage);
    let savings = savings(rt, &route, &usage, cost);
    let target = &rt.targets[served.target];
    account_success(
        rt,
        served.target,
        served.model,
        &usage,
        cost,
        savings,
        caller,
    );

    let mut resp = Response::new(Body::from(completion.body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let report = Report {
        request_id,
        run: Some(&run),
        served: Some((served.target, served.model)),
        first_target: route.steps.first().map(|s| s.target),
        cost,
        savings,
        cost_in_headers: true,
    };
    apply(resp.headers_mut(), rt, &report);
    finish_request(
        rt,
        &target.label,
        RequestOutcome::Success,
        started.elapsed(),
        Some(served.target),
    );
    log_request(
        rt,
        request_id,
        &key_label,
        Some(&route),
        Some(&run),
        Some(served.model),
        200,
        started.elapsed(),
        cost,
        Some(&usage),
    );
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn stream_completion(
    rt: &Arc<Runtime>,
    route: Route,
    body: ChatBody,
    forwarded: HeaderMap,
    deadline: Instant,
    request_id: &str,
    caller: Caller<'_>,
    started: Instant,
    in_flight: InFlight,
) -> Result<Response, HandleError> {
    let cfg = &rt.config;
    let key_label = caller.label().to_string();
    let (run, result) = chain::execute(rt, &route, deadline, Mode::Stream, |model, _limit| {
        let client = &rt.clients[cfg.models[model].provider];
        let req = UpstreamRequest {
            body: &body,
            model: &cfg.models[model],
            headers: &forwarded,
        };
        async move { stream::start(client.stream(req)).await }
    })
    .await;
    let served = match result {
        Ok(served) => served,
        Err(failure) => return Err(failure_response(rt, failure, run, route, key_label)),
    };
    let Started { .. } = &served.value;
    let mut resp = Response::new(Body::empty());
    let report = Report {
        request_id,
        run: Some(&run),
        served: Some((served.target, served.model)),
        first_target: route.steps.first().map(|s| s.target),
        cost: Usd::ZERO,
        savings: Usd::ZERO,
        cost_in_headers: false,
    };
    apply(resp.headers_mut(), rt, &report);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let relay = stream::Relay::new(
        stream::RelayContext {
            rt: Arc::clone(rt),
            route,
            run,
            target: served.target,
            model: served.model,
            permit: served.permit,
            client_wants_usage: body.client_wants_usage(),
            prompt_chars_estimate: body.raw("messages").map_or(0, str::len),
            request_id: request_id.to_string(),
            key: caller.named().map(|k| k.name.clone()),
            key_label,
            started,
            _in_flight: in_flight,
        },
        served.value,
    );
    *resp.body_mut() = Body::from_stream(relay.into_stream());
    Ok(resp)
}

fn failure_response(
    rt: &Runtime,
    failure: Failure,
    run: Run,
    route: Route,
    key: String,
) -> HandleError {
    let err = match failure {
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
    (err, Some(run), Some(route), key)
}

fn give_up_message(rt: &Runtime, run: &Run, status: StatusCode) -> String {
    if run.attempts.is_empty() {
        return if status == StatusCode::GATEWAY_TIMEOUT {
            "the request deadline ran out before any model could be tried".into()
        } else {
            "no model of the chain could be tried: every one is circuit-open, rate-limited, saturated or disabled".into()
        };
    }
    let tiers: Vec<&str> = run
        .tried
        .iter()
        .map(|&t| rt.targets[t].label.as_str())
        .collect();
    format!(
        "all models failed after {} attempt(s) on tier(s) {}",
        run.attempts.len(),
        tiers.join(", ")
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

pub fn account_success(
    rt: &Runtime,
    target: usize,
    model: usize,
    usage: &Usage,
    cost: Usd,
    savings: Usd,
    caller: Caller<'_>,
) {
    let t = &rt.targets[target];
    if let Some(i) = t.models.iter().position(|&m| m == model) {
        let m = &t.metrics[i];
        m.prompt_tokens.inc_by(usage.prompt);
        m.completion_tokens.inc_by(usage.completion);
        m.cost.inc_by(cost.as_f64());
    }
    if savings > Usd::ZERO {
        rt.metrics.savings.inc_by(savings.as_f64());
    }
    if let Some(k) = caller.named() {
        rt.metrics
            .key_cost
            .with_label_values(&[&k.name])
            .inc_by(cost.as_f64());
    }
}

pub fn finish_request(
    rt: &Runtime,
    tier: &str,
    outcome: RequestOutcome,
    elapsed: Duration,
    target: Option<usize>,
) {
    rt.metrics
        .requests
        .with_label_values(&[tier, outcome.as_str()])
        .inc();
    match target {
        Some(t) => rt.targets[t]
            .request_duration
            .observe(elapsed.as_secs_f64()),
        None => rt
            .metrics
            .request_duration
            .with_label_values(&["none"])
            .observe(elapsed.as_secs_f64()),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn log_request(
    rt: &Runtime,
    request_id: &str,
    key: &str,
    route: Option<&Route>,
    run: Option<&Run>,
    model: Option<usize>,
    status: u16,
    elapsed: Duration,
    cost: Usd,
    usage: Option<&Usage>,
) {
    let chain = run.map(|r| {
        r.tried
            .iter()
            .map(|&t| rt.targets[t].label.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let task = route
        .and_then(|r| r.task)
        .map(|t| rt.config.tasks[t].name.as_str());
    let attempts = run.map_or(0, |r| r.attempts.len());
    let served = model.map(|m| rt.config.models[m].name.as_str());
    tracing::info!(
        target: "cascade::request",
        request_id,
        key,
        task,
        chain = chain.as_deref().unwrap_or(""),
        model = served,
        attempts,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        cost_usd = %cost,
        prompt_tokens = usage.map(|u| u.prompt),
        completion_tokens = usage.map(|u| u.completion),
        "chat completion"
    );
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
    let mut out = HeaderMap::new();
    for name in crate::providers::FORWARDED_HEADERS {
        if let Some(v) = headers.get(name) {
            out.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert("x-request-id", v);
    }
    out
}

fn new_request_id() -> String {
    format!(
        "req_{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}
