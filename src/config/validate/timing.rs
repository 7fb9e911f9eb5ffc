//! A tier's timing: its timeouts (a number or `"auto"`), its hedging, and
//! `[policy] adaptive_timeout`.

use std::time::Duration;

use super::checker::Checker;
use crate::config::raw::{RawAdaptive, RawMs, RawTier};
use crate::config::types::{Adaptive, Hedge, HedgeAfter, Limit, Quantile};

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
