//! Raw -> runtime: every invariant checked here, every problem collected with
//! the key it belongs to.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use config::{Environment, File, FileFormat};
use http::{HeaderName, HeaderValue};

use super::raw::*;
use super::*;

pub(super) fn read_raw(path: &Path, env: &Env) -> Result<RawConfig, ConfigError> {
    let file = path.display().to_string();
    let fail = |key: &str, problem: String| ConfigError {
        file: file.clone(),
        problems: vec![Problem {
            key: key.to_string(),
            problem,
        }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail("", format!("cannot read: {e}")))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => FileFormat::Toml,
    };
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("CASCADE__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let built = config::Config::builder()
        .add_source(File::from_str(&text, format))
        .add_source(
            Environment::with_prefix("CASCADE")
                .separator("__")
                // an empty variable (compose's `${X:-}`) means unset
                .ignore_empty(true)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| fail("", e.to_string()))?;
    serde_path_to_error::deserialize::<_, RawConfig>(built).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        fail(&key, e.into_inner().to_string())
    })
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            problem: problem.into(),
        });
    }

    fn name(&mut self, key: &str, name: &str) {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.err(
                key,
                format!("invalid name {name:?}: use only letters, digits, '-' and '_'"),
            );
        }
    }

    fn ms(&mut self, key: &str, value: i64) -> Duration {
        if value < 0 {
            self.err(key, format!("must not be negative (got {value})"));
            return Duration::ZERO;
        }
        Duration::from_millis(value as u64)
    }

    /// A duration that must be above zero.
    fn positive_ms(&mut self, key: &str, value: i64) -> Duration {
        if value <= 0 {
            self.err(key, format!("must be positive (got {value})"));
            return Duration::from_millis(1);
        }
        Duration::from_millis(value as u64)
    }

    /// A size or count that must be above zero.
    fn positive(&mut self, key: &str, value: i64) -> usize {
        match usize::try_from(value) {
            Ok(v) if v > 0 => v,
            _ => {
                self.err(
                    key,
                    format!("must be a positive whole number (got {value})"),
                );
                1
            }
        }
    }

    fn count(&mut self, key: &str, value: i64) -> u32 {
        match u32::try_from(value) {
            Ok(v) => v,
            Err(_) => {
                self.err(key, format!("must be a whole number from 0 (got {value})"));
                0
            }
        }
    }

    fn usd(&mut self, key: &str, value: f64) -> Usd {
        if !value.is_finite() || value < 0.0 {
            self.err(key, format!("must not be negative (got {value})"));
            return Usd::ZERO;
        }
        Usd::from_dollars(value)
    }

    /// A price per Mtok (or per request) as nano-dollars.
    fn price(&mut self, key: &str, value: f64) -> u64 {
        if !value.is_finite() || value < 0.0 {
            self.err(key, format!("must not be negative (got {value})"));
            return 0;
        }
        (value * 1e9).round() as u64
    }

    fn secret_from_env(&mut self, key: &str, var: &str, env: &Env) -> Option<Secret> {
        match env.get(var).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                self.err(key, format!("environment variable {var} is unset or empty"));
                None
            }
        }
    }
}

pub(super) fn validate(path: &Path, raw: RawConfig, env: &Env) -> Result<Config, ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    let server = server(&mut c, &raw.server);
    let policy = policy(&mut c, &raw.policy);

    // providers
    let provider_ids: HashMap<&str, ProviderId> = raw
        .providers
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let providers: Vec<Provider> = raw
        .providers
        .iter()
        .map(|(name, p)| provider(&mut c, name, p, env))
        .collect();

    // models
    let model_ids: HashMap<&str, ModelId> = raw
        .models
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let models: Vec<Model> = raw
        .models
        .iter()
        .map(|(name, m)| {
            let key = format!("models.{name}");
            c.name(&key, name);
            let provider = match provider_ids.get(m.provider.as_str()) {
                Some(&id) => id,
                None => {
                    c.err(
                        format!("{key}.provider"),
                        format!("provider {:?} is not defined", m.provider),
                    );
                    0
                }
            };
            let input = c.price(&format!("{key}.input_usd_per_mtok"), m.input_usd_per_mtok);
            let prices = Prices {
                input,
                output: c.price(&format!("{key}.output_usd_per_mtok"), m.output_usd_per_mtok),
                cache_read: m
                    .cache_read_usd_per_mtok
                    .map(|v| c.price(&format!("{key}.cache_read_usd_per_mtok"), v))
                    .unwrap_or(input),
                cache_write: m
                    .cache_write_usd_per_mtok
                    .map(|v| c.price(&format!("{key}.cache_write_usd_per_mtok"), v))
                    .unwrap_or(input),
                per_request: c.price(&format!("{key}.usd_per_request"), m.usd_per_request),
            };
            let positive = |c: &mut Checker, field: &str, v: Option<i64>| -> Option<u64> {
                let v = v?;
                if v <= 0 {
                    c.err(
                        format!("{key}.{field}"),
                        format!("must be positive (got {v})"),
                    );
                    return None;
                }
                Some(v as u64)
            };
            if m.model.trim().is_empty() {
                c.err(format!("{key}.model"), "the upstream model name is empty");
            }
            let kind = match m.kind.as_deref() {
                None | Some("chat") => {
                    for (field, set) in [
                        ("dimensions", m.dimensions.is_some()),
                        ("embedding_space", m.embedding_space.is_some()),
                    ] {
                        if set {
                            c.err(
                                format!("{key}.{field}"),
                                "only embedding models (kind = \"embedding\") take it",
                            );
                        }
                    }
                    ModelKind::Chat
                }
                Some("embedding") => {
                    if providers
                        .get(provider)
                        .is_some_and(|p| matches!(p.kind, ProviderKind::Anthropic))
                    {
                        c.err(
                            format!("{key}.kind"),
                            "anthropic providers have no embeddings API",
                        );
                    }
                    let space = m
                        .embedding_space
                        .as_deref()
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .unwrap_or(name)
                        .to_string();
                    ModelKind::Embedding {
                        dimensions: positive(&mut c, "dimensions", m.dimensions)
                            .map(|d| d.min(u64::from(u32::MAX)) as u32),
                        space,
                    }
                }
                Some(other) => {
                    c.err(
                        format!("{key}.kind"),
                        format!("unknown kind {other:?} (chat | embedding)"),
                    );
                    ModelKind::Chat
                }
            };
            Model {
                name: name.clone(),
                provider,
                upstream: m.model.clone(),
                prices,
                context_window: positive(&mut c, "context_window", m.context_window),
                max_output_tokens: positive(&mut c, "max_output_tokens", m.max_output_tokens),
                max_concurrency: c.count(&format!("{key}.max_concurrency"), m.max_concurrency),
                enabled: m.enabled && providers.get(provider).is_some_and(|p| p.enabled),
                kind,
            }
        })
        .collect();
    // one space, one length
    for (i, a) in models.iter().enumerate() {
        if let ModelKind::Embedding {
            dimensions: Some(da),
            space: sa,
        } = &a.kind
        {
            let clash = models[..i].iter().find(|b| {
                matches!(&b.kind, ModelKind::Embedding { dimensions: Some(db), space: sb } if sb == sa && db != da)
            });
            if let Some(b) = clash {
                c.err(
                    format!("models.{}.dimensions", a.name),
                    format!(
                        "embedding space {sa:?} has vectors of {da} here and of another length in models.{}",
                        b.name
                    ),
                );
            }
        }
    }

    // tiers
    let tier_ids: HashMap<&str, TierId> = raw
        .tiers
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let tier_ref = |c: &mut Checker, key: &str, name: &str| -> Option<TierId> {
        let id = tier_ids.get(name).copied();
        if id.is_none() {
            c.err(key, format!("tier {name:?} is not defined"));
        }
        id
    };
    let mut tiers = Vec::new();
    for (i, (name, t)) in raw.tiers.iter().enumerate() {
        let key = format!("tiers.{name}");
        c.name(&key, name);
        if t.models.is_empty() {
            c.err(format!("{key}.models"), "a tier needs at least one model");
        }
        let mut tier_models = Vec::new();
        for m in &t.models {
            match model_ids.get(m.as_str()) {
                Some(&id) => tier_models.push(id),
                None => c.err(
                    format!("{key}.models"),
                    format!("model {m:?} is not defined"),
                ),
            }
        }
        let strategy = match t.strategy.as_deref() {
            None => Strategy::Ordered,
            Some(name) => match Strategy::ALL.into_iter().find(|k| k.as_str() == name) {
                Some(known) => known,
                None => {
                    c.err(
                        format!("{key}.strategy"),
                        format!("unknown strategy {name:?} (ordered | round_robin)"),
                    );
                    Strategy::Ordered
                }
            },
        };
        let mut chain = vec![i];
        for f in &t.fallback {
            if let Some(id) = tier_ref(&mut c, &format!("{key}.fallback"), f) {
                if chain.contains(&id) {
                    c.err(
                        format!("{key}.fallback"),
                        format!("tier {f:?} is listed twice"),
                    );
                } else {
                    chain.push(id);
                }
            }
        }
        let escalate = t.escalate.as_ref().and_then(|e| {
            let to = tier_ref(&mut c, &format!("{key}.escalate.to"), &e.to)?;
            if to == i {
                c.err(
                    format!("{key}.escalate.to"),
                    "a tier cannot escalate to itself",
                );
            }
            if e.after_consecutive_failures < 1 {
                c.err(
                    format!("{key}.escalate.after_consecutive_failures"),
                    "must be at least 1",
                );
            }
            Some(Escalate {
                after: e.after_consecutive_failures.max(1) as u32,
                to,
            })
        });
        tiers.push(Tier {
            name: name.clone(),
            free: tier_models.iter().all(|&m| models[m].prices.is_free()),
            models: tier_models,
            strategy,
            timeout: t
                .timeout_ms
                .map(|v| c.ms(&format!("{key}.timeout_ms"), v))
                .unwrap_or(policy.default_timeout),
            first_token_timeout: t
                .first_token_timeout_ms
                .map(|v| c.ms(&format!("{key}.first_token_timeout_ms"), v))
                .unwrap_or(policy.default_first_token_timeout),
            max_retries: t
                .max_retries
                .map(|v| c.count(&format!("{key}.max_retries"), v))
                .unwrap_or(policy.default_max_retries),
            retry_on_timeout: t.retry_on_timeout.unwrap_or(policy.retry_on_timeout),
            validate_output: t.validate_output,
            mid_stream: match t.mid_stream.as_deref() {
                None | Some("error") => MidStream::Error,
                Some("buffer") => MidStream::Buffer {
                    max_bytes: t
                        .buffer_max_bytes
                        .map(|v| c.positive(&format!("{key}.buffer_max_bytes"), v))
                        .unwrap_or(1024 * 1024),
                },
                Some("continue") => {
                    c.err(
                        format!("{key}.mid_stream"),
                        "\"continue\" is not supported yet (error | buffer)",
                    );
                    MidStream::Error
                }
                Some(other) => {
                    c.err(
                        format!("{key}.mid_stream"),
                        format!("unknown value {other:?} (error | buffer)"),
                    );
                    MidStream::Error
                }
            },
            chain,
            escalate,
            enabled: t.enabled,
        });
    }

    // tasks
    let mut tasks = Vec::new();
    for (name, t) in &raw.tasks {
        let key = format!("tasks.{name}");
        c.name(&key, name);
        let Some(tier) = tier_ref(&mut c, &format!("{key}.tier"), &t.tier) else {
            continue;
        };
        let chain = match &t.chain {
            None => tiers.get(tier).map(|t| t.chain.clone()).unwrap_or_default(),
            Some(list) => {
                if list.is_empty() {
                    c.err(
                        format!("{key}.chain"),
                        "an explicit chain needs at least one tier",
                    );
                }
                list.iter()
                    .filter_map(|n| tier_ref(&mut c, &format!("{key}.chain"), n))
                    .collect()
            }
        };
        tasks.push(Task {
            name: name.clone(),
            tier,
            chain,
            max_retries: t
                .max_retries
                .map(|v| c.count(&format!("{key}.max_retries"), v)),
            minor: t.minor,
        });
    }

    // a chain runs over models of one kind, and embeddings over one space
    let chains = tiers
        .iter()
        .map(|t| (format!("tiers.{}", t.name), t.chain.clone()))
        .chain(
            tasks
                .iter()
                .map(|t| (format!("tasks.{}", t.name), t.chain.clone())),
        );
    let models_ref = &models;
    for (key, chain) in chains {
        let mut kinds = chain
            .iter()
            .filter_map(|&t| tiers.get(t))
            .flat_map(|t| t.models.iter().map(move |&m| (t, &models_ref[m])));
        if let Some((first_tier, first)) = kinds.next() {
            if let Some((tier, other)) = kinds.find(|(_, m)| !m.kind.compatible(&first.kind)) {
                c.err(
                    key,
                    format!(
                        "the chain mixes {} (models.{} in tiers.{}) and {} (models.{} in tiers.{}): a fallback must answer in the same kind{}",
                        first.kind.describe(),
                        first.name,
                        first_tier.name,
                        other.kind.describe(),
                        other.name,
                        tier.name,
                        if first.kind.is_embedding() && other.kind.is_embedding() {
                            ", and vectors of different spaces cannot be mixed"
                        } else {
                            ""
                        },
                    ),
                );
            }
        }
    }

    // escalation stays within the kind and the space, too
    for t in &tiers {
        let Some(esc) = t.escalate else { continue };
        let (Some(&from), Some(to)) = (t.models.first(), tiers.get(esc.to)) else {
            continue;
        };
        if let Some(&m) = to
            .models
            .iter()
            .find(|&&m| !models[m].kind.compatible(&models[from].kind))
        {
            c.err(
                format!("tiers.{}.escalate.to", t.name),
                format!(
                    "tiers.{} holds {} (models.{}) where this tier holds {}",
                    to.name,
                    models[m].kind.describe(),
                    models[m].name,
                    models[from].kind.describe()
                ),
            );
        }
    }

    // one namespace for what clients may name
    let mut names: HashMap<String, Name> = HashMap::new();
    let mut claim = |c: &mut Checker, section: &str, name: &str, what: Name| {
        if let Some(prev) = names.insert(name.to_string(), what) {
            let other = match prev {
                Name::Task(_) => "tasks",
                Name::Tier(_) => "tiers",
                Name::Model(_) => "models",
            };
            c.err(
                format!("{section}.{name}"),
                format!("name {name:?} is also used in [{other}]: task, tier and model names must be unique"),
            );
        }
    };
    for (i, m) in models.iter().enumerate() {
        claim(&mut c, "models", &m.name, Name::Model(i));
    }
    for (i, t) in tiers.iter().enumerate() {
        claim(&mut c, "tiers", &t.name, Name::Tier(i));
    }
    for (i, t) in tasks.iter().enumerate() {
        claim(&mut c, "tasks", &t.name, Name::Task(i));
    }

    // aliases: client strings, never names themselves, pointing at names
    let mut aliases = HashMap::new();
    for (alias, target) in &raw.aliases {
        let key = format!("aliases.{alias:?}");
        if alias.trim().is_empty() {
            c.err(key, "an alias cannot be empty");
            continue;
        }
        if let Some(n) = names.get(alias.as_str()) {
            let what = match n {
                Name::Task(_) => "task",
                Name::Tier(_) => "tier",
                Name::Model(_) => "model",
            };
            c.err(key, format!("{alias:?} is already a {what} name"));
            continue;
        }
        match names.get(target.as_str()) {
            Some(&n) => {
                aliases.insert(alias.clone(), (target.clone(), n));
            }
            None if raw.aliases.contains_key(target) => c.err(
                key,
                format!("points at {target:?}, another alias: point it at a task, tier or model"),
            ),
            None => c.err(
                key,
                format!("points at {target:?}, which is not a task, tier or model"),
            ),
        }
    }

    // gateway keys
    let gateway_keys: Vec<Secret> = env
        .get(&server.api_keys_env)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .collect()
        })
        .unwrap_or_default();
    let admin_key = env
        .get(&server.admin_key_env)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(Secret::new);
    let keys = raw
        .keys
        .iter()
        .filter_map(|(name, k)| {
            let key = format!("keys.{name}");
            c.name(&key, name);
            let secret = c.secret_from_env(&format!("{key}.key_env"), &k.key_env, env)?;
            let allowed_tiers = k.allowed_tiers.as_ref().map(|list| {
                list.iter()
                    .filter_map(|n| tier_ref(&mut c, &format!("{key}.allowed_tiers"), n))
                    .collect()
            });
            Some(NamedKey {
                name: name.clone(),
                key: secret,
                allowed_tiers,
                daily: k.daily_usd.map(|v| c.usd(&format!("{key}.daily_usd"), v)),
            })
        })
        .collect::<Vec<_>>();

    let ledger_path = raw.ledger.path.trim();
    let ledger = Ledger {
        path: (!ledger_path.is_empty()).then(|| PathBuf::from(ledger_path)),
        flush_interval: c.ms("ledger.flush_interval_ms", raw.ledger.flush_interval_ms),
    };
    if raw.ledger.url.is_some() {
        c.err(
            "ledger.url",
            "a shared ledger URL is planned but not supported yet",
        );
    }

    let budget = raw.budget.as_ref().map(|b| Budget {
        daily: b.daily_usd.map(|v| c.usd("budget.daily_usd", v)),
        monthly: b.monthly_usd.map(|v| c.usd("budget.monthly_usd", v)),
        session: b.session_usd.map(|v| c.usd("budget.session_usd", v)),
        on_exhausted: on_exhausted(&mut c, b.on_exhausted.as_deref()),
    });
    let key_budgets = keys.iter().any(|k| k.daily.is_some());
    if (budget.is_some() || key_budgets) && ledger.path.is_none() {
        c.err(
            if budget.is_some() { "budget" } else { "keys" },
            "a budget needs the ledger (ledger.path is empty)",
        );
    }

    let baseline_model = raw.cost.baseline_model.as_ref().and_then(|m| {
        let id = model_ids.get(m.as_str()).copied();
        if id.is_none() {
            c.err("cost.baseline_model", format!("model {m:?} is not defined"));
        }
        id
    });

    let breaker = Breaker {
        failure_threshold: c.count(
            "circuit_breaker.failure_threshold",
            raw.circuit_breaker.failure_threshold,
        ),
        open: c.ms("circuit_breaker.open_ms", raw.circuit_breaker.open_ms),
    };

    if !c.problems.is_empty() {
        return Err(ConfigError {
            file: path.display().to_string(),
            problems: c.problems,
        });
    }
    Ok(Config {
        path: path.to_path_buf(),
        server,
        policy,
        providers,
        models,
        tiers,
        tasks,
        keys,
        gateway_keys,
        admin_key,
        budget,
        baseline_model,
        ledger,
        breaker,
        names,
        aliases,
    })
}

fn server(c: &mut Checker, s: &RawServer) -> Server {
    let listen = s.listen.parse().unwrap_or_else(|_| {
        c.err(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", s.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    if s.max_body_bytes == 0 {
        c.err("server.max_body_bytes", "must be positive");
    }
    Server {
        listen,
        worker_threads: s.worker_threads as usize,
        max_body_bytes: s.max_body_bytes as usize,
        request_timeout: c.ms("server.request_timeout_ms", s.request_timeout_ms),
        shutdown_grace: c.ms("server.shutdown_grace_ms", s.shutdown_grace_ms),
        shutdown_delay: c.ms("server.shutdown_delay_ms", s.shutdown_delay_ms),
        api_keys_env: s.api_keys_env.clone(),
        admin_key_env: s.admin_key_env.clone(),
        header_read_timeout: c
            .positive_ms("server.header_read_timeout_ms", s.header_read_timeout_ms),
        keep_alive_timeout: c.positive_ms("server.keep_alive_timeout_ms", s.keep_alive_timeout_ms),
        max_connections: c.positive("server.max_connections", s.max_connections),
        stream_write_timeout: c
            .positive_ms("server.stream_write_timeout_ms", s.stream_write_timeout_ms),
    }
}

fn policy(c: &mut Checker, p: &RawPolicy) -> Policy {
    let policy = Policy {
        max_total_attempts: c.count("policy.max_total_attempts", p.max_total_attempts),
        backoff_base: c.ms("policy.backoff_base_ms", p.backoff_base_ms),
        backoff_max: c.ms("policy.backoff_max_ms", p.backoff_max_ms),
        backoff_jitter: p.backoff_jitter,
        backoff_between_tiers: p.backoff_between_tiers,
        respect_retry_after: p.respect_retry_after,
        retry_on_timeout: p.retry_on_timeout,
        default_timeout: c.ms("policy.default_timeout_ms", p.default_timeout_ms),
        default_first_token_timeout: c.ms(
            "policy.default_first_token_timeout_ms",
            p.default_first_token_timeout_ms,
        ),
        default_max_retries: c.count("policy.default_max_retries", p.default_max_retries),
        limits: Limits {
            max_response_bytes: c.positive("policy.max_response_bytes", p.max_response_bytes),
            max_event_bytes: c.positive("policy.max_event_bytes", p.max_event_bytes),
        },
    };
    if policy.max_total_attempts == 0 {
        c.err("policy.max_total_attempts", "must be at least 1");
    }
    policy
}

fn on_exhausted(c: &mut Checker, v: Option<&str>) -> OnExhausted {
    match v {
        None | Some("free_only") => OnExhausted::FreeOnly,
        Some("reject") => OnExhausted::Reject,
        Some(other) => {
            c.err(
                "budget.on_exhausted",
                format!("unknown value {other:?} (free_only | reject)"),
            );
            OnExhausted::FreeOnly
        }
    }
}

fn provider(c: &mut Checker, name: &str, p: &RawProvider, env: &Env) -> Provider {
    let key = format!("providers.{name}");
    c.name(&key, name);
    let mock_only = [
        ("latency_ms", p.latency_ms.is_some()),
        ("chunk_delay_ms", p.chunk_delay_ms.is_some()),
        ("fail_rate", p.fail_rate.is_some()),
        ("fail_status", p.fail_status.is_some()),
    ];
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "anthropic" => ProviderKind::Anthropic,
        "mock" => {
            let fail_rate = p.fail_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&fail_rate) {
                c.err(format!("{key}.fail_rate"), "must be between 0 and 1");
            }
            let fail_status = p.fail_status.unwrap_or(503);
            if !(400..=599).contains(&fail_status) {
                c.err(
                    format!("{key}.fail_status"),
                    "must be an HTTP error status (400-599)",
                );
            }
            ProviderKind::Mock(MockSettings {
                latency: c.ms(&format!("{key}.latency_ms"), p.latency_ms.unwrap_or(0)),
                chunk_delay: c.ms(
                    &format!("{key}.chunk_delay_ms"),
                    p.chunk_delay_ms.unwrap_or(0),
                ),
                fail_rate,
                fail_status: fail_status.clamp(400, 599) as u16,
            })
        }
        other => {
            c.err(
                format!("{key}.kind"),
                format!("unknown kind {other:?} (openai | anthropic | mock)"),
            );
            ProviderKind::Mock(MockSettings {
                latency: Duration::ZERO,
                chunk_delay: Duration::ZERO,
                fail_rate: 0.0,
                fail_status: 503,
            })
        }
    };
    if p.kind != "mock" {
        for (field, set) in mock_only {
            if set {
                c.err(
                    format!("{key}.{field}"),
                    "only providers of kind \"mock\" take this key",
                );
            }
        }
    }
    let enabled = p.enabled.unwrap_or(true);
    let base_url = match (&kind, &p.base_url) {
        (_, Some(url)) => {
            let url = url.trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.err(
                    format!("{key}.base_url"),
                    format!("{url:?} is not an http(s) URL"),
                );
            }
            url
        }
        (ProviderKind::Anthropic, None) => "https://api.anthropic.com".into(),
        (ProviderKind::Mock(_), None) => String::new(),
        (ProviderKind::OpenAi, None) => {
            c.err(format!("{key}.base_url"), "required for kind \"openai\"");
            String::new()
        }
    };
    let secret = match (&p.api_key_env, &p.api_key_file) {
        (Some(_), Some(_)) => {
            c.err(&key, "set api_key_env or api_key_file, not both");
            None
        }
        (Some(var), None) if enabled => c.secret_from_env(&format!("{key}.api_key_env"), var, env),
        (None, Some(file)) if enabled => match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
            Ok(_) => {
                c.err(format!("{key}.api_key_file"), format!("{file} is empty"));
                None
            }
            Err(e) => {
                c.err(
                    format!("{key}.api_key_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        _ => None,
    };
    let configured_key = p.api_key_env.is_some() || p.api_key_file.is_some();
    let auth = match p.auth.as_deref() {
        None if configured_key => Auth::Bearer,
        None => Auth::None,
        Some("bearer") => Auth::Bearer,
        Some("api-key") => Auth::ApiKey,
        Some("x-api-key") => Auth::XApiKey,
        Some("none") => Auth::None,
        Some(other) => {
            c.err(
                format!("{key}.auth"),
                format!("unknown auth {other:?} (bearer | api-key | x-api-key | none)"),
            );
            Auth::None
        }
    };
    if auth != Auth::None && !configured_key {
        c.err(
            format!("{key}.auth"),
            "needs a key: set api_key_env or api_key_file",
        );
    }
    let proxy = if matches!(kind, ProviderKind::Mock(_)) || base_url.is_empty() {
        None
    } else {
        proxy(c, &key, p.proxy.as_deref(), &base_url, env)
    };
    Provider {
        name: name.to_string(),
        kind,
        base_url,
        key: secret,
        auth,
        query: p
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        headers: headers(c, &key, &p.headers),
        connect_timeout: c.ms(
            &format!("{key}.connect_timeout_ms"),
            p.connect_timeout_ms.unwrap_or(3000),
        ),
        stream_usage: p.stream_usage.unwrap_or(true),
        enabled,
        proxy,
        ca_file: p.ca_file.as_ref().and_then(|f| ca_file(c, &key, f)),
    }
}

/// The provider's proxy: its own `proxy` (`none`: direct), else the
/// environment's for its base URL (`NO_PROXY` honoured).
fn proxy(
    c: &mut Checker,
    key: &str,
    own: Option<&str>,
    base_url: &str,
    env: &Env,
) -> Option<Proxy> {
    let field = format!("{key}.proxy");
    let url = match own.map(str::trim) {
        Some("none") => return None,
        Some(url) => url.to_string(),
        None => {
            let var = |names: [&str; 2]| {
                names
                    .iter()
                    .find_map(|n| env.get(*n).filter(|v| !v.trim().is_empty()).cloned())
                    .unwrap_or_default()
            };
            let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
                .all(var(["ALL_PROXY", "all_proxy"]))
                .http(var(["HTTP_PROXY", "http_proxy"]))
                .https(var(["HTTPS_PROXY", "https_proxy"]))
                .no(var(["NO_PROXY", "no_proxy"]))
                .build();
            let uri: http::Uri = base_url.parse().ok()?;
            // the matcher says whether (NO_PROXY); the variable says where,
            // with its credentials (the matcher's URI has them stripped)
            matcher.intercept(&uri)?;
            let own = if base_url.starts_with("https://") {
                var(["HTTPS_PROXY", "https_proxy"])
            } else {
                var(["HTTP_PROXY", "http_proxy"])
            };
            let url = if own.is_empty() {
                var(["ALL_PROXY", "all_proxy"])
            } else {
                own
            };
            let url = url.trim().to_string();
            if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            }
        }
    };
    let parsed = match url::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            c.err(field, format!("not a proxy URL: {e}"));
            return None;
        }
    };
    if parsed.scheme() != "http" {
        c.err(
            field,
            format!(
                "proxy scheme {:?} is not supported: use http://host:port (TLS upstreams are tunnelled through it)",
                parsed.scheme()
            ),
        );
        return None;
    }
    let Some(host) = parsed.host_str() else {
        c.err(field, "the proxy URL has no host");
        return None;
    };
    let credentials = (!parsed.username().is_empty()).then(|| {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Secret::new(&format!(
            "{}:{}",
            decode(parsed.username()),
            decode(parsed.password().unwrap_or(""))
        ))
    });
    Some(Proxy {
        uri: format!(
            "http://{host}:{}",
            parsed.port_or_known_default().unwrap_or(80)
        ),
        credentials,
    })
}

/// A PEM file with at least one certificate.
fn ca_file(c: &mut Checker, key: &str, file: &str) -> Option<PathBuf> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let field = format!("{key}.ca_file");
    match CertificateDer::pem_file_iter(file) {
        Ok(certs) => match certs.collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(PathBuf::from(file)),
            Ok(_) => {
                c.err(field, format!("{file} holds no PEM certificate"));
                None
            }
            Err(e) => {
                c.err(field, format!("{file}: {e}"));
                None
            }
        },
        Err(e) => {
            c.err(field, format!("cannot read {file}: {e}"));
            None
        }
    }
}

fn headers(
    c: &mut Checker,
    key: &str,
    raw: &BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    raw.iter()
        .filter_map(|(name, value)| {
            let n = HeaderName::try_from(name.as_str());
            let v = HeaderValue::try_from(value.as_str());
            match (n, v) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    c.err(format!("{key}.headers.{name}"), "not a valid HTTP header");
                    None
                }
            }
        })
        .collect()
}
