//! Strategies shared by the property tests.

use std::sync::Arc;

use proptest::prelude::*;

#[allow(dead_code)] // the integration tests use all of it
#[path = "../tests/it/common/pg_cluster.rs"]
pub mod pg_cluster;
use serde_json::{Map, Value};

use crate::chain::Chain;
use crate::config::{Config, Env};
use crate::metrics::Metrics;

/// A config from TOML text, with this environment.
pub fn config(toml: &str, env: &[(&str, &str)]) -> Config {
    let dir = std::env::temp_dir().join(format!("cascade-unit-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let env: Env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = Config::load_with_env(&path, &env);
    let _ = std::fs::remove_dir_all(&dir);
    cfg.unwrap_or_else(|e| panic!("config: {e}"))
}

/// The chain of a config from TOML text, with its own metrics registry.
pub fn chain(toml: &str, env: &[(&str, &str)]) -> Chain {
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
    Chain::build(&Arc::new(config(toml, env)), &metrics, None)
}

/// Any JSON value, a few levels deep; object keys drawn from `keys` half the
/// time (so translators meet the fields they look for), anything otherwise.
pub fn json(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // decimals as clients write them (serde_json's default float parsing
        // is not exact at the far ends of f64)
        (any::<i32>(), 0i32..6).prop_map(|(m, e)| Value::from(f64::from(m) / 10f64.powi(e))),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(keys).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        let key = prop_oneof![
            prop::sample::select(keys).prop_map(String::from),
            "[a-z_]{0,8}"
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object with such values.
pub fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        prop::sample::select(keys).prop_map(String::from),
        "[a-z_]{0,8}"
    ];
    prop::collection::vec((key, json(keys)), 0..8).prop_map(|kv| kv.into_iter().collect())
}

/// `bytes` cut into pieces at arbitrary points.
pub fn chunked(bytes: Vec<u8>, cuts: Vec<prop::sample::Index>) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for a in at {
        out.push(bytes[from..a].to_vec());
        from = a;
    }
    out.push(bytes[from..].to_vec());
    out
}
