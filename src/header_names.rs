//! Every HTTP header name Cascade reads or writes, built at compile time
//! (`HeaderName::from_static` at run time parses the name on every call).
//! Their meaning is in docs/api.md.

use http::HeaderName;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A gateway key, as Anthropic's clients send theirs.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

// routing, sent by clients
pub const SESSION: HeaderName = HeaderName::from_static("x-cascade-session");
pub const TASK: HeaderName = HeaderName::from_static("x-cascade-task");
pub const TIER: HeaderName = HeaderName::from_static("x-cascade-tier");
pub const CHAIN: HeaderName = HeaderName::from_static("x-cascade-chain");
pub const MAX_RETRIES: HeaderName = HeaderName::from_static("x-cascade-max-retries");
pub const MINOR: HeaderName = HeaderName::from_static("x-cascade-minor");
pub const ESCALATE: HeaderName = HeaderName::from_static("x-cascade-escalate");

// reported on responses (x-cascade-tier and x-cascade-chain too)
pub const MODEL: HeaderName = HeaderName::from_static("x-cascade-model");
pub const PROVIDER: HeaderName = HeaderName::from_static("x-cascade-provider");
pub const FALLBACK: HeaderName = HeaderName::from_static("x-cascade-fallback");
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-cascade-attempts");
pub const RETRIES: HeaderName = HeaderName::from_static("x-cascade-retries");
pub const ESCALATED: HeaderName = HeaderName::from_static("x-cascade-escalated");
pub const BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-cascade-budget-remaining-usd");
pub const COST: HeaderName = HeaderName::from_static("x-cascade-cost-usd");
pub const SAVINGS: HeaderName = HeaderName::from_static("x-cascade-savings-usd");
pub const USAGE_ESTIMATED: HeaderName = HeaderName::from_static("x-cascade-usage-estimated");
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
pub const HEDGED: HeaderName = HeaderName::from_static("x-cascade-hedged");
pub const DROPPED_PARAMS: HeaderName = HeaderName::from_static("x-cascade-dropped-params");

// passed on to upstreams besides x-request-id
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const OPENAI_BETA: HeaderName = HeaderName::from_static("openai-beta");
