//! A tier's timing: its timeouts (a number or `"auto"`), its hedging, and
//! `[policy] adaptive_timeout`; and `[telemetry]`, which times every request.

use std::time::Duration;

use super::checker::Checker;
use crate::config::raw::{RawAdaptive, RawMs, RawTelemetry, RawTier};
use crate::config::types::{Adaptive, Env, Hedge, HedgeAfter, Limit, Quantile, Telemetry};

/// A timeout: milliseconds, or `"auto"`; `default` when unset.
pub(super) fn limit(c: &mut Checker, key: &str, raw: Option<&RawMs>, default: Duration) -> Limit {
    match raw {
        None => Limit::Fixed(default),
        Some(RawMs::Ms(v)) => Limit::Fixed(c.ms(key, *v)),
        Some(RawMs::Word(w)) if w == "auto" => Limit::Auto,
        Some(RawMs::Word(w)) => match w.trim().parse::<i64>() {
            Ok(v) => Limit::Fixed(c.ms(key, v)),
            Err(_) => {
                c.err(
                    key,
                    format!("expected milliseconds or \"auto\" (got {w:?})"),
                );
                Limit::Fixed(default)
            }
        },
    }
}

/// `hedge_after_ms` or `hedge_after` (not both), with `max_hedges`.
pub(super) fn hedge(c: &mut Checker, key: &str, t: &RawTier) -> Option<Hedge> {
    let after = match (t.hedge_after_ms, t.hedge_after.as_deref()) {
        (Some(_), Some(_)) => {
            c.err(
                format!("{key}.hedge_after"),
                "set hedge_after_ms or hedge_after, not both",
            );
            return None;
        }
        (Some(ms), None) => HedgeAfter::Fixed(c.positive_ms(&format!("{key}.hedge_after_ms"), ms)),
        (None, Some(q)) => match Quantile::ALL.into_iter().find(|k| k.as_str() == q) {
            Some(q) => HedgeAfter::Percentile(q),
            None => {
                c.err(
                    format!("{key}.hedge_after"),
                    format!("unknown percentile {q:?} (p50 | p90 | p95 | p99)"),
                );
                return None;
            }
        },
        (None, None) => {
            if t.max_hedges.is_some() {
                c.err(
                    format!("{key}.max_hedges"),
                    "needs hedge_after_ms or hedge_after",
                );
            }
            return None;
        }
    };
    let max = t
        .max_hedges
        .map_or(1, |v| c.count(&format!("{key}.max_hedges"), v));
    (max > 0).then_some(Hedge { after, max })
}

pub(super) fn adaptive(c: &mut Checker, a: &RawAdaptive) -> Adaptive {
    let key = "policy.adaptive_timeout";
    if !(a.percentile > 0.0 && a.percentile <= 100.0) {
        c.err(
            format!("{key}.percentile"),
            format!("must be above 0 and at most 100 (got {})", a.percentile),
        );
    }
    if !(a.multiplier > 0.0 && a.multiplier <= 100.0) {
        c.err(
            format!("{key}.multiplier"),
            format!("must be above 0 and at most 100 (got {})", a.multiplier),
        );
    }
    let min = c.positive_ms(&format!("{key}.min_ms"), a.min_ms);
    let max = c.positive_ms(&format!("{key}.max_ms"), a.max_ms);
    if min > max {
        c.err(
            format!("{key}.min_ms"),
            format!("must not exceed max_ms ({} > {})", a.min_ms, a.max_ms),
        );
    }
    Adaptive {
        percentile: a.percentile.clamp(f64::MIN_POSITIVE, 100.0),
        multiplier: if a.multiplier > 0.0 {
            a.multiplier
        } else {
            1.0
        },
        min,
        max: max.max(min),
    }
}

/// `[telemetry]`: the endpoint from the file, else `OTEL_EXPORTER_OTLP_ENDPOINT`;
/// `/v1/traces` appended to it.
pub(super) fn telemetry(c: &mut Checker, t: &RawTelemetry, env: &Env) -> Telemetry {
    let from_env = || {
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let endpoint = t
        .otlp_endpoint
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(from_env);
    let traces_url = endpoint.and_then(|e| {
        let base = e.trim_end_matches('/');
        match url::Url::parse(&format!("{base}/v1/traces")) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                // never echoed: it holds a credential
                c.err(
                    "telemetry.otlp_endpoint",
                    "must not hold a user or password: send credentials as OTEL_EXPORTER_OTLP_HEADERS",
                );
                None
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                c.err(
                    "telemetry.otlp_endpoint",
                    "not an http(s) URL like http://127.0.0.1:4318",
                );
                None
            }
        }
    });
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        c.err("telemetry.sample_ratio", "must be between 0 and 1");
    }
    // `k1=v1,k2=v2`, values percent-encoded (the OpenTelemetry convention)
    let headers = env
        .get("OTEL_EXPORTER_OTLP_HEADERS")
        .map(|v| {
            v.split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
                    let k = k.trim().to_ascii_lowercase();
                    let ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok()
                        && http::HeaderValue::from_str(&v).is_ok();
                    if !ok {
                        c.err(
                            "OTEL_EXPORTER_OTLP_HEADERS",
                            format!("header {k:?} is not valid"),
                        );
                    }
                    ok.then(|| (k, crate::secret::Secret::new(&v)))
                })
                .collect()
        })
        .unwrap_or_default();
    Telemetry {
        headers,
        traces_url,
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
        capture_content: t.capture_content,
        service_name: env
            .get("OTEL_SERVICE_NAME")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "cascade".into()),
    }
}
