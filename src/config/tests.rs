use std::time::Duration;

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("cascade-cfg-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let env: Env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = Config::load_with_env(&path, &env);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

const BASE: &str = r#"
[providers.or]
kind = "openai"
base_url = "https://openrouter.ai/api/v1"
api_key_env = "OR_KEY"

[models.kimi]
provider = "or"
model = "moonshotai/kimi-k2"
input_usd_per_mtok = 0.6
output_usd_per_mtok = 2.5

[models.llama]
provider = "or"
model = "meta-llama/llama-3.1-8b-instruct:free"

[tiers.paid]
models = ["kimi"]
fallback = ["free"]

[tiers.free]
models = ["llama"]
timeout_ms = 8000
"#;

fn problems(e: ConfigError) -> String {
    e.to_string()
}

#[test]
fn a_valid_file_resolves_chains_and_prices() {
    let cfg = load(BASE, &[("OR_KEY", "sk-or")]).unwrap();
    let paid = cfg.tier_by_name("paid").unwrap();
    let free = cfg.tier_by_name("free").unwrap();
    assert_eq!(cfg.tiers[paid].chain, vec![paid, free]);
    assert!(!cfg.tiers[paid].free);
    assert!(cfg.tiers[free].free);
    assert_eq!(
        cfg.tiers[free].timeout,
        Limit::Fixed(Duration::from_millis(8000))
    );
    assert_eq!(
        cfg.tiers[paid].timeout,
        Limit::Fixed(cfg.policy.default_timeout)
    );
    assert_eq!(
        cfg.lookup("kimi"),
        Some(Name::Model(
            cfg.models.iter().position(|m| m.name == "kimi").unwrap()
        ))
    );
    assert_eq!(cfg.providers[0].auth, Auth::Bearer);
}

#[test]
fn environment_overrides_keys() {
    let cfg = load(
        BASE,
        &[
            ("OR_KEY", "k"),
            ("CASCADE__SERVER__LISTEN", "0.0.0.0:9000"),
            ("CASCADE__POLICY__MAX_TOTAL_ATTEMPTS", "3"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(cfg.policy.max_total_attempts, 3);
}

#[test]
fn errors_name_the_file_the_key_and_the_problem() {
    let e = problems(
        load(
            &format!("{BASE}\n[server]\nlisten_port = 1\n"),
            &[("OR_KEY", "k")],
        )
        .unwrap_err(),
    );
    assert!(
        e.contains("c.toml") && e.contains("server") && e.contains("listen_port"),
        "{e}"
    );

    let e = problems(load(BASE, &[]).unwrap_err());
    assert!(
        e.contains("providers.or.api_key_env") && e.contains("OR_KEY"),
        "{e}"
    );

    let bad = BASE.replace("fallback = [\"free\"]", "fallback = [\"nope\"]");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(
        e.contains("tiers.paid.fallback") && e.contains("\"nope\""),
        "{e}"
    );

    let bad = BASE.replace("output_usd_per_mtok = 2.5", "output_usd_per_mtok = -1");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(
        e.contains("models.kimi.output_usd_per_mtok") && e.contains("negative"),
        "{e}"
    );

    let bad = format!("{BASE}\n[tasks.free]\ntier = \"free\"\n");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("tasks.free") && e.contains("unique"), "{e}");

    let bad = format!("{BASE}\n[budget]\ndaily_usd = 1.0\n[ledger]\npath = \"\"\n");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("budget") && e.contains("ledger"), "{e}");

    let bad = BASE.replace("[tiers.free]", "[tiers.\"fr.ee\"]");
    assert!(load(&bad, &[("OR_KEY", "k")]).is_err());

    let bad = BASE.replace("timeout_ms = 8000", "timeout_ms = -5");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("tiers.free.timeout_ms"), "{e}");

    let bad = BASE.replace("timeout_ms = 8000", "timeout_ms = \"soon\"");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("tiers.free.timeout_ms"), "{e}");
}

#[test]
fn faster_chains_settings() {
    let ok = BASE.replace(
        "timeout_ms = 8000",
        "timeout_ms = \"auto\"\nfirst_token_timeout_ms = \"auto\"\nstrategy = \"least_latency\"\nhedge_after = \"p95\"\nmax_hedges = 2",
    );
    let ok = format!("{ok}\n[policy]\nadaptive_timeout = {{ percentile = 95, min_ms = 200 }}\n");
    let cfg = load(&ok, &[("OR_KEY", "k")]).unwrap();
    let free = &cfg.tiers.iter().find(|t| t.name == "free").unwrap();
    assert_eq!(free.timeout, Limit::Auto);
    assert_eq!(free.first_token_timeout, Limit::Auto);
    assert_eq!(free.strategy, Strategy::LeastLatency);
    assert_eq!(
        free.hedge,
        Some(Hedge {
            after: HedgeAfter::Percentile(Quantile::P95),
            max: 2
        })
    );
    let a = cfg.policy.adaptive_timeout;
    assert_eq!((a.percentile, a.multiplier), (95.0, 2.0));
    assert_eq!(
        (a.min, a.max),
        (Duration::from_millis(200), Duration::from_secs(30))
    );
    // an environment override is a string: a number in it is milliseconds
    let cfg = load(
        BASE,
        &[
            ("OR_KEY", "k"),
            ("CASCADE__TIERS__FREE__TIMEOUT_MS", "1234"),
        ],
    )
    .unwrap();
    let free = &cfg.tiers.iter().find(|t| t.name == "free").unwrap();
    assert_eq!(free.timeout, Limit::Fixed(Duration::from_millis(1234)));

    let both = BASE.replace(
        "timeout_ms = 8000",
        "timeout_ms = 8000\nhedge_after_ms = 100\nhedge_after = \"p50\"",
    );
    let e = problems(load(&both, &[("OR_KEY", "k")]).unwrap_err());
    assert!(
        e.contains("tiers.free.hedge_after") && e.contains("not both"),
        "{e}"
    );
    let bad = BASE.replace(
        "timeout_ms = 8000",
        "timeout_ms = 8000\nhedge_after = \"p42\"",
    );
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("p42"), "{e}");
    let bad = format!("{BASE}\n[policy]\nadaptive_timeout = {{ min_ms = 5000, max_ms = 100 }}\n");
    let e = problems(load(&bad, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("policy.adaptive_timeout.min_ms"), "{e}");
}

#[test]
fn a_disabled_provider_needs_no_key() {
    let cfg = BASE.replace(
        "api_key_env = \"OR_KEY\"",
        "api_key_env = \"OR_KEY\"\nenabled = false",
    );
    let cfg = load(&cfg, &[]).unwrap();
    assert!(cfg.models.iter().all(|m| !m.enabled));
}

#[test]
fn yaml_is_accepted_by_extension() {
    let dir = std::env::temp_dir().join(format!("cascade-yaml-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "providers:\n  m:\n    kind: mock\nmodels:\n  a:\n    provider: m\n    model: a\ntiers:\n  t:\n    models: [a]\n",
    )
    .unwrap();
    let cfg = Config::load_with_env(&path, &Env::new()).unwrap();
    assert_eq!(cfg.tiers[0].name, "t");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ledger_retention() {
    let cfg = load(BASE, &[("OR_KEY", "k")]).unwrap();
    assert_eq!(cfg.ledger.retention, Some(Duration::from_secs(90 * 86_400)));
    let cfg = load(
        BASE,
        &[("OR_KEY", "k"), ("CASCADE__LEDGER__RETENTION_DAYS", "0")],
    )
    .unwrap();
    assert_eq!(cfg.ledger.retention, None);
    let e = problems(
        load(
            BASE,
            &[("OR_KEY", "k"), ("CASCADE__LEDGER__RETENTION_DAYS", "-1")],
        )
        .unwrap_err(),
    );
    assert!(e.contains("ledger.retention_days"), "{e}");
}

#[test]
fn ledger_backends() {
    let cfg = load(BASE, &[("OR_KEY", "k")]).unwrap();
    assert!(matches!(cfg.ledger.store, Some(LedgerStore::Sqlite(_))));
    let pg = format!(
        "{BASE}\n[ledger]\nbackend = \"postgres\"\nurl_env = \"LEDGER_URL\"\npool_size = 8\n"
    );
    let cfg = load(
        &pg,
        &[
            ("OR_KEY", "k"),
            ("LEDGER_URL", "postgres://c:pw-77@db:5433/l"),
        ],
    )
    .unwrap();
    match &cfg.ledger.store {
        Some(LedgerStore::Postgres { url, pool_size }) => {
            assert_eq!(url.expose(), "postgres://c:pw-77@db:5433/l");
            assert_eq!(*pool_size, 8);
        }
        other => panic!("{other:?}"),
    }
    // unset variable, a malformed URL (never echoed), an unknown backend,
    // a URL on a SQLite ledger
    let e = problems(load(&pg, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("LEDGER_URL"), "{e}");
    let e =
        problems(load(&pg, &[("OR_KEY", "k"), ("LEDGER_URL", "mysql://x:pw-77@[")]).unwrap_err());
    assert!(e.contains("ledger.url") && !e.contains("pw-77"), "{e}");
    let e = problems(
        load(
            &format!("{BASE}\n[ledger]\nbackend = \"mongo\"\n"),
            &[("OR_KEY", "k")],
        )
        .unwrap_err(),
    );
    assert!(e.contains("ledger.backend"), "{e}");
    let e = problems(
        load(
            &format!("{BASE}\n[ledger]\nurl = \"postgres://h/l\"\n"),
            &[("OR_KEY", "k")],
        )
        .unwrap_err(),
    );
    assert!(e.contains("ledger.url"), "{e}");
}

#[test]
fn shared_state_backends() {
    let cfg = load(BASE, &[("OR_KEY", "k")]).unwrap();
    assert_eq!(cfg.state, SharedState::Local);
    let redis = format!("{BASE}\n[state]\nbackend = \"redis\"\nurl_env = \"R_URL\"\n");
    let cfg = load(
        &redis,
        &[("OR_KEY", "k"), ("R_URL", "redis://:pw-91@r:6380/2")],
    )
    .unwrap();
    match &cfg.state {
        SharedState::Redis { url, key_prefix } => {
            assert_eq!(url.expose(), "redis://:pw-91@r:6380/2");
            assert_eq!(key_prefix, "cascade");
        }
        other => panic!("{other:?}"),
    }
    // unset variable; TLS and a malformed URL refused without echoing it;
    // an unknown backend; a URL on the local backend; a bad prefix
    let e = problems(load(&redis, &[("OR_KEY", "k")]).unwrap_err());
    assert!(e.contains("R_URL"), "{e}");
    for bad in ["rediss://:pw-91@r:6380/0", "http://:pw-91@r"] {
        let e = problems(load(&redis, &[("OR_KEY", "k"), ("R_URL", bad)]).unwrap_err());
        assert!(e.contains("state.url") && !e.contains("pw-91"), "{e}");
    }
    for (toml, key) in [
        ("[state]\nbackend = \"memcached\"\n", "state.backend"),
        ("[state]\nurl = \"redis://r\"\n", "state.url"),
        (
            "[state]\nbackend = \"redis\"\nurl = \"redis://r\"\nkey_prefix = \" \"\n",
            "state.key_prefix",
        ),
    ] {
        let e = problems(load(&format!("{BASE}\n{toml}"), &[("OR_KEY", "k")]).unwrap_err());
        assert!(e.contains(key), "{e}");
    }
}
