//! POST /v1/chat/completions, one straight pipeline: **parse** (read and
//! check the body, read the routing headers) -> **plan** (`routing::plan`:
//! route, budget gate, escalation) -> **execute** (`chain::execute`, the only
//! place that retries) -> **settle** (`settle`: one settlement per request,
//! priced, counted, recorded and reported once; a stream's when it ends).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tokio::time::Instant;

use super::pipeline::{self, give_up, Ctx, Refusal};
use super::settle::{self, InFlight, ServedBy, Settlement, Ticket};
use super::splice::Splice;
use super::state::AppState;
use super::stream;
use super::wire::Wire;
use crate::api::validate;
use crate::api::{ChatBody, Endpoint};
use crate::chain::{self, Mode, Route};
use crate::config::MidStream;
use crate::error::GatewayError;
use crate::providers::{Completion, Forward, UpstreamRequest};
use crate::runtime::Runtime;

pub async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let (ctx, ticket) = match pipeline::admit(&state, &rt, &parts.headers, Endpoint::Chat, started)
    {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    match serve(&ctx, ticket, body, in_flight).await {
        Ok(resp) => resp,
        Err((refusal, ticket)) => pipeline::refuse(&state, &rt, ticket, refusal),
    }
}

/// Parse and plan: the body read and checked, the route.
async fn prepare(ctx: &Ctx<'_>, ticket: &Ticket, body: Body) -> Result<(ChatBody, Route), Refusal> {
    let body = pipeline::read(ctx, ticket, body).await?;
    let body = ChatBody::parse(&body).map_err(|e| GatewayError::invalid(e.message, e.param))?;
    let route = pipeline::plan(ctx, ticket, body.model())?;
    Ok((body, route))
}

/// The pipeline after authentication. The ticket comes back with a refusal.
async fn serve(
    ctx: &Ctx<'_>,
    ticket: Ticket,
    body: Body,
    in_flight: InFlight,
) -> Result<Response, (Refusal, Ticket)> {
    // parse, plan
    let (body, route) = match prepare(ctx, &ticket, body).await {
        Ok(prepared) => prepared,
        Err(refusal) => return Err((refusal, ticket)),
    };
    run(ctx, ticket, (body, route), Codec::Chat, in_flight).await
}

/// The API a chat-shaped request came in on: what its answer, its stream
/// and its dropped parameters look like.
pub enum Codec {
    Chat,
    /// POST /v1/responses, translated to chat on the way in.
    Responses {
        /// What the translation left out.
        dropped: Vec<String>,
        echo: crate::api::responses::Echo,
    },
}

/// Execute and settle a chat request (or one translated to chat), answering
/// in `codec`'s API.
pub async fn run(
    ctx: &Ctx<'_>,
    ticket: Ticket,
    (body, route): (ChatBody, Route),
    codec: Codec,
    in_flight: InFlight,
) -> Result<Response, (Refusal, Ticket)> {
    let rt = ctx.rt;
    let cfg = &rt.config;
    let mut ticket = ticket;
    // the messages in the request's span: only when asked for (sensitive)
    if cfg.telemetry.capture_content && ticket.trace.is_some_and(|t| t.sampled) {
        ticket.prompt = body.raw("messages").map(captured);
    }

    // execute
    let billed = pipeline::Billed::default();
    let prompt_chars = body.raw("messages").map_or(0, str::len);
    let paid_allowed = || ctx.remaining(&ticket).is_none_or(|r| !r.is_zero());
    let deadline = ticket.started + cfg.server.request_timeout;
    let request_id = HeaderValue::from_str(&ticket.request_id).ok();
    let forward = Forward {
        headers: ctx.headers,
        request_id: request_id.as_ref(),
        trace: None,
    };
    let upstream = |model: usize, attempt: u32| UpstreamRequest {
        body: &body,
        model: &cfg.models[model],
        forward: forward.attempt(ticket.trace, attempt),
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
            (&paid_allowed, &|_, s: &stream::Started| s.answered()),
            |call: chain::Call| {
                let open = rt.open_stream(upstream(call.model, call.attempt));
                stream::attempt(open, (&rt.chain, call), max_hold, (&billed, prompt_chars))
            },
        )
        .await;
        billed.cancelled(&run, prompt_chars);
        let served = match result {
            Ok(served) => served,
            Err(f) => {
                let mut refusal = give_up(rt, f, run, route);
                refusal.wasted = billed.cost(rt);
                return Err((refusal, ticket));
            }
        };
        // settle: when the stream ends; the headers now
        let dropped = dropped(rt, (&body, &codec), served.model);
        let relaying = |by: ServedBy| match codec {
            Codec::Chat => stream::Relaying {
                client_wants_usage: body.client_wants_usage(),
                splice: match rt.chain.targets[by.target].mid_stream {
                    MidStream::Continue => Splice::new(body, ctx.headers, request_id),
                    _ => None,
                },
                wire: Wire::Chat,
            },
            Codec::Responses { echo, .. } => stream::Relaying {
                client_wants_usage: false,
                splice: None,
                wire: Wire::Responses(Box::new(crate::api::responses::events::Encoder::new(echo))),
            },
        };
        let wasted = billed.cost(rt);
        return stream::respond(
            ctx,
            (ticket, route, run),
            (served, wasted),
            &dropped,
            relaying,
            (prompt_chars, in_flight),
        );
    }
    // what validate_output tiers check: built only if one is tried
    let format = std::sync::OnceLock::new();
    let check = |model, c: &Completion| {
        let format = format.get_or_init(|| validate::Format::of(body.raw("response_format")));
        let verdict = validate::completion(&c.body, format);
        if verdict.is_err() {
            // refused, but generated and billed: wasted
            let usage = c.usage.unwrap_or_else(|| {
                crate::cost::estimate(prompt_chars, crate::api::completion_text_chars(&c.body))
            });
            billed.add(model, usage);
        }
        verdict
    };
    let (run, result) = chain::execute(
        &rt.chain,
        &route,
        deadline,
        mode,
        (&paid_allowed, &check),
        |chain::Call { model, attempt, .. }| rt.complete(upstream(model, attempt)),
    )
    .await;
    billed.cancelled(&run, prompt_chars);
    let served = match result {
        Ok(served) => served,
        Err(f) => {
            let mut refusal = give_up(rt, f, run, route);
            refusal.wasted = billed.cost(rt);
            return Err((refusal, ticket));
        }
    };

    // settle
    let by = ServedBy::from(&served);
    let completion = served.value;
    let mut s = Settlement::served(ticket, route, run, by, false);
    if s.ticket.prompt.is_some() {
        // the answer's choices, for its span (capture_content)
        s.ticket.completion = serde_json::from_slice::<serde_json::Value>(&completion.body)
            .ok()
            .and_then(|v| v.get("choices").map(|c| captured(&c.to_string())));
    }
    s.wasted = billed.cost(rt);
    s.price(rt, completion.usage, || {
        crate::cost::estimate(
            body.raw("messages").map_or(0, str::len),
            crate::api::completion_text_chars(&completion.body),
        )
    });
    let remaining = settle::settle(ctx.state, rt, &s);
    let answer = match &codec {
        Codec::Chat => completion.body,
        Codec::Responses { echo, .. } => {
            let r = crate::api::responses::answer::from_chat(echo, &completion.body, s.usage);
            bytes::Bytes::from(r)
        }
    };
    let mut resp = Response::new(Body::from(answer));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    super::headers::dropped_params(resp.headers_mut(), &dropped(rt, (&body, &codec), by.model));
    Ok(resp)
}

/// What the translation from the client's API left out, then what the
/// serving provider could not take (`x-cascade-dropped-params`).
fn dropped(rt: &Runtime, (body, codec): (&ChatBody, &Codec), model: usize) -> Vec<String> {
    let provider = rt.config.models[model].provider;
    let mut dropped = match codec {
        Codec::Chat => Vec::new(),
        Codec::Responses { dropped, .. } => dropped.clone(),
    };
    for d in rt.clients[provider].dropped(body) {
        if !dropped.contains(&d) {
            dropped.push(d);
        }
    }
    dropped
}

/// Text for a span (`capture_content`): at most 16 KiB, cut at a character
/// boundary.
fn captured(text: &str) -> Box<str> {
    let mut end = text.len().min(16 * 1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
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
