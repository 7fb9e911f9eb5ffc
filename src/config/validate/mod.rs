//! Raw -> runtime: every invariant checked here, every problem collected with
//! the key it belongs to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};

use super::raw::*;
use super::types::*;
use crate::secret::Secret;

mod checker;
mod model;
mod provider;
mod timing;

use checker::Checker;

use provider::provider;

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
        .map(|entry| model::model(&mut c, entry, &provider_ids, &providers))
        .collect();
    model::spaces(&mut c, &models);

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
                        format!(
                            "unknown strategy {name:?} (ordered | round_robin | least_latency)"
                        ),
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
            timeout: timing::limit(
                &mut c,
                &format!("{key}.timeout_ms"),
                t.timeout_ms.as_ref(),
                policy.default_timeout,
            ),
            first_token_timeout: timing::limit(
                &mut c,
                &format!("{key}.first_token_timeout_ms"),
                t.first_token_timeout_ms.as_ref(),
                policy.default_first_token_timeout,
            ),
            hedge: timing::hedge(&mut c, &key, t),
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
                Some("continue") => MidStream::Continue,
                Some(other) => {
                    c.err(
                        format!("{key}.mid_stream"),
                        format!("unknown value {other:?} (error | buffer | continue)"),
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

    model::kinds(&mut c, &models, &tiers, &tasks);

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

    let state = shared_state(&mut c, &raw.state, env);
    let ledger = Ledger {
        store: ledger_store(&mut c, &raw.ledger, env),
        flush_interval: c.ms("ledger.flush_interval_ms", raw.ledger.flush_interval_ms),
        retention: match c.count("ledger.retention_days", raw.ledger.retention_days) {
            0 => None,
            days => Some(std::time::Duration::from_secs(u64::from(days) * 86_400)),
        },
    };

    let budget = raw.budget.as_ref().map(|b| Budget {
        daily: b.daily_usd.map(|v| c.usd("budget.daily_usd", v)),
        monthly: b.monthly_usd.map(|v| c.usd("budget.monthly_usd", v)),
        session: b.session_usd.map(|v| c.usd("budget.session_usd", v)),
        on_exhausted: on_exhausted(&mut c, b.on_exhausted.as_deref()),
    });
    let key_budgets = keys.iter().any(|k| k.daily.is_some());
    if (budget.is_some() || key_budgets) && ledger.store.is_none() {
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
        state,
        breaker,
        telemetry: timing::telemetry(&mut c, &raw.telemetry, env),
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
        adaptive_timeout: timing::adaptive(c, &p.adaptive_timeout),
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

/// `[ledger]`: a SQLite file (`path`; empty disables the ledger) or a
/// PostgreSQL database (`url` or `url_env`).
fn ledger_store(c: &mut Checker, raw: &RawLedger, env: &Env) -> Option<LedgerStore> {
    let pool_size = c.positive("ledger.pool_size", raw.pool_size);
    match raw.backend.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            for (key, set) in [
                ("ledger.url", raw.url.is_some()),
                ("ledger.url_env", raw.url_env.is_some()),
            ] {
                if set {
                    c.err(
                        key,
                        "is for backend = \"postgres\" (this ledger is a SQLite file: set path)",
                    );
                }
            }
            let path = raw.path.trim();
            (!path.is_empty()).then(|| LedgerStore::Sqlite(PathBuf::from(path)))
        }
        "postgres" => {
            let url = c.store_url(
                ("ledger", "postgres"),
                raw.url.as_deref(),
                raw.url_env.as_deref(),
                env,
            )?;
            // never echo the URL: it holds the password
            if url.expose().parse::<postgres::Config>().is_err() {
                c.err(
                    "ledger.url",
                    "is not a PostgreSQL connection string (postgres://user:password@host:port/db or key=value pairs)",
                );
                return None;
            }
            Some(LedgerStore::Postgres { url, pool_size })
        }
        other => {
            c.err(
                "ledger.backend",
                format!("must be \"sqlite\" or \"postgres\", got {other:?}"),
            );
            None
        }
    }
}

/// `[state]`: local, or Redis (`url` or `url_env`).
fn shared_state(c: &mut Checker, raw: &RawState, env: &Env) -> SharedState {
    match raw.backend.as_deref().unwrap_or("local") {
        "local" => {
            for (key, set) in [
                ("state.url", raw.url.is_some()),
                ("state.url_env", raw.url_env.is_some()),
            ] {
                if set {
                    c.err(key, "is for backend = \"redis\"");
                }
            }
            SharedState::Local
        }
        "redis" => {
            let url = c.store_url(
                ("state", "redis"),
                raw.url.as_deref(),
                raw.url_env.as_deref(),
                env,
            );
            let prefix = raw.key_prefix.trim();
            if prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_whitespace) {
                c.err("state.key_prefix", "must be 1-64 characters without spaces");
            }
            // never echo the URL: it may hold a password
            let Some(url) = url else {
                return SharedState::Local;
            };
            match redis::parse_redis_url(url.expose()) {
                Some(u) if u.scheme() == "redis" => SharedState::Redis {
                    url,
                    key_prefix: prefix.to_string(),
                },
                Some(_) => {
                    c.err(
                        "state.url",
                        "must be redis://host:port/db (TLS, rediss://, is not supported)",
                    );
                    SharedState::Local
                }
                None => {
                    c.err(
                        "state.url",
                        "is not a Redis URL (redis://[:password@]host:port/db)",
                    );
                    SharedState::Local
                }
            }
        }
        other => {
            c.err(
                "state.backend",
                format!("must be \"local\" or \"redis\", got {other:?}"),
            );
            SharedState::Local
        }
    }
}
