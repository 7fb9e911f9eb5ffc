//! POST /v1/responses: OpenAI's Responses API, stateless. The request is
//! read and translated to Chat Completions (`api::responses`), then runs
//! the chat pipeline (`chat::run`) and answers as a `response` object or
//! Responses events. GET and DELETE /v1/responses/{id}: 404, nothing is
//! stored.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::chat::{self, Codec};
use super::pipeline::{self, Refusal};
use super::settle::InFlight;
use super::state::AppState;
use crate::api::responses::ResponsesRequest;
use crate::api::Endpoint;
use crate::error::GatewayError;

pub async fn create(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics().in_flight);
    let rt = state.runtime();
    let (parts, body) = req.into_parts();
    let (ctx, ticket) =
        match pipeline::admit(&state, &rt, &parts.headers, Endpoint::Responses, started) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
    // parse, plan
    let prepared = async {
        let bytes = pipeline::read(&ctx, &ticket, body).await?;
        let request = ResponsesRequest::parse(&bytes)?;
        let route = pipeline::plan(&ctx, &ticket, request.model.as_deref())?;
        Ok::<_, Refusal>((request, route))
    }
    .await;
    let (request, route) = match prepared {
        Ok(p) => p,
        Err(refusal) => return pipeline::refuse(&state, &rt, ticket, refusal),
    };
    let codec = Codec::Responses {
        dropped: request.dropped,
        echo: request.echo,
    };
    match chat::run(&ctx, ticket, (request.chat, route), codec, in_flight).await {
        Ok(resp) => resp,
        Err((refusal, ticket)) => pipeline::refuse(&state, &rt, ticket, refusal),
    }
}

/// GET or DELETE /v1/responses/{id}: responses are not stored.
pub async fn stored(State(state): State<AppState>, req: Request) -> Response {
    let rt = state.runtime();
    if let Err(e) = super::auth::client(&rt.config, req.headers()) {
        return e.into_response();
    }
    GatewayError::NotFound(
        "responses are not stored by this gateway (it is stateless): keep the response you received"
            .into(),
    )
    .into_response()
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
        let size = future_size(&super::create);
        assert!(size <= 4096, "responses future is {size} bytes");
    }
}
