//! The SPEC 5 response headers, on every chat completion response.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::chain::Run;
use crate::cost::Usd;
use crate::runtime::Runtime;

/// What a chat completion response reports about itself.
pub struct Report<'a> {
    pub request_id: &'a str,
    pub run: Option<&'a Run>,
    /// (target, model) that served.
    pub served: Option<(usize, usize)>,
    /// The route's first target.
    pub first_target: Option<usize>,
    pub cost: Usd,
    pub savings: Usd,
    /// Streams report cost in their closing comment instead.
    pub cost_in_headers: bool,
    pub escalated: bool,
    /// Left of the tightest budget that applies, after this request.
    pub budget_remaining: Option<Usd>,
}

fn put(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

pub fn apply(h: &mut HeaderMap, rt: &Runtime, r: &Report<'_>) {
    put(h, "x-request-id", r.request_id);
    if let Some((target, model)) = r.served {
        let cfg = &rt.config;
        put(h, "x-cascade-tier", &rt.targets[target].label);
        put(h, "x-cascade-model", &cfg.models[model].name);
        put(h, "x-cascade-provider", &cfg.model_provider(model).name);
    }
    let fallback = match (r.served, r.first_target) {
        (Some((served, _)), Some(first)) => served != first,
        _ => false,
    };
    h.insert(
        HeaderName::from_static("x-cascade-fallback"),
        HeaderValue::from_static(if fallback { "true" } else { "false" }),
    );
    let (chain, attempts) = match r.run {
        Some(run) => (
            run.tried
                .iter()
                .map(|&t| rt.targets[t].label.as_str())
                .collect::<Vec<_>>()
                .join(","),
            run.attempts.len(),
        ),
        None => (String::new(), 0),
    };
    put(h, "x-cascade-chain", &chain);
    put(h, "x-cascade-attempts", &attempts.to_string());
    put(
        h,
        "x-cascade-retries",
        &attempts.saturating_sub(1).to_string(),
    );
    if r.escalated {
        h.insert(
            HeaderName::from_static("x-cascade-escalated"),
            HeaderValue::from_static("true"),
        );
    }
    if let Some(left) = r.budget_remaining {
        put(h, "x-cascade-budget-remaining-usd", &left.to_string());
    }
    if r.cost_in_headers {
        put(h, "x-cascade-cost-usd", &r.cost.to_string());
        put(h, "x-cascade-savings-usd", &r.savings.to_string());
    }
}
