#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests: the gateway on an ephemeral port against a scripted
//! upstream, over real HTTP. One binary, modules per area.

mod common;

mod anthropic;
mod chain;
mod configs;
mod connections;
mod continuation;
mod cost;
mod egress;
mod embeddings;
mod faster;
mod hardening;
mod http;
mod ledger;
mod lifecycle;
mod messages;
mod protection;
mod replicas;
mod responses;
mod routing;
mod shared_state;
mod streaming;
mod workers;

use common::Upstream;

/// The secret the gateway uses upstream; it must never come back out.
pub const UP_KEY: &str = "sk-upstream-SECRET-4242";

/// A config prelude: the scripted upstream as provider `up` (and a provider
/// `dead` on a port nothing listens on), fast backoff, no circuit breaker, no
/// ledger. `policy` adds lines to [policy]; `breaker` replaces the threshold.
pub fn prelude(up: &Upstream, policy: &str) -> String {
    prelude_with(up, policy, 0)
}

pub fn prelude_with(up: &Upstream, policy: &str, failure_threshold: u32) -> String {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let defaults: String = [
        ("backoff_base_ms", "5"),
        ("backoff_max_ms", "20"),
        ("default_max_retries", "1"),
    ]
    .iter()
    .filter(|(k, _)| !policy.contains(k))
    .map(|(k, v)| format!("{k} = {v}\n"))
    .collect();
    format!(
        r#"
[server]
request_timeout_ms = 10000

[policy]
{defaults}{policy}

[circuit_breaker]
failure_threshold = {failure_threshold}
open_ms = 60000

[ledger]
path = ""

[providers.up]
kind = "openai"
base_url = "{base}"
api_key_env = "UP_KEY"
headers = {{ "HTTP-Referer" = "https://cascade.test" }}
query = {{ "api-version" = "2024-10-21" }}

[providers.dead]
kind = "openai"
base_url = "http://{dead}/v1"
auth = "none"
"#,
        base = up.base_url,
    )
}

/// A prelude with its ledger at `db`, flushed every 10 ms, and `extra`
/// lines in [ledger].
pub fn with_ledger(prelude: String, db: &str, extra: &str) -> String {
    prelude.replace(
        "path = \"\"",
        &format!("path = \"{db}\"\nflush_interval_ms = 10\n{extra}"),
    )
}

/// `[models.NAME]` on the scripted upstream, upstream name = NAME.
pub fn model(name: &str, extra: &str) -> String {
    format!("\n[models.{name}]\nprovider = \"up\"\nmodel = \"{name}\"\n{extra}\n")
}

pub fn tier(name: &str, models: &[&str], extra: &str) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "\n[tiers.{name}]\nmodels = [{}]\n{extra}\n",
        models.join(", ")
    )
}

pub const ENV: &[(&str, &str)] = &[("UP_KEY", UP_KEY)];

/// After a prelude: models m1 (with `m1` lines) and m2 on the scripted
/// upstream, tier `first` (m1, `first` lines) falling back to tier `second`
/// (m2, `second` lines).
pub fn first_then_second(prelude: String, m1: &str, first: &str, second: &str) -> String {
    [
        prelude,
        model("m1", m1),
        model("m2", ""),
        tier(
            "first",
            &["m1"],
            &format!("{first}\nfallback = [\"second\"]"),
        ),
        tier("second", &["m2"], second),
    ]
    .concat()
}
