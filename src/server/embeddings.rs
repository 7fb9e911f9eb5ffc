//! POST /v1/embeddings: the same pipeline as chat (parse -> plan ->
//! execute -> settle) over embedding models. A chain holds models of one
//! vector space only (the config and `routing` see to it), so a fallback
//! never mixes vectors of two models.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tokio::time::Instant;

use super::pipeline::{self, give_up, Ctx, Refusal};
use super::settle::{self, InFlight, ServedBy, Settlement, Ticket};
use super::state::AppState;
use crate::api::embeddings::EmbeddingsBody;
use crate::api::Endpoint;
use crate::chain::{self, Mode};
use crate::cost;
use crate::error::GatewayError;
use crate::providers::{EmbedRequest, Forward};

pub async fn embeddings(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let (ctx, ticket) =
        match pipeline::admit(&state, &rt, &parts.headers, Endpoint::Embeddings, started) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
    match serve(&ctx, ticket, body).await {
        Ok(resp) => resp,
        Err((refusal, ticket)) => pipeline::refuse(&state, &rt, ticket, refusal),
    }
}

async fn serve(ctx: &Ctx<'_>, ticket: Ticket, body: Body) -> Result<Response, (Refusal, Ticket)> {
    let rt = ctx.rt;
    let cfg = &rt.config;

    // parse, plan
    let prepared = async {
        let bytes = pipeline::read(ctx, &ticket, body).await?;
        let body =
            EmbeddingsBody::parse(&bytes).map_err(|e| GatewayError::invalid(e.message, e.param))?;
        let route = pipeline::plan(ctx, &ticket, body.model())?;
        Ok::<_, Refusal>((body, route))
    }
    .await;
    let (body, route) = match prepared {
        Ok(p) => p,
        Err(refusal) => return Err((refusal, ticket)),
    };

    // execute
    let paid_allowed = || ctx.remaining(&ticket).is_none_or(|r| !r.is_zero());
    let deadline = ticket.started + cfg.server.request_timeout;
    let request_id = HeaderValue::from_str(&ticket.request_id).ok();
    let forward = Forward {
        headers: ctx.headers,
        request_id: request_id.as_ref(),
        trace: None,
    };
    let (run, result) = chain::execute(
        &rt.chain,
        &route,
        deadline,
        Mode::Complete,
        // a vector's shape is checked by the provider on every tier
        (&paid_allowed, &|_, _| Ok(())),
        |chain::Call { model, attempt, .. }| {
            rt.embed(EmbedRequest {
                body: &body,
                model: &cfg.models[model],
                forward: forward.attempt(ticket.trace, attempt),
                limits: cfg.policy.limits,
            })
        },
    )
    .await;
    let served = match result {
        Ok(served) => served,
        Err(f) => return Err((give_up(rt, f, run, route), ticket)),
    };
    // hedged attempts that lost: their estimated input, wasted
    let lost = pipeline::Billed::default();
    lost.cancelled(&run, body.input_chars);

    // settle: priced per input token
    let by = ServedBy::from(&served);
    let answer = served.value;
    let mut s = Settlement::served(ticket, route, run, by, false);
    s.wasted = lost.cost(rt);
    s.price(rt, answer.usage, || cost::estimate(body.input_chars, 0));
    let remaining = settle::settle(ctx.state, rt, &s);
    let mut resp = Response::new(Body::from(answer.body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    settle::headers(resp.headers_mut(), rt, &s, remaining, true);
    Ok(resp)
}
