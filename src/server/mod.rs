//! HTTP: the routes table, shared state, and graceful serving. Only this
//! module knows axum.

mod auth;
mod chat;
pub mod conn;
mod headers;
mod ops;
mod stream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::budget::Budgets;
use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// State shared by every request. The runtime is swapped whole on reload;
/// a request keeps the one it started with.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    ledger: Option<Arc<Ledger>>,
    budgets: Budgets,
}

impl AppState {
    /// Open the ledger the config names (if any), load budget spend from it.
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Result<Self, String> {
        let cfg = Arc::clone(&runtime.config);
        let ledger = match &cfg.ledger.path {
            Some(path) => Some(Arc::new(
                Ledger::open(
                    path,
                    cfg.ledger.flush_interval,
                    metrics.ledger_dropped.clone(),
                )
                .map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let budgets = match &ledger {
            Some(l) => {
                Budgets::load(l, crate::ledger::time::now_ms()).map_err(|e| e.to_string())?
            }
            None => Budgets::default(),
        };
        Ok(Self {
            inner: Arc::new(Shared {
                runtime: ArcSwap::from_pointee(runtime),
                metrics,
                ready: AtomicBool::new(true),
                ledger,
                budgets,
            }),
        })
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    pub fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    /// Flush and stop the ledger writer.
    pub fn close(&self) {
        if let Some(l) = &self.inner.ledger {
            l.close();
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn swap_runtime(&self, runtime: Runtime) {
        self.inner.runtime.store(Arc::new(runtime));
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }
}

/// The routes table.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(ops::models))
        .route("/v1/cascade/status", get(ops::status))
        .route("/v1/cascade/costs", get(ops::costs))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // the chat handler enforces server.max_body_bytes itself, with a 413
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
    GatewayError::NotFound(req.uri().path().to_string()).into_response()
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
    let finished = conn::run(
        listener,
        app(state.clone()),
        ops_app(state),
        limits,
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
