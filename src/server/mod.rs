//! HTTP: the routes table, shared state, and graceful serving. Only this
//! module knows axum.

mod auth;
mod chat;
pub mod conn;
mod embeddings;
mod headers;
mod messages;
mod ops;
mod pipeline;
mod recent;
mod responses;
mod settle;
mod shared_state;
mod splice;
mod state;
mod stream;
mod wire;

pub use state::AppState;

use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use tokio::net::TcpListener;

use crate::error::GatewayError;

/// The routes table.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::stored).delete(responses::stored),
        )
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(ops::models))
        .route("/v1/cascade/status", get(ops::status))
        .route("/v1/cascade/costs", get(ops::costs))
        .route("/v1/cascade/requests", get(ops::requests))
        .route("/ui", get(ops::ui))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // the handlers enforce server.max_body_bytes themselves, with a 413
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// What a connection beyond `server.max_connections` may reach: the probes
/// and the metrics, so a saturated gateway can still be watched.
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(saturated)
        .with_state(state)
}

async fn saturated() -> Response {
    GatewayError::Saturated.into_response()
}

async fn not_found(req: Request) -> Response {
    GatewayError::NotFound(format!("no route for {}", req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    GatewayError::MethodNotAllowed(req.method().to_string()).into_response()
}

/// Serve until `shutdown` resolves, then drain: /readyz turns 503 at once,
/// connections are still accepted for `shutdown_delay`, then the listener
/// closes and in-flight requests get `shutdown_grace` to finish. Connection
/// limits and timeouts are in `conn`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (delay, grace, limits) = {
        let rt = state.runtime();
        let s = &rt.config.server;
        (s.shutdown_delay, s.shutdown_grace, conn::Limits::of(s))
    };
    let drain_state = state.clone();
    let stop_accepting = async move {
        shutdown.await;
        drain_state.set_ready(false);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutting down: not ready, draining"
        );
        tokio::time::sleep(delay).await;
    };
    let slots = state.slots().clone();
    let finished = conn::run(
        listener,
        (app(state.clone()), ops_app(state)),
        (limits, slots),
        stop_accepting,
        grace,
    )
    .await;
    if !finished {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown grace ran out; closing the remaining connections"
        );
    }
    Ok(())
}
