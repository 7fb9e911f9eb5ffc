//! Raw configuration as written in the file: serde types with defaults and
//! `deny_unknown_fields`. Nothing here is trusted; `super::validate` turns it
//! into runtime types whose invariants hold.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    /// A client's model string (exact, case-sensitive) -> a task, tier or model.
    pub aliases: BTreeMap<String, String>,
    pub keys: BTreeMap<String, RawKey>,
    pub policy: RawPolicy,
    pub providers: BTreeMap<String, RawProvider>,
    pub models: BTreeMap<String, RawModel>,
    pub tiers: BTreeMap<String, RawTier>,
    pub tasks: BTreeMap<String, RawTask>,
    pub budget: Option<RawBudget>,
    pub cost: RawCost,
    pub ledger: RawLedger,
    pub state: RawState,
    pub circuit_breaker: RawBreaker,
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL (`/v1/traces` is appended); unset: off, unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: f64,
    /// Prompt and completion text in spans (sensitive).
    pub capture_content: bool,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            capture_content: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub worker_threads: u64,
    pub max_body_bytes: u64,
    pub request_timeout_ms: i64,
    pub shutdown_grace_ms: i64,
    pub shutdown_delay_ms: i64,
    pub api_keys_env: String,
    pub admin_key_env: String,
    pub header_read_timeout_ms: i64,
    pub keep_alive_timeout_ms: i64,
    pub max_connections: i64,
    pub stream_write_timeout_ms: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            worker_threads: 0,
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 120_000,
            shutdown_grace_ms: 30_000,
            shutdown_delay_ms: 0,
            api_keys_env: "CASCADE_API_KEYS".into(),
            admin_key_env: "CASCADE_ADMIN_KEY".into(),
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 10_000,
            stream_write_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub key_env: String,
    #[serde(default)]
    pub allowed_tiers: Option<Vec<String>>,
    #[serde(default)]
    pub daily_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub max_total_attempts: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub backoff_jitter: bool,
    pub backoff_between_tiers: bool,
    pub respect_retry_after: bool,
    /// Retry a timed-out attempt on the same tier (default: fall back at once).
    pub retry_on_timeout: bool,
    pub default_timeout_ms: i64,
    pub default_first_token_timeout_ms: i64,
    pub default_max_retries: i64,
    pub max_response_bytes: i64,
    pub max_event_bytes: i64,
    /// How `"auto"` timeouts are computed from a model's latency.
    pub adaptive_timeout: RawAdaptive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdaptive {
    pub percentile: f64,
    pub multiplier: f64,
    pub min_ms: i64,
    pub max_ms: i64,
}

impl Default for RawAdaptive {
    fn default() -> Self {
        Self {
            percentile: 99.0,
            multiplier: 2.0,
            min_ms: 500,
            max_ms: 30_000,
        }
    }
}

/// A duration in milliseconds, or a word (`"auto"`; a number in a string,
/// as environment overrides give it, is read as one).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMs {
    Ms(i64),
    Word(String),
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            max_total_attempts: 6,
            backoff_base_ms: 500,
            backoff_max_ms: 8000,
            backoff_jitter: true,
            backoff_between_tiers: false,
            respect_retry_after: true,
            retry_on_timeout: false,
            default_timeout_ms: 60_000,
            default_first_token_timeout_ms: 30_000,
            default_max_retries: 2,
            max_response_bytes: 32 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            adaptive_timeout: RawAdaptive::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<String>,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub connect_timeout_ms: Option<i64>,
    #[serde(default)]
    pub stream_usage: Option<bool>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `http://[user:password@]host:port`, or `none`; default: the
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` environment.
    #[serde(default)]
    pub proxy: Option<String>,
    /// PEM certificates trusted for this provider, besides the system's and
    /// the built-in roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    // mock only
    #[serde(default)]
    pub latency_ms: Option<i64>,
    #[serde(default)]
    pub chunk_delay_ms: Option<i64>,
    #[serde(default)]
    pub fail_rate: Option<f64>,
    #[serde(default)]
    pub fail_status: Option<i64>,
    /// The share of calls that take `slow_ms` instead of `latency_ms`.
    #[serde(default)]
    pub slow_rate: Option<f64>,
    #[serde(default)]
    pub slow_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    #[serde(default)]
    pub cache_read_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub cache_write_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub usd_per_request: f64,
    #[serde(default)]
    pub context_window: Option<i64>,
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub max_concurrency: i64,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `chat` (default) or `embedding`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Embedding models: the length of their vectors.
    #[serde(default)]
    pub dimensions: Option<i64>,
    /// Embedding models: the vector space (default: the model's own name).
    #[serde(default)]
    pub embedding_space: Option<String>,
    /// Chat models: takes a final assistant message and continues it.
    #[serde(default)]
    pub prefill: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub models: Vec<String>,
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<RawMs>,
    #[serde(default)]
    pub first_token_timeout_ms: Option<RawMs>,
    /// Start one more attempt when none answered this long.
    #[serde(default)]
    pub hedge_after_ms: Option<i64>,
    /// ... or after the model's own latency percentile (`p50` ... `p99`).
    #[serde(default)]
    pub hedge_after: Option<String>,
    #[serde(default)]
    pub max_hedges: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// `[policy] retry_on_timeout` for this tier.
    #[serde(default)]
    pub retry_on_timeout: Option<bool>,
    /// A 200 with an empty answer, or one not matching the request's
    /// `response_format`, is a failed attempt.
    #[serde(default)]
    pub validate_output: bool,
    /// `error` (default) or `buffer`: what a stream that breaks after its
    /// first content does.
    #[serde(default)]
    pub mid_stream: Option<String>,
    /// `buffer`: past this many bytes the held answer is released.
    #[serde(default)]
    pub buffer_max_bytes: Option<i64>,
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub escalate: Option<RawEscalate>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalate {
    pub after_consecutive_failures: i64,
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub tier: String,
    #[serde(default)]
    pub chain: Option<Vec<String>>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub minor: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    #[serde(default)]
    pub daily_usd: Option<f64>,
    #[serde(default)]
    pub monthly_usd: Option<f64>,
    #[serde(default)]
    pub session_usd: Option<f64>,
    #[serde(default)]
    pub on_exhausted: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCost {
    pub baseline_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLedger {
    /// `sqlite` (default) or `postgres`.
    pub backend: Option<String>,
    pub path: String,
    pub flush_interval_ms: i64,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub pool_size: i64,
    /// 0: keep rows forever.
    pub retention_days: i64,
}

impl Default for RawLedger {
    fn default() -> Self {
        Self {
            backend: None,
            path: "data/cascade.db".into(),
            flush_interval_ms: 100,
            url: None,
            url_env: None,
            pool_size: 4,
            retention_days: 90,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBreaker {
    pub failure_threshold: i64,
    pub open_ms: i64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// `local` (default) or `redis`.
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub key_prefix: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            backend: None,
            url: None,
            url_env: None,
            key_prefix: "cascade".into(),
        }
    }
}
