//! The validated configuration: what a request and the runtime read.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::cost::{Prices, Usd};
use crate::secret::Secret;

pub type ProviderId = usize;
pub type ModelId = usize;
pub type TierId = usize;
pub type TaskId = usize;

/// The environment the config reads: `CASCADE__*` overrides and the
/// variables that hold secrets. Tests pass their own.
pub type Env = HashMap<String, String>;

/// The process environment.
pub fn process_env() -> Env {
    std::env::vars().collect()
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    pub policy: Policy,
    pub providers: Vec<Provider>,
    pub models: Vec<Model>,
    pub tiers: Vec<Tier>,
    pub tasks: Vec<Task>,
    pub keys: Vec<NamedKey>,
    /// Unnamed gateway keys from `server.api_keys_env`.
    pub gateway_keys: Vec<Secret>,
    pub admin_key: Option<Secret>,
    pub budget: Option<Budget>,
    pub baseline_model: Option<ModelId>,
    pub ledger: Ledger,
    pub state: SharedState,
    pub breaker: Breaker,
    pub telemetry: Telemetry,
    pub(super) names: HashMap<String, Name>,
    /// `[aliases]`: model strings clients are built with, and what they mean.
    pub(super) aliases: HashMap<String, (String, Name)>,
}

/// What a client-facing name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    Task(TaskId),
    Tier(TierId),
    Model(ModelId),
}

#[derive(Debug)]
pub struct Server {
    pub listen: SocketAddr,
    pub worker_threads: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub api_keys_env: String,
    pub admin_key_env: String,
    /// A connection that has not sent its request head by then is closed.
    pub header_read_timeout: Duration,
    /// An idle kept-alive connection is closed after this.
    pub keep_alive_timeout: Duration,
    /// Beyond this many open connections new ones wait (a few reserved
    /// connections still serve /healthz, /readyz and /metrics).
    pub max_connections: usize,
    /// A client that takes none of a response's bytes for this long is dropped.
    pub stream_write_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub max_total_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub backoff_jitter: bool,
    pub backoff_between_tiers: bool,
    pub respect_retry_after: bool,
    /// Retry a timed-out attempt on its tier; else a timeout falls back.
    pub retry_on_timeout: bool,
    pub default_timeout: Duration,
    pub default_first_token_timeout: Duration,
    pub default_max_retries: u32,
    pub limits: Limits,
    pub adaptive_timeout: Adaptive,
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (protobuf).
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// Where spans are POSTed (`.../v1/traces`); None: tracing is off.
    pub traces_url: Option<url::Url>,
    /// Share of new traces kept (a client's sampled trace is always kept).
    pub sample_ratio: f64,
    pub capture_content: bool,
    /// `service.name` (`OTEL_SERVICE_NAME`, else `cascade`).
    pub service_name: String,
    /// Headers sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`,
    /// `k1=v1,k2=v2`): their values are credentials.
    pub headers: Vec<(String, crate::secret::Secret)>,
}

/// `[policy] adaptive_timeout`: an `"auto"` timeout is the model's recent
/// latency at `percentile`, times `multiplier`, clamped to [`min`, `max`];
/// `max` until there are enough samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptive {
    /// In (0, 100].
    pub percentile: f64,
    pub multiplier: f64,
    pub min: Duration,
    pub max: Duration,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            percentile: 99.0,
            multiplier: 2.0,
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// A per-attempt timeout: as configured, or learned (`"auto"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Fixed(Duration),
    Auto,
}

impl Limit {
    /// The configured value, in the form the config file takes.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Limit::Fixed(d) => serde_json::json!(d.as_millis() as u64),
            Limit::Auto => serde_json::json!("auto"),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Fixed(d) => write!(f, "{}ms", d.as_millis()),
            Limit::Auto => f.write_str("auto"),
        }
    }
}

impl std::fmt::Display for Hedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.after {
            HedgeAfter::Fixed(d) => write!(f, "hedge_after={}ms", d.as_millis())?,
            HedgeAfter::Percentile(q) => write!(f, "hedge_after={}", q.as_str())?,
        }
        write!(f, " max_hedges={}", self.max)
    }
}

/// A latency percentile a hedge may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantile {
    P50,
    P90,
    P95,
    P99,
}

impl Quantile {
    pub const ALL: [Quantile; 4] = [Quantile::P50, Quantile::P90, Quantile::P95, Quantile::P99];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantile::P50 => "p50",
            Quantile::P90 => "p90",
            Quantile::P95 => "p95",
            Quantile::P99 => "p99",
        }
    }

    pub fn fraction(self) -> f64 {
        match self {
            Quantile::P50 => 0.50,
            Quantile::P90 => 0.90,
            Quantile::P95 => 0.95,
            Quantile::P99 => 0.99,
        }
    }
}

/// A tier's hedging: when no attempt answered after `after`, one more starts
/// (at most `max` extra in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hedge {
    pub after: HedgeAfter,
    pub max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeAfter {
    Fixed(Duration),
    /// The model's own latency percentile (no hedging under 20 samples).
    Percentile(Quantile),
}

/// Bounds on what an upstream may make the gateway hold in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A larger non-streaming answer is a failed attempt.
    pub max_response_bytes: usize,
    /// A larger SSE event, or more than this held before the first content
    /// delta, is a failed attempt.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_response_bytes: 32 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Bearer,
    ApiKey,
    XApiKey,
    None,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockSettings {
    pub latency: Duration,
    pub chunk_delay: Duration,
    pub fail_rate: f64,
    pub fail_status: u16,
    /// A heavy tail: this share of calls waits `slow` instead of `latency`.
    pub slow_rate: f64,
    pub slow: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Mock(MockSettings),
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Mock(_) => "mock",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `base_url`'s host (a span's `server.address`).
    pub host: Option<String>,
    pub key: Option<Secret>,
    pub auth: Auth,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connect_timeout: Duration,
    pub stream_usage: bool,
    pub enabled: bool,
    /// The proxy its connections go through, if any.
    pub proxy: Option<Proxy>,
    /// Extra trusted certificates (PEM).
    pub ca_file: Option<PathBuf>,
}

/// An HTTP proxy: plain HTTP requests are sent to it in absolute form, TLS
/// connections are tunnelled through it with CONNECT.
#[derive(Clone, Debug, PartialEq)]
pub struct Proxy {
    /// `http://host:port`, without credentials (safe to log).
    pub uri: String,
    /// `user:password` from the proxy URL (sent as `Proxy-Authorization: Basic`).
    pub credentials: Option<Secret>,
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub provider: ProviderId,
    pub upstream: String,
    pub prices: Prices,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_concurrency: u32,
    /// The model's own `enabled` and its provider's.
    pub enabled: bool,
    pub kind: ModelKind,
    /// Takes a final assistant message and continues it (`mid_stream =
    /// "continue"` asks only such models to continue a broken stream).
    pub prefill: bool,
}

/// What a model does. Embedding models carry their vector space: a chain
/// falls back only between models of one space (their vectors can be mixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding {
        /// The vectors' length, when configured: an answer of another length
        /// is a failed attempt.
        dimensions: Option<u32>,
        space: String,
    },
}

impl ModelKind {
    /// Whether one chain may hold both: two chat models, or two embedding
    /// models of one space.
    pub fn compatible(&self, other: &ModelKind) -> bool {
        match (self, other) {
            (ModelKind::Chat, ModelKind::Chat) => true,
            (ModelKind::Embedding { space: a, .. }, ModelKind::Embedding { space: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }

    pub fn is_embedding(&self) -> bool {
        matches!(self, ModelKind::Embedding { .. })
    }

    /// `chat`, or `embedding space NAME` (for messages).
    pub fn describe(&self) -> String {
        match self {
            ModelKind::Chat => "chat".into(),
            ModelKind::Embedding { space, .. } => format!("embedding space {space:?}"),
        }
    }
}

/// What a tier does with a stream that breaks after its first content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidStream {
    /// End it with a `stream_interrupted` error event.
    Error,
    /// Hold the answer until it is complete (up to `max_bytes`, then release
    /// it and go on live, as `Error`), so a break falls back unseen.
    Buffer { max_bytes: usize },
    /// Ask the next models that take a prefill to continue the partial
    /// answer, spliced into the same stream.
    Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Ordered,
    RoundRobin,
    /// The model with the lowest latency estimate first.
    LeastLatency,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::Ordered,
        Strategy::RoundRobin,
        Strategy::LeastLatency,
    ];

    /// The name in config files and in the status endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Ordered => "ordered",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLatency => "least_latency",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escalate {
    pub after: u32,
    pub to: TierId,
}

#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub models: Vec<ModelId>,
    pub strategy: Strategy,
    pub timeout: Limit,
    pub first_token_timeout: Limit,
    pub hedge: Option<Hedge>,
    pub max_retries: u32,
    /// A timed-out attempt is retried here (else the next tier is tried).
    pub retry_on_timeout: bool,
    /// Answers are checked before they are served.
    pub validate_output: bool,
    pub mid_stream: MidStream,
    /// This tier followed by its `fallback` list.
    pub chain: Vec<TierId>,
    pub escalate: Option<Escalate>,
    pub enabled: bool,
    /// Every model of the tier costs nothing.
    pub free: bool,
}

#[derive(Debug)]
pub struct Task {
    pub name: String,
    pub tier: TierId,
    pub chain: Vec<TierId>,
    pub max_retries: Option<u32>,
    pub minor: bool,
}

#[derive(Debug)]
pub struct NamedKey {
    pub name: String,
    pub key: Secret,
    /// None: every tier.
    pub allowed_tiers: Option<Vec<TierId>>,
    pub daily: Option<Usd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExhausted {
    FreeOnly,
    Reject,
}

#[derive(Debug)]
pub struct Budget {
    pub daily: Option<Usd>,
    pub monthly: Option<Usd>,
    pub session: Option<Usd>,
    pub on_exhausted: OnExhausted,
}

/// Where budgets, circuits, rests and escalation counts live.
#[derive(Clone, Debug, PartialEq)]
pub enum SharedState {
    /// In this process only.
    Local,
    /// In Redis, shared by every replica with the same `key_prefix`.
    Redis { url: Secret, key_prefix: String },
}

/// Where the ledger lives.
#[derive(Clone, Debug)]
pub enum LedgerStore {
    /// A SQLite file: one process.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas; `pool_size` connections
    /// for reads (the writer has its own).
    Postgres { url: Secret, pool_size: usize },
}

#[derive(Debug)]
pub struct Ledger {
    /// None: disabled.
    pub store: Option<LedgerStore>,
    pub flush_interval: Duration,
    /// `retention_days`: rows older than this are deleted; None: kept.
    pub retention: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
pub struct Breaker {
    /// 0: no circuit breaking and no 429 rests.
    pub failure_threshold: u32,
    pub open: Duration,
}

impl Config {
    /// What a request's `model` (or a routing header) names.
    pub fn lookup(&self, name: &str) -> Option<Name> {
        self.names.get(name).copied()
    }

    /// What an alias (a client's exact, unprefixed model string) stands for.
    pub fn alias(&self, model: &str) -> Option<Name> {
        self.aliases.get(model).map(|(_, n)| *n)
    }

    /// Every alias with the name it points at, sorted.
    pub fn aliases(&self) -> Vec<(&str, &str)> {
        let mut all: Vec<(&str, &str)> = self
            .aliases
            .iter()
            .map(|(a, (target, _))| (a.as_str(), target.as_str()))
            .collect();
        all.sort_unstable();
        all
    }

    /// Every name a client may send, sorted: tasks, tiers and models.
    pub fn client_names(&self) -> Vec<(&str, Name)> {
        let mut all: Vec<(&str, Name)> = self.names.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    pub fn tier_by_name(&self, name: &str) -> Option<TierId> {
        self.tiers.iter().position(|t| t.name == name)
    }

    pub fn model_provider(&self, model: ModelId) -> &Provider {
        &self.providers[self.models[model].provider]
    }

    /// The label of a chain target: the tiers first (by `TierId`), then one
    /// per model for requests naming a model directly (`model:NAME`).
    pub fn target_label(&self, target: usize) -> String {
        match self.tiers.get(target) {
            Some(t) => t.name.clone(),
            None => format!("model:{}", self.models[target - self.tiers.len()].name),
        }
    }

    /// Whether any gateway key (named or not) is configured.
    pub fn auth_required(&self) -> bool {
        !self.gateway_keys.is_empty() || !self.keys.is_empty()
    }

    /// Every credential this config holds: provider keys, gateway keys,
    /// named keys, the admin key.
    pub fn credentials(&self) -> impl Iterator<Item = &Secret> {
        self.providers
            .iter()
            .filter_map(|p| p.key.as_ref())
            .chain(
                self.providers
                    .iter()
                    .filter_map(|p| p.proxy.as_ref()?.credentials.as_ref()),
            )
            .chain(self.gateway_keys.iter())
            .chain(self.keys.iter().map(|k| &k.key))
            .chain(self.admin_key.iter())
            .chain(self.telemetry.headers.iter().map(|(_, v)| v))
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub problem: String,
}

/// Everything wrong with a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file, p.problem)?;
            } else {
                write!(f, "{}: {}: {}", self.file, p.key, p.problem)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
