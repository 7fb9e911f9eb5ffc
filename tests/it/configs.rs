//! The shipped configs pass `cascade check`; a broken one fails it.

use std::process::Command;

const SHIPPED: &[&str] = &[
    "config/demo.toml",
    "config/cascade.toml",
    "config/examples/bughive.toml",
    "config/examples/strategic-planner.toml",
    "config/examples/strategic-planner-demo.toml",
    "config/examples/replicas.toml",
];

fn check(path: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["check", "--config", path])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("OPENROUTER_API_KEY", "dummy-or")
        .env("ANTHROPIC_API_KEY", "dummy-ant")
        .env("CASCADE_REDIS_URL", "redis://:dummy-redis@127.0.0.1:6379/0")
        .env(
            "CASCADE_LEDGER_URL",
            "postgres://c:dummy-pg@127.0.0.1:5432/cascade",
        )
        .output()
        .unwrap()
}

#[test]
fn every_shipped_config_passes_check() {
    for path in SHIPPED {
        let out = check(path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("tiers:") && stdout.contains("chain="),
            "{path}: {stdout}"
        );
        assert!(
            !stdout.contains("dummy-or")
                && !stdout.contains("dummy-ant")
                && !stdout.contains("dummy-redis")
                && !stdout.contains("dummy-pg"),
            "check printed a key"
        );
    }
}

#[test]
fn the_source_systems_are_expressed_exactly() {
    let out = String::from_utf8(check("config/examples/bughive.toml").stdout).unwrap();
    for line in [
        "orchestrator     paid chain=orchestrator -> reasoning -> general",
        "reasoning        paid chain=reasoning -> general -> fast",
        "coding           paid chain=coding -> reasoning -> general",
        "general          paid chain=general -> fast",
        "fast             paid chain=fast ",
    ] {
        assert!(out.contains(line), "bughive: {line}\n{out}");
    }
    assert!(
        out.contains("backoff=500..500ms jitter=false between_tiers=true"),
        "{out}"
    );
    assert!(!out.contains("openai/"), "no OpenAI models");

    let out = String::from_utf8(check("config/examples/strategic-planner.toml").stdout).unwrap();
    for line in [
        "kimi             paid chain=kimi -> llama -> ollama",
        "llama            free chain=llama -> ollama",
        "timeout=8000ms",
        "escalate_after=3 to=kimi",
        "plan             chain=llama -> ollama",
        "replan_minor     chain=llama -> ollama minor",
        "max_total_attempts=6",
    ] {
        assert!(out.contains(line), "planner: {line}\n{out}");
    }
}

#[test]
fn a_broken_config_fails_check_naming_file_and_key() {
    let dir = crate::common::gateway::temp_dir();
    let path = dir.0.join("broken.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
    let out = check(path.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("bogus"),
        "{err}"
    );
    // a referenced key variable that is unset names the variable
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["check", "--config", "config/cascade.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("OPENROUTER_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENROUTER_API_KEY"));
}

#[test]
fn aliases_are_checked() {
    let dir = crate::common::gateway::temp_dir();
    let base = "[ledger]\npath = \"\"\n[providers.p]\nkind = \"mock\"\n[models.m]\nprovider = \"p\"\nmodel = \"m\"\n[tiers.t]\nmodels = [\"m\"]\n";
    let cases = [
        ("[aliases]\n\"m\" = \"t\"\n", "already a model name"),
        (
            "[aliases]\n\"gpt-4o\" = \"nope\"\n",
            "not a task, tier or model",
        ),
        (
            "[aliases]\n\"a.b\" = \"t\"\n\"c\" = \"a.b\"\n",
            "another alias",
        ),
    ];
    for (i, (extra, word)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("a{i}.toml"));
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = check(path.to_str().unwrap());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(
            err.contains("aliases") && err.contains(word),
            "case {i}: {err}"
        );
    }
    // dotted and mixed-case keys are kept as written
    let path = dir.0.join("ok.toml");
    std::fs::write(
        &path,
        format!("{base}[aliases]\n\"Claude-Sonnet-4.5\" = \"t\"\n"),
    )
    .unwrap();
    let out = check(path.to_str().unwrap());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mid_stream_values_are_checked() {
    let dir = crate::common::gateway::temp_dir();
    let base = "[ledger]\npath = \"\"\n[providers.p]\nkind = \"mock\"\n[models.m]\nprovider = \"p\"\nmodel = \"m\"\n";
    for (i, (tier, ok)) in [
        ("mid_stream = \"buffer\"\nbuffer_max_bytes = 4096", true),
        ("mid_stream = \"error\"", true),
        ("mid_stream = \"continue\"", true),
        ("mid_stream = \"later\"", false),
        ("mid_stream = \"buffer\"\nbuffer_max_bytes = 0", false),
    ]
    .iter()
    .enumerate()
    {
        let path = dir.0.join(format!("m{i}.toml"));
        std::fs::write(
            &path,
            format!("{base}[tiers.t]\nmodels = [\"m\"]\n{tier}\n"),
        )
        .unwrap();
        let out = check(path.to_str().unwrap());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), *ok, "case {i}: {err}");
        if !ok {
            assert!(err.contains("tiers.t."), "case {i}: {err}");
        } else {
            // the model has no context_window: check says what that means
            let described = String::from_utf8_lossy(&out.stdout);
            assert!(
                described.contains("warning: no context_window for m"),
                "{described}"
            );
            // a continue tier with no model that takes a prefill
            assert_eq!(
                described.contains("no model of its chain has prefill = true"),
                tier.contains("continue"),
                "{described}"
            );
        }
    }
}

#[test]
fn check_explains_faster_chains() {
    let dir = crate::common::gateway::temp_dir();
    let path = dir.0.join("fast.toml");
    std::fs::write(
        &path,
        "[ledger]\npath = \"\"\n[policy]\nadaptive_timeout = { min_ms = 250 }\n[providers.p]\nkind = \"mock\"\nslow_rate = 0.05\nslow_ms = 3000\n[models.m]\nprovider = \"p\"\nmodel = \"m\"\ncontext_window = 8000\n[tiers.t]\nmodels = [\"m\"]\nstrategy = \"least_latency\"\nhedge_after = \"p95\"\ntimeout_ms = \"auto\"\n",
    )
    .unwrap();
    let out = check(path.to_str().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("strategy=least_latency timeout=auto"),
        "{text}"
    );
    assert!(text.contains("hedge_after=p95 max_hedges=1"), "{text}");
    assert!(text.contains("faster chains:"), "{text}");
    assert!(text.contains("t: least_latency:"), "{text}");
    assert!(text.contains("the model's own p95 latency"), "{text}");
    assert!(
        text.contains("t: timeout_ms = auto: p99 of the model's recent successful attempts"),
        "{text}"
    );
    assert!(text.contains("clamped to 250..30000ms"), "{text}");
}

/// Shared state with a per-replica (SQLite) ledger: `check` warns; with the
/// PostgreSQL ledger of the replicas example it does not.
#[test]
fn check_warns_when_state_is_shared_but_the_ledger_is_not() {
    let out = check("config/examples/replicas.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("state: redis"), "{stdout}");
    assert!(
        stdout.contains("postgres://127.0.0.1:5432/cascade"),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");

    let dir = crate::common::gateway::temp_dir();
    let path = dir.0.join("sqlite-ledger.toml");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/replicas.toml"),
    )
    .unwrap()
    .replace(
        "backend = \"postgres\"\nurl_env = \"CASCADE_LEDGER_URL\"",
        "path = \"data/replica.db\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = check(path.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "warning: state is shared through Redis but the ledger is this replica's own"
        ),
        "{stdout}"
    );
}
