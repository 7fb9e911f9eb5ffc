//! POST /v1/chat/completions, one straight pipeline: **parse** (read and
//! check the body, read the routing headers) -> **plan** (`routing::plan`:
//! route, budget gate, escalation) -> **execute** (`chain::execute`, the only
//! place that retries) -> **settle** (`settle`: one settlement per request,
//! priced, counted, recorded and reported once; a stream's when it ends).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::auth::{self, Caller};
use super::settle::{self, InFlight, ServedBy, Settlement, Ticket};
use super::state::AppState;
use super::stream;
use crate::api::ChatBody;
use crate::budget;
use crate::chain::{self, Failure, Mode, Route, Run};
use crate::config::OnExhausted;
use crate::error::GatewayError;
use crate::header_names as names;
use crate::ledger::time;
use crate::providers::{UpstreamError, UpstreamRequest};
use crate::routing::{self, RouteRequest};
use crate::runtime::Runtime;

/// A request given up, with what was known when it was.
struct Refusal {
    err: GatewayError,
    route: Option<Route>,
    run: Option<Run>,
}

impl From<GatewayError> for Refusal {
    fn from(err: GatewayError) -> Self {
        Refusal {
            err,
            route: None,
            run: None,
        }
    }
}

impl From<routing::Refused> for Refusal {
    fn from(r: routing::Refused) -> Self {
        Refusal {
            err: r.err,
            route: r.route.map(|r| *r),
            run: None,
        }
    }
}

pub async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
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
        started,
    };
    let caller = match auth::client(&rt.config, headers) {
        Ok(c) => c,
        Err(e) => return refuse(&state, &rt, ticket, e.into()),
    };
    ticket.key = caller.named().map(|k| k.name.clone());
    ticket.key_label = caller.label().to_string();
    let ctx = Ctx {
        state: &state,
        rt: &rt,
        headers,
        caller,
    };
    match serve(&ctx, ticket, body, in_flight).await {
        Ok(resp) => resp,
        Err((refusal, ticket)) => refuse(&state, &rt, ticket, refusal),
    }
}

/// Settle a refused request and answer with its error.
fn refuse(state: &AppState, rt: &Runtime, ticket: Ticket, r: Refusal) -> Response {
    let s = Settlement::refused(ticket, &r.err, r.route, r.run.unwrap_or_default());
    let remaining = settle::settle(state, rt, &s);
    let mut resp = r.err.into_response();
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    resp
}

struct Ctx<'a> {
    state: &'a AppState,
    rt: &'a Arc<Runtime>,
    headers: &'a HeaderMap,
    caller: Caller<'a>,
}

impl Ctx<'_> {
    /// A routing header's value, trimmed, when not empty.
    fn header(&self, name: &header::HeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &header::HeaderName) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// What is left of the tightest budget that applies, now.
    fn remaining(&self, ticket: &Ticket) -> Option<crate::cost::Usd> {
        let cfg = &self.rt.config;
        let session = ticket.session.as_deref();
        self.state
            .budgets()
            .remaining(cfg, self.caller.named(), session, time::now_ms())
    }
}

/// Parse and plan: the body read and checked, the route.
async fn prepare(ctx: &Ctx<'_>, ticket: &Ticket, body: Body) -> Result<(ChatBody, Route), Refusal> {
    let cfg = &ctx.rt.config;
    let body = match tokio::time::timeout_at(
        ticket.started + cfg.server.request_timeout,
        read_body(body, ctx.headers, cfg.server.max_body_bytes),
    )
    .await
    {
        Ok(body) => body?,
        Err(_) => return Err(GatewayError::RequestTimeout.into()),
    };
    let body = ChatBody::parse(&body).map_err(|e| GatewayError::invalid(e.message, e.param))?;
    let route_req = RouteRequest {
        task_header: ctx.header(&names::TASK),
        tier_header: ctx.header(&names::TIER),
        model: body.model(),
        chain_header: ctx.header(&names::CHAIN),
        max_retries_header: ctx
            .headers
            .get(&names::MAX_RETRIES)
            .map(|v| v.to_str().unwrap_or("?")),
        minor_header: ctx.flag(&names::MINOR),
        escalate_header: ctx.flag(&names::ESCALATE),
    };
    let route = routing::plan(&ctx.rt.chain, &route_req, ctx.caller.named(), || {
        budget::on_exhausted(cfg) == OnExhausted::Reject
            && ctx.remaining(ticket).is_some_and(|r| r.is_zero())
    })?;
    Ok((body, route))
}

/// The pipeline after authentication. The ticket comes back with a refusal.
async fn serve(
    ctx: &Ctx<'_>,
    ticket: Ticket,
    body: Body,
    in_flight: InFlight,
) -> Result<Response, (Refusal, Ticket)> {
    let rt = ctx.rt;
    let cfg = &rt.config;

    // parse, plan
    let (body, route) = match prepare(ctx, &ticket, body).await {
        Ok(prepared) => prepared,
        Err(refusal) => return Err((refusal, ticket)),
    };

    // execute
    let paid_allowed = || ctx.remaining(&ticket).is_none_or(|r| !r.is_zero());
    let deadline = ticket.started + cfg.server.request_timeout;
    let forwarded = forwardable(ctx.headers, &ticket.request_id);
    let upstream = |model: usize| UpstreamRequest {
        body: &body,
        model: &cfg.models[model],
        headers: &forwarded,
        limits: cfg.policy.limits,
    };
    let mode = if body.stream() {
        Mode::Stream
    } else {
        Mode::Complete
    };
    if mode == Mode::Stream {
        let max_hold = cfg.policy.limits.max_event_bytes;
        let (run, result) = chain::execute(
            &rt.chain,
            &route,
            deadline,
            mode,
            &paid_allowed,
            |model, _| stream::start(rt.open_stream(upstream(model)), max_hold),
        )
        .await;
        let served = match result {
            Ok(served) => served,
            Err(f) => return Err((give_up(rt, f, run, route), ticket)),
        };
        // settle: when the stream ends; the headers now
        let by = ServedBy::from(&served);
        let Some(attempt) = served.open else {
            let err = GatewayError::invalid("a stream's attempt was not left open", None);
            return Err((err.into(), ticket));
        };
        let remaining = ctx.remaining(&ticket);
        let settlement = Settlement::served(ticket, route, run, by, true);
        let mut resp = Response::new(Body::empty());
        settle::headers(resp.headers_mut(), rt, &settlement, remaining, false);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let open = stream::Open {
            state: ctx.state.clone(),
            rt: Arc::clone(rt),
            settlement,
            by,
            attempt,
            client_wants_usage: body.client_wants_usage(),
            prompt_chars: body.raw("messages").map_or(0, str::len),
            idle: rt.chain.targets[by.target].timeout,
        };
        let relay = stream::Relay::new(open, served.value, in_flight);
        *resp.body_mut() = Body::from_stream(relay.into_stream());
        return Ok(resp);
    }
    let (run, result) = chain::execute(
        &rt.chain,
        &route,
        deadline,
        mode,
        &paid_allowed,
        |model, _| rt.complete(upstream(model)),
    )
    .await;
    let served = match result {
        Ok(served) => served,
        Err(f) => return Err((give_up(rt, f, run, route), ticket)),
    };

    // settle
    let by = ServedBy::from(&served);
    let completion = served.value;
    let mut s = Settlement::served(ticket, route, run, by, false);
    s.price(rt, completion.usage, || {
        crate::cost::estimate(
            body.raw("messages").map_or(0, str::len),
            crate::api::completion_text_chars(&completion.body),
        )
    });
    let remaining = settle::settle(ctx.state, rt, &s);
    let mut resp = Response::new(Body::from(completion.body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    Ok(resp)
}

/// What the client is told when the chain gives up.
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
            attempts: settle::attempts_json(rt, &run),
            retry_after,
        },
    };
    Refusal {
        err,
        route: Some(route),
        run: Some(run),
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

/// The client headers an upstream may see (docs/api.md), with the request id.
fn forwardable(headers: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(crate::providers::FORWARDED_HEADERS.len());
    crate::providers::copy_forwarded(headers, &mut out);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(names::REQUEST_ID, v);
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
