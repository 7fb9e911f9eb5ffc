//! The response headers of every chat completion (docs/api.md), from the
//! report the accountant (`settle`) makes.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::chain::Run;
use crate::cost::Usd;
use crate::runtime::Runtime;

/// What a chat completion response reports about itself.
pub struct Report<'a> {
    pub request_id: &'a str,
    pub run: &'a Run,
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
    /// The upstream reported no usable token counts: they were estimated.
    pub usage_estimated: bool,
}

use crate::header_names::{
    ATTEMPTS, BUDGET_REMAINING, CHAIN, COST, ESCALATED, FALLBACK, HEDGED, MODEL, PROVIDER,
    REQUEST_ID, RETRIES, SAVINGS, TIER, USAGE_ESTIMATED,
};

fn put(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A value resolved at load (names from the config), when it is a valid one.
fn put_value(h: &mut HeaderMap, name: HeaderName, value: Option<&HeaderValue>) {
    if let Some(v) = value {
        h.insert(name, v.clone());
    }
}

fn count(n: usize) -> HeaderValue {
    HeaderValue::from(n as u64)
}

pub fn apply(h: &mut HeaderMap, rt: &Runtime, r: &Report<'_>) {
    // room for every x-cascade-* header at once, not a regrowth on the way
    h.reserve(12);
    put(h, REQUEST_ID, r.request_id);
    if let Some((target, model)) = r.served {
        put_value(h, TIER, rt.chain.targets[target].label_header.as_ref());
        let names = &rt.model_headers[model];
        put_value(h, MODEL, names.model.as_ref());
        put_value(h, PROVIDER, names.provider.as_ref());
    }
    let fallback = match (r.served, r.first_target) {
        (Some((served, _)), Some(first)) => served != first,
        _ => false,
    };
    h.insert(
        FALLBACK,
        HeaderValue::from_static(if fallback { "true" } else { "false" }),
    );
    match r.run.tried.as_slice() {
        // one tier: its label as resolved at load
        [only] => put_value(h, CHAIN, rt.chain.targets[*only].label_header.as_ref()),
        [] => {
            h.insert(CHAIN, HeaderValue::from_static(""));
        }
        tried => put(h, CHAIN, &rt.chain.label(tried)),
    }
    let attempts = r.run.attempts.len();
    h.insert(ATTEMPTS, count(attempts));
    // a hedge is not a retry
    let hedges = r.run.hedges as usize;
    h.insert(RETRIES, count(attempts.saturating_sub(1 + hedges)));
    if hedges > 0 {
        h.insert(HEDGED, HeaderValue::from_static("true"));
    }
    if r.escalated {
        h.insert(ESCALATED, HeaderValue::from_static("true"));
    }
    if let Some(left) = r.budget_remaining {
        put(h, BUDGET_REMAINING, left.plain().as_str());
    }
    if r.usage_estimated {
        h.insert(USAGE_ESTIMATED, HeaderValue::from_static("true"));
    }
    if r.cost_in_headers {
        put(h, COST, r.cost.plain().as_str());
        put(h, SAVINGS, r.savings.plain().as_str());
    }
}

/// `x-cascade-dropped-params: a,b` (absent when nothing was dropped).
pub fn dropped_params(h: &mut HeaderMap, dropped: &[String]) {
    if dropped.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&dropped.join(",")) {
        h.insert(crate::header_names::DROPPED_PARAMS, v);
    }
}
