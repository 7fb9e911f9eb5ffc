//! POST /v1/messages: Anthropic's Messages API through the same pipeline as
//! chat (parse -> plan -> execute -> settle). Each attempt speaks the
//! serving provider's API: an `anthropic` provider gets the body as it came
//! (its model set, thinking made safe across tiers) and its answer and
//! events go back as they are; other providers get it as Chat Completions
//! and their answers and chunks are translated back. Errors take Anthropic's
//! shape (`pipeline::refuse`). POST /v1/messages/count_tokens: a local
//! estimate.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;

use super::pipeline::{self, give_up, Ctx, Refusal};
use super::settle::{self, InFlight, ServedBy, Settlement, Ticket};
use super::state::AppState;
use super::stream;
use super::wire::Wire;
use crate::api::messages::{self as api, answer, MessagesBody};
use crate::api::{ChatBody, Endpoint};
use crate::chain::{self, Mode, Route};
use crate::error::GatewayError;
use crate::providers::{Completion, Forward, Passed, RawRequest, UpstreamError, UpstreamRequest};
use crate::runtime::Runtime;

pub async fn messages(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let (ctx, ticket) =
        match pipeline::admit(&state, &rt, &parts.headers, Endpoint::Messages, started) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
    match serve(&ctx, ticket, body, in_flight).await {
        Ok(resp) => resp,
        Err((refusal, ticket)) => pipeline::refuse(&state, &rt, ticket, refusal),
    }
}

async fn prepare(
    ctx: &Ctx<'_>,
    ticket: &Ticket,
    body: Body,
) -> Result<(MessagesBody, Route), Refusal> {
    let body = pipeline::read(ctx, ticket, body).await?;
    let body = MessagesBody::parse(&body).map_err(|e| GatewayError::invalid(e.message, e.param))?;
    let route = pipeline::plan(ctx, ticket, body.model())?;
    Ok((body, route))
}

/// The request as each kind of provider takes it: Chat Completions built
/// once, when a translated attempt is first made.
struct Forms<'a> {
    body: &'a MessagesBody,
    chat: OnceLock<(ChatBody, Vec<String>)>,
}

impl Forms<'_> {
    fn chat(&self) -> &(ChatBody, Vec<String>) {
        self.chat.get_or_init(|| api::to_chat::to_chat(self.body))
    }

    /// What the serving provider could not take.
    fn dropped(&self, rt: &Runtime, model: usize) -> Vec<String> {
        let provider = rt.config.models[model].provider;
        if rt.clients[provider].speaks_messages() {
            self.body.dropped_for_anthropic()
        } else {
            self.chat().1.clone()
        }
    }
}

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
    let forms = Forms {
        body: &body,
        chat: OnceLock::new(),
    };
    let billed = pipeline::Billed::default();
    let prompt_chars = body.prompt_chars();
    let paid_allowed = || ctx.remaining(&ticket).is_none_or(|r| !r.is_zero());
    let deadline = ticket.started + cfg.server.request_timeout;
    let request_id = HeaderValue::from_str(&ticket.request_id).ok();
    let forward = Forward {
        headers: ctx.headers,
        request_id: request_id.as_ref(),
        trace: None,
    };
    let beta = ctx.headers.get("anthropic-beta");
    let stream = body.stream();
    let mode = if stream { Mode::Stream } else { Mode::Complete };
    // one attempt on `model`: passed through, or translated
    let call = |model: usize, attempt: u32| {
        let m = &cfg.models[model];
        let forward = forward.attempt(ticket.trace, attempt);
        let passes = rt.clients[m.provider].speaks_messages();
        let raw = passes.then(|| RawRequest {
            body: body.for_anthropic(&m.upstream).0,
            forward,
            beta,
            limits: cfg.policy.limits,
        });
        let chat = (!passes).then(|| UpstreamRequest {
            body: &forms.chat().0,
            model: m,
            forward,
            limits: cfg.policy.limits,
        });
        (m.provider, raw, chat)
    };

    if mode == Mode::Stream {
        let max_hold = cfg.policy.limits.max_event_bytes;
        let (run, result) = chain::execute(
            &rt.chain,
            &route,
            deadline,
            mode,
            (&paid_allowed, &|_, s: &stream::Started| s.answered()),
            |c: chain::Call| {
                let (provider, raw, chat) = call(c.model, c.attempt);
                let open = async move {
                    match (raw, chat) {
                        (Some(raw), _) => match rt.messages(provider, raw, true).await? {
                            Passed::Stream(s) => Ok(s),
                            Passed::Complete(_) => {
                                Err(UpstreamError::BadBody("no stream came back".into()))
                            }
                        },
                        (None, Some(chat)) => rt.open_stream(chat).await,
                        (None, None) => Err(UpstreamError::BadBody("no request".into())),
                    }
                };
                stream::attempt(open, (&rt.chain, c), max_hold, (&billed, prompt_chars))
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
        let passes = rt.clients[cfg.models[served.model].provider].speaks_messages();
        let relaying = |_| stream::Relaying {
            splice: None,
            wire: if passes {
                Wire::Messages
            } else {
                Wire::MessagesFromChat(Box::default())
            },
            client_wants_usage: false,
        };
        let dropped = forms.dropped(rt, served.model);
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

    let (run, result) = chain::execute(
        &rt.chain,
        &route,
        deadline,
        mode,
        (&paid_allowed, &|model, c: &Completion| {
            let verdict = answer::worth_serving(&c.body);
            if verdict.is_err() {
                // refused, but generated and billed: wasted
                let usage = c
                    .usage
                    .unwrap_or_else(|| crate::cost::estimate(prompt_chars, c.body.len() / 2));
                billed.add(model, usage);
            }
            verdict
        }),
        |c: chain::Call| {
            let (provider, raw, chat) = call(c.model, c.attempt);
            async move {
                match (raw, chat) {
                    (Some(raw), _) => match rt.messages(provider, raw, false).await? {
                        Passed::Complete(c) => Ok(c),
                        Passed::Stream(_) => {
                            Err(UpstreamError::BadBody("a stream came back".into()))
                        }
                    },
                    (None, Some(chat)) => {
                        let c = rt.complete(chat).await?;
                        let body = answer::from_chat(&c.body, c.usage).to_string();
                        Ok(Completion {
                            body: body.into(),
                            usage: c.usage,
                        })
                    }
                    (None, None) => Err(UpstreamError::BadBody("no request".into())),
                }
            }
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

    // settle
    let by = ServedBy::from(&served);
    let completion = served.value;
    let mut s = Settlement::served(ticket, route, run, by, false);
    s.wasted = billed.cost(rt);
    s.price(rt, completion.usage, || {
        crate::cost::estimate(prompt_chars, completion.body.len() / 2)
    });
    let remaining = settle::settle(ctx.state, rt, &s);
    let mut resp = Response::new(Body::from(completion.body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    super::headers::dropped_params(resp.headers_mut(), &forms.dropped(rt, by.model));
    Ok(resp)
}

/// POST /v1/messages/count_tokens: `{"input_tokens": N}`, estimated from
/// the prompt's characters (about four per token). No upstream call, no
/// ledger row, no budget; the model must resolve.
pub async fn count_tokens(State(state): State<AppState>, req: Request) -> Response {
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let counted = async {
        let caller = super::auth::client(&rt.config, &parts.headers)?;
        let max = rt.config.server.max_body_bytes;
        let bytes = axum::body::to_bytes(body, max)
            .await
            .map_err(|_| GatewayError::RequestTooLarge(max))?;
        let invalid = |e: crate::api::BodyError| GatewayError::invalid(e.message, e.param);
        let fields = crate::api::parse_fields(&bytes).map_err(invalid)?;
        let model = crate::api::model_field(&fields).map_err(invalid)?;
        if crate::api::raw_field(&fields, "messages").is_none() {
            return Err(GatewayError::invalid(
                "messages: Field required",
                Some("messages"),
            ));
        }
        let header = |name: &header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let req = crate::routing::RouteRequest {
            task_header: header(&crate::header_names::TASK),
            tier_header: header(&crate::header_names::TIER),
            model: model.as_deref(),
            endpoint: Endpoint::Messages,
            ..Default::default()
        };
        crate::routing::resolve(&rt.chain, &req, caller.named())?;
        let chars: usize = ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| crate::api::raw_field(&fields, k))
            .map(str::len)
            .sum();
        Ok::<_, GatewayError>(chars.div_ceil(4))
    }
    .await;
    match counted {
        Ok(n) => {
            axum::response::IntoResponse::into_response(axum::Json(json!({"input_tokens": n})))
        }
        Err(e) => e.into_anthropic_response(),
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, Fut, F: FnOnce(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// As chat's (server/chat.rs): the request future is moved whole through
    /// every layer on the way in, so it must stay small.
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(&super::messages);
        assert!(size <= 4096, "messages future is {size} bytes");
    }
}
