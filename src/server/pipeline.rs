//! What every endpoint's pipeline shares: admitting a request (its ticket,
//! its caller), reading its body within the deadline, the routing headers,
//! the headers forwarded upstream, what the client is told when the chain
//! gives up, and settling a refusal. Each endpoint (chat, embeddings) brings
//! its codec and calls plan, execute and settle in that order.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::auth::{self, Caller};
use super::settle::{self, Settlement, Ticket};
use super::state::AppState;
use crate::api::Endpoint;
use crate::chain::{Failure, Route, Run};
use crate::error::GatewayError;
use crate::header_names as names;
use crate::ledger::time;
use crate::providers::UpstreamError;
use crate::routing::{self, RouteRequest};
use crate::runtime::Runtime;

/// A request given up, with what was known when it was.
pub struct Refusal {
    pub err: GatewayError,
    /// Boxed, with the run: a refusal travels by value through every `?`.
    pub route: Option<Box<Route>>,
    pub run: Option<Box<Run>>,
    /// Billed by attempts that failed after the upstream answered.
    pub wasted: crate::cost::Usd,
}

impl From<GatewayError> for Refusal {
    fn from(err: GatewayError) -> Self {
        Refusal {
            err,
            route: None,
            run: None,
            wasted: crate::cost::Usd::ZERO,
        }
    }
}

impl From<routing::Refused> for Refusal {
    fn from(r: routing::Refused) -> Self {
        Refusal {
            err: r.err,
            route: r.route,
            run: None,
            wasted: crate::cost::Usd::ZERO,
        }
    }
}

/// A request past authentication: what its pipeline reads.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub rt: &'a Arc<Runtime>,
    pub headers: &'a HeaderMap,
    pub caller: Caller<'a>,
}

/// Admit a request: its ticket (request id, session, endpoint), then its
/// caller. A caller refused is settled and answered here.
pub fn admit<'a>(
    state: &'a AppState,
    rt: &'a Arc<Runtime>,
    headers: &'a HeaderMap,
    endpoint: Endpoint,
    started: Instant,
) -> Result<(Ctx<'a>, Ticket), Box<Response>> {
    let mut ticket = Ticket {
        request_id: headers
            .get(&names::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| plain_request_id(v))
            .map(str::to_string)
            .unwrap_or_else(new_request_id),
        key: None,
        key_label: "-".into(),
        session: headers
            .get(&names::SESSION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_string),
        endpoint,
        started,
        trace: crate::telemetry::TraceCtx::start(headers, &rt.config.telemetry),
        prompt: None,
        completion: None,
    };
    let caller = match auth::client(&rt.config, headers) {
        Ok(c) => c,
        Err(e) => return Err(Box::new(refuse(state, rt, ticket, e.into()))),
    };
    ticket.key = caller.named().map(|k| k.name.clone());
    ticket.key_label = caller.label().to_string();
    Ok((
        Ctx {
            state,
            rt,
            headers,
            caller,
        },
        ticket,
    ))
}

/// Settle a refused request and answer with its error.
pub fn refuse(state: &AppState, rt: &Runtime, ticket: Ticket, r: Refusal) -> Response {
    let run = r.run.map(|r| *r).unwrap_or_default();
    let anthropic = ticket.endpoint == Endpoint::Messages;
    let mut s = Settlement::refused(ticket, &r.err, r.route.map(|r| *r), run);
    s.wasted = r.wasted;
    let remaining = settle::settle(state, rt, &s);
    let mut resp = if anthropic {
        r.err.into_anthropic_response()
    } else {
        r.err.into_response()
    };
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    resp
}

impl Ctx<'_> {
    /// A routing header's value, trimmed, when not empty.
    pub fn header(&self, name: &header::HeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, name: &header::HeaderName) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// What is left of the tightest budget that applies, now.
    pub fn remaining(&self, ticket: &Ticket) -> Option<crate::cost::Usd> {
        let cfg = &self.rt.config;
        let session = ticket.session.as_deref();
        self.state
            .budgets()
            .remaining(cfg, self.caller.named(), session, time::now_ms())
    }
}

/// The body, read within the request's deadline and `max_body_bytes`.
pub async fn read(ctx: &Ctx<'_>, ticket: &Ticket, body: Body) -> Result<Bytes, Refusal> {
    let server = &ctx.rt.config.server;
    match tokio::time::timeout_at(
        ticket.started + server.request_timeout,
        read_body(body, ctx.headers, server.max_body_bytes),
    )
    .await
    {
        Ok(body) => Ok(body?),
        Err(_) => Err(GatewayError::RequestTimeout.into()),
    }
}

/// Plan: the route for the body's `model` and the routing headers, the
/// budget gate, escalation (`routing::plan`).
pub fn plan(ctx: &Ctx<'_>, ticket: &Ticket, model: Option<&str>) -> Result<Route, Refusal> {
    let cfg = &ctx.rt.config;
    let req = RouteRequest {
        task_header: ctx.header(&names::TASK),
        tier_header: ctx.header(&names::TIER),
        model,
        chain_header: ctx.header(&names::CHAIN),
        max_retries_header: ctx
            .headers
            .get(&names::MAX_RETRIES)
            .map(|v| v.to_str().unwrap_or("?")),
        minor_header: ctx.flag(&names::MINOR),
        escalate_header: ctx.flag(&names::ESCALATE),
        endpoint: ticket.endpoint,
    };
    Ok(routing::plan(
        &ctx.rt.chain,
        &req,
        ctx.caller.named(),
        || {
            crate::budget::on_exhausted(cfg) == crate::config::OnExhausted::Reject
                && ctx.remaining(ticket).is_some_and(|r| r.is_zero())
        },
    )?)
}

/// What the client is told when the chain gives up.
pub fn give_up(rt: &Runtime, failure: Failure, run: Run, route: Route) -> Refusal {
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
            attempts: settle::attempts_json(rt, &run),
            retry_after,
        },
    };
    Refusal {
        err,
        route: Some(Box::new(route)),
        run: Some(Box::new(run)),
        wasted: crate::cost::Usd::ZERO,
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
        rt.chain.label(&run.tried).replace(',', ", ")
    )
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
    crate::api::random_id("req")
}

/// What failed attempts of one request were billed for, after the upstream
/// answered (a cut buffered stream, an answer refused by `validate_output`):
/// wasted spend. Filled during the walk, priced when it is settled.
#[derive(Default)]
pub struct Billed {
    /// Anything added (most requests add nothing: no lock taken then).
    any: std::sync::atomic::AtomicBool,
    spent: std::sync::Mutex<Vec<(crate::config::ModelId, crate::cost::Usage)>>,
}

impl Billed {
    pub fn add(&self, model: crate::config::ModelId, usage: crate::cost::Usage) {
        if let Ok(mut v) = self.spent.lock() {
            v.push((model, usage));
            self.any.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Hedged attempts that lost were stopped before they answered: each
    /// is priced as its prompt, estimated from its characters.
    pub fn cancelled(&self, run: &crate::chain::Run, prompt_chars: usize) {
        if run.hedges == 0 {
            return;
        }
        let lost = run
            .attempts
            .iter()
            .filter(|a| a.outcome == crate::outcome::AttemptOutcome::Cancelled);
        for a in lost {
            self.add(a.model, crate::cost::estimate(prompt_chars, 0));
        }
    }

    /// The price of it all, tokens only (no per-request fee).
    pub fn cost(&self, rt: &Runtime) -> crate::cost::Usd {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return crate::cost::Usd::ZERO;
        }
        let Ok(v) = self.spent.lock() else {
            return crate::cost::Usd::ZERO;
        };
        v.iter()
            .map(|(m, u)| crate::cost::token_cost(&rt.config.models[*m].prices, u))
            .fold(crate::cost::Usd::ZERO, |a, b| a + b)
    }
}
