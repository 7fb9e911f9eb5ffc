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
    /// The upstream reported no usable token counts: they were estimated.
    pub usage_estimated: bool,
}

// Names built at compile time: `HeaderName::from_static` at run time parses
// the name on every call.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TIER: HeaderName = HeaderName::from_static("x-cascade-tier");
const MODEL: HeaderName = HeaderName::from_static("x-cascade-model");
const PROVIDER: HeaderName = HeaderName::from_static("x-cascade-provider");
const FALLBACK: HeaderName = HeaderName::from_static("x-cascade-fallback");
const CHAIN: HeaderName = HeaderName::from_static("x-cascade-chain");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-cascade-attempts");
const RETRIES: HeaderName = HeaderName::from_static("x-cascade-retries");
const ESCALATED: HeaderName = HeaderName::from_static("x-cascade-escalated");
const BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-cascade-budget-remaining-usd");
const COST: HeaderName = HeaderName::from_static("x-cascade-cost-usd");
const SAVINGS: HeaderName = HeaderName::from_static("x-cascade-savings-usd");
const USAGE_ESTIMATED: HeaderName = HeaderName::from_static("x-cascade-usage-estimated");

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
    // room for every SPEC 5 header at once, not a regrowth on the way
    h.reserve(12);
    put(h, REQUEST_ID, r.request_id);
    if let Some((target, model)) = r.served {
        put_value(h, TIER, rt.targets[target].label_header.as_ref());
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
    let attempts = match r.run {
        Some(run) => {
            match run.tried.as_slice() {
                // one tier: its label as resolved at load
                [only] => put_value(h, CHAIN, rt.targets[*only].label_header.as_ref()),
                tried => {
                    let chain = tried
                        .iter()
                        .map(|&t| rt.targets[t].label.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    put(h, CHAIN, &chain);
                }
            }
            run.attempts.len()
        }
        None => {
            h.insert(CHAIN, HeaderValue::from_static(""));
            0
        }
    };
    h.insert(ATTEMPTS, count(attempts));
    h.insert(RETRIES, count(attempts.saturating_sub(1)));
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
