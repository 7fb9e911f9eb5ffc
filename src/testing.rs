//! Strategies shared by the property tests.

use proptest::prelude::*;
use serde_json::{Map, Value};

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
