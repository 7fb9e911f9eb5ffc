//! Everything but chat: models, health, readiness, metrics, status.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth;
use super::state::AppState;
use crate::chain::health::{until, Circuit};
use crate::config::Name;
use crate::error::GatewayError;
use crate::ledger::Window;
use crate::routing;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let rt = state.runtime();
    let adaptive = &rt.config.policy.adaptive_timeout;
    for (m, latency) in rt.config.models.iter().zip(&rt.chain.latency) {
        latency.export(&m.name, state.metrics(), adaptive);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}

pub async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let rt = state.runtime();
    // Anthropic's clients send anthropic-version: they get Anthropic's shape
    let anthropic = headers.contains_key("anthropic-version");
    let caller = match auth::client(&rt.config, &headers) {
        Ok(c) => c,
        Err(e) if anthropic => return e.into_anthropic_response(),
        Err(e) => return e.into_response(),
    };
    // a named key sees only the names its allowed tiers can serve
    let usable = |name: &str| {
        let Some(key) = caller.named() else {
            return true;
        };
        let req = routing::RouteRequest {
            model: Some(name),
            ..Default::default()
        };
        !matches!(
            routing::resolve(&rt.chain, &req, Some(key)),
            Err(GatewayError::TierNotAllowed(_))
        )
    };
    let data: Vec<Value> = rt
        .config
        .client_names()
        .into_iter()
        .filter(|(name, _)| usable(name))
        .map(|(name, what)| {
            let kind = match what {
                Name::Task(_) => "task",
                Name::Tier(_) => "tier",
                Name::Model(_) => "model",
            };
            json!({"id": name, "object": "model", "created": 0, "owned_by": "cascade", "cascade_kind": kind})
        })
        .chain(
            rt.config
                .aliases()
                .into_iter()
                .filter(|(alias, _)| usable(alias))
                .map(|(alias, target)| {
                    json!({"id": alias, "object": "model", "created": 0, "owned_by": "cascade",
                        "cascade_kind": "alias", "cascade_target": target})
                }),
        )
        .collect();
    if anthropic {
        let data: Vec<Value> = data
            .iter()
            .map(|m| {
                let kind = m["cascade_kind"].as_str().unwrap_or_default();
                json!({"type": "model", "id": m["id"],
                    "display_name": format!("{} ({kind})", m["id"].as_str().unwrap_or_default()),
                    "created_at": "1970-01-01T00:00:00Z"})
            })
            .collect();
        let first = data.first().map_or(Value::Null, |m| m["id"].clone());
        let last = data.last().map_or(Value::Null, |m| m["id"].clone());
        return Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
            .into_response();
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let rt = state.runtime();
    let cfg = &rt.config;
    if let Err(e) = auth::admin(cfg, &headers) {
        return *e;
    }
    let tier_names =
        |ids: &[usize]| -> Vec<&str> { ids.iter().map(|&t| cfg.tiers[t].name.as_str()).collect() };
    let tiers: Vec<Value> = cfg
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "name": t.name,
                "models": t.models.iter().map(|&m| cfg.models[m].name.as_str()).collect::<Vec<_>>(),
                "chain": tier_names(&t.chain),
                "free": t.free,
                "enabled": t.enabled,
                "strategy": t.strategy.as_str(),
                "timeout_ms": t.timeout.to_json(),
                "first_token_timeout_ms": t.first_token_timeout.to_json(),
                "hedge": t.hedge.map(|h| json!({
                    "after": match h.after {
                        crate::config::HedgeAfter::Fixed(d) => json!(d.as_millis() as u64),
                        crate::config::HedgeAfter::Percentile(q) => json!(q.as_str()),
                    },
                    "max_hedges": h.max,
                })),
                "max_retries": t.max_retries,
                "escalate": t.escalate.map(|e| json!({
                    "after_consecutive_failures": e.after,
                    "to": cfg.tiers[e.to].name,
                    "consecutive_failures": rt.chain.escalation[i].consecutive(),
                    "pending": rt.chain.escalation[i].pending(),
                })),
            })
        })
        .collect();
    let tasks: Vec<Value> = cfg
        .tasks
        .iter()
        .map(|t| json!({"name": t.name, "tier": cfg.tiers[t.tier].name, "chain": tier_names(&t.chain), "minor": t.minor}))
        .collect();
    let models: Vec<Value> = cfg
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let h = &rt.chain.health[i];
            let (circuit, open_ms) = match h.circuit() {
                Circuit::Closed { .. } => ("closed", None),
                Circuit::Open { until: t } => ("open", Some(until(t).as_millis() as u64)),
                Circuit::HalfOpen { .. } => ("half_open", None),
            };
            json!({
                "name": m.name,
                "provider": cfg.providers[m.provider].name,
                "enabled": m.enabled,
                "circuit": circuit,
                "open_for_ms": open_ms,
                "resting_for_ms": h.resting_until().map(|t| until(t).as_millis() as u64),
                "in_flight": h.in_flight(),
                "latency": rt.chain.latency[i].to_json(&cfg.policy.adaptive_timeout),
            })
        })
        .collect();
    let now = crate::ledger::time::now_ms();
    let budgets = state.budgets();
    let limit = |u: Option<crate::cost::Usd>| u.map(|u| u.to_json());
    let (today, month, _) = budgets.spent(None, now);
    let budget = json!({
        "spent_today_usd": today.to_json(),
        "spent_month_usd": month.to_json(),
        "key_spent_today_usd": cfg.keys.iter().filter(|k| k.daily.is_some())
            .map(|k| (k.name.clone(), budgets.spent(Some(&k.name), now).2.to_json()))
            .collect::<serde_json::Map<String, Value>>(),
        "daily_usd": limit(cfg.budget.as_ref().and_then(|b| b.daily)),
        "monthly_usd": limit(cfg.budget.as_ref().and_then(|b| b.monthly)),
        "key_daily_usd": cfg.keys.iter().filter_map(|k| Some((k.name.clone(), k.daily?.to_json())))
            .collect::<serde_json::Map<String, Value>>(),
        "remaining_usd": budgets.remaining(cfg, None, None, now).map(|u| u.to_json()),
        "on_exhausted": match crate::budget::on_exhausted(cfg) {
            crate::config::OnExhausted::FreeOnly => "free_only",
            crate::config::OnExhausted::Reject => "reject",
        },
        "keys": cfg.keys.iter().filter(|k| k.daily.is_some()).map(|k| {
            (k.name.clone(), budgets.remaining(cfg, Some(k), None, now).map(|u| u.to_json()).unwrap_or(Value::Null))
        }).collect::<serde_json::Map<String, Value>>(),
    });
    let ledger = state.ledger().map(|l| {
        json!({
            "backend": l.backend(),
            "path": l.location(),
            "rows_flushed": l.rows_flushed(),
            "queued": l.queued(),
        })
    });
    let shared = match &cfg.state {
        crate::config::SharedState::Local => json!({"backend": "local", "up": true}),
        crate::config::SharedState::Redis { key_prefix, .. } => json!({
            "backend": "redis",
            "up": state.link().is_some_and(|l| l.up()),
            "key_prefix": key_prefix,
            "replica": state.link().map(|l| l.replica.clone()),
        }),
    };
    plain_json(&json!({
        "tiers": tiers, "tasks": tasks, "models": models, "budget": budget, "ledger": ledger,
        "state": shared,
    }))
}

/// GET /v1/cascade/requests: the last requests settled, newest first.
pub async fn requests(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let rt = state.runtime();
    if let Err(e) = auth::admin(&rt.config, &headers) {
        return *e;
    }
    plain_json(&state.recent().to_json())
}

/// GET /ui: the page, one file with its script and styles (no CDN).
pub async fn ui(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let rt = state.runtime();
    if let Err(e) = auth::admin(&rt.config, &headers) {
        return *e;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // nothing from elsewhere, and no framing by another site
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct CostsQuery {
    since: Option<String>,
}

/// GET /v1/cascade/costs?since=24h|7d|30d: the cost report from the ledger.
pub async fn costs(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<CostsQuery>,
) -> Response {
    let rt = state.runtime();
    if let Err(e) = auth::admin(&rt.config, &headers) {
        return *e;
    }
    let window = match Window::parse(q.since.as_deref().unwrap_or("24h")) {
        Ok(w) => w,
        Err(msg) => return GatewayError::invalid(msg, Some("since")).into_response(),
    };
    let Some(ledger) = state.ledger().cloned() else {
        return GatewayError::NotFound(
            "/v1/cascade/costs: the ledger is disabled (ledger.path is empty)".into(),
        )
        .into_response();
    };
    // include the rows still queued for the writer
    ledger.flush(std::time::Duration::from_secs(2)).await;
    let now = crate::ledger::time::now_ms();
    match tokio::task::spawn_blocking(move || ledger.report(window, now)).await {
        Ok(Ok(report)) => plain_json(&report.to_json()),
        Ok(Err(e)) => {
            tracing::error!("cost report: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(crate::api::error_body(
                    "the ledger could not be read",
                    "server_error",
                    None,
                    "ledger_error",
                )),
            )
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A JSON response whose money reads as plain decimals.
fn plain_json(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::to_plain_json(v),
    )
        .into_response()
}
