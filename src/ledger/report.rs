//! The cost report (docs/api.md, cost report) from the ledger, as JSON or as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::db::{Db, DbError};
use super::rollup::Sources;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cost::Usd;

/// A report window: the last N hours or days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub ms: i64,
    pub label: &'static str,
}

impl Window {
    /// `24h`, `7d` or `30d` (also any `Nh` / `Nd`).
    pub fn parse(s: &str) -> Result<Window, String> {
        let s = s.trim();
        let label: &'static str = match s {
            "24h" => "24h",
            "7d" => "7d",
            "30d" => "30d",
            _ => "custom",
        };
        let (num, unit) = s.split_at(s.len().saturating_sub(1));
        let n: i64 = num
            .parse()
            .map_err(|_| format!("since must look like 24h, 7d or 30d, got {s:?}"))?;
        let unit_ms = match unit {
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("since must look like 24h, 7d or 30d, got {s:?}")),
        };
        if n <= 0 {
            return Err(format!("since must be positive, got {s:?}"));
        }
        Ok(Window {
            ms: n.saturating_mul(unit_ms),
            label: if label == "custom" { "custom" } else { label },
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct TierLine {
    pub calls: u64,
    pub attempts: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(skip)]
    pub cost_nanos: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct ModelLine {
    pub calls: u64,
    pub failures: u64,
    #[serde(skip)]
    pub cost_nanos: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct KeyLine {
    pub requests: u64,
    #[serde(skip)]
    pub cost_nanos: i64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub since: String,
    pub requests: u64,
    pub by_tier: BTreeMap<String, TierLine>,
    pub by_model: BTreeMap<String, ModelLine>,
    pub by_key: BTreeMap<String, KeyLine>,
    /// Requests and spend by client API (`chat`, `embeddings`, ...).
    pub by_endpoint: BTreeMap<String, KeyLine>,
    pub cost_nanos: i64,
    pub wasted_nanos: i64,
    pub savings_nanos: i64,
    pub free_requests: u64,
    pub fallback_requests: u64,
    /// Spend (cost and wasted) per hour (its start, ms) and serving tier.
    pub by_hour: BTreeMap<i64, BTreeMap<String, i64>>,
}

/// A count read back from the ledger (never negative, whatever a row holds).
fn count(n: i64) -> u64 {
    n.max(0) as u64
}

fn usd(nanos: i64) -> Usd {
    Usd::from_femto(i128::from(nanos) * 1_000_000)
}

impl Report {
    pub fn total_nanos(&self) -> i64 {
        self.cost_nanos.saturating_add(self.wasted_nanos)
    }

    pub fn free_call_percentage(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.free_requests as f64 * 100.0 / self.requests as f64
        }
    }

    pub fn fallback_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.fallback_requests as f64 / self.requests as f64
        }
    }

    pub fn to_json(&self) -> Value {
        let with_cost = |v: Value, nanos: i64| -> Value {
            let mut v = v;
            v["cost_usd"] = usd(nanos).to_json();
            v
        };
        let tiers: serde_json::Map<String, Value> = self
            .by_tier
            .iter()
            .map(|(k, t)| (k.clone(), with_cost(json!(t), t.cost_nanos)))
            .collect();
        let models: serde_json::Map<String, Value> = self
            .by_model
            .iter()
            .map(|(k, m)| (k.clone(), with_cost(json!(m), m.cost_nanos)))
            .collect();
        let lines = |by: &BTreeMap<String, KeyLine>| -> serde_json::Map<String, Value> {
            by.iter()
                .map(|(k, m)| (k.clone(), with_cost(json!(m), m.cost_nanos)))
                .collect()
        };
        let hours: Vec<Value> = self
            .by_hour
            .iter()
            .map(|(h, tiers)| {
                let tiers: serde_json::Map<String, Value> = tiers
                    .iter()
                    .map(|(t, n)| (t.clone(), usd(*n).to_json()))
                    .collect();
                json!({"hour_start_ms": h, "by_tier": tiers})
            })
            .collect();
        let keys = lines(&self.by_key);
        let endpoints = lines(&self.by_endpoint);
        json!({
            "since": self.since,
            "requests": self.requests,
            "by_tier": tiers,
            "by_model": models,
            "by_key": keys,
            "by_endpoint": endpoints,
            "total_cost_usd": usd(self.total_nanos()).to_json(),
            "wasted_cost_usd": usd(self.wasted_nanos).to_json(),
            "estimated_savings_usd": usd(self.savings_nanos).to_json(),
            "free_call_percentage": self.free_call_percentage(),
            "fallback_rate": self.fallback_rate(),
            "by_hour": hours,
        })
    }
}

pub fn build(db: &mut dyn Db, window: Window, now_ms: i64) -> Result<Report, DbError> {
    let d = db.dialect();
    let since = now_ms - window.ms;
    let mut r = Report {
        since: window.label.to_string(),
        ..Report::default()
    };
    // rows for the window's edges, rollups for its folded whole hours
    let src = Sources::new(db, since)?;
    let totals = src.rows(
        db,
        &format!(
            "SELECT {}, {}, {}, {}, {}, {} FROM r",
            d.sum("requests"),
            d.sum("cost"),
            d.sum("wasted"),
            d.sum("savings"),
            d.sum("free_served"),
            d.sum("fallbacks")
        ),
    )?;
    if let Some(row) = totals.first() {
        r.requests = count(row[0].int());
        r.cost_nanos = row[1].int();
        r.wasted_nanos = row[2].int();
        r.savings_nanos = row[3].int();
        r.free_requests = count(row[4].int());
        r.fallback_requests = count(row[5].int());
    }
    // served requests by tier and model
    let served = src.rows(
        db,
        &format!(
            "SELECT tier, model, {}, {}, {}, {} FROM r WHERE tier IS NOT NULL GROUP BY tier, model",
            d.sum("requests"),
            d.sum("prompt"),
            d.sum("completion"),
            d.sum("cost")
        ),
    )?;
    for row in served {
        let (calls, prompt, completion) = (
            count(row[2].int()),
            count(row[3].int()),
            count(row[4].int()),
        );
        let cost = row[5].int();
        let t = r.by_tier.entry(row[0].string()).or_default();
        t.calls = t.calls.saturating_add(calls);
        t.prompt_tokens = t.prompt_tokens.saturating_add(prompt);
        t.completion_tokens = t.completion_tokens.saturating_add(completion);
        t.cost_nanos = t.cost_nanos.saturating_add(cost);
        let m = r.by_model.entry(row[1].string()).or_default();
        m.calls = m.calls.saturating_add(calls);
        m.cost_nanos = m.cost_nanos.saturating_add(cost);
    }
    // attempts and failures by tier and model
    let tried = src.rows(
        db,
        &format!(
            "SELECT tier, model, {}, {} FROM a GROUP BY tier, model",
            d.sum("attempts"),
            d.sum("failures")
        ),
    )?;
    for row in tried {
        let (attempts, failures) = (count(row[2].int()), count(row[3].int()));
        let t = r.by_tier.entry(row[0].string()).or_default();
        t.attempts = t.attempts.saturating_add(attempts);
        t.failures = t.failures.saturating_add(failures);
        let m = r.by_model.entry(row[1].string()).or_default();
        m.failures = m.failures.saturating_add(failures);
    }
    // wasted spend belongs to the model that burned it
    let wasted = src.rows(
        db,
        &format!(
            "SELECT model, {} FROM r WHERE wasted <> 0 AND model IS NOT NULL GROUP BY model",
            d.sum("wasted")
        ),
    )?;
    for row in wasted {
        let m = r.by_model.entry(row[0].string()).or_default();
        m.cost_nanos = m.cost_nanos.saturating_add(row[1].int());
    }
    r.by_key = spend_by(db, &src, "key")?;
    r.by_endpoint = spend_by(db, &src, "endpoint")?;
    let hours = src.rows(
        db,
        &format!(
            "SELECT hour, tier, {} FROM r WHERE tier IS NOT NULL GROUP BY hour, tier",
            d.sum("cost + wasted")
        ),
    )?;
    for row in hours {
        r.by_hour
            .entry(row[0].int())
            .or_default()
            .insert(row[1].string(), row[2].int());
    }
    Ok(r)
}

/// Requests and spend (cost and wasted) grouped by a column of `r`.
fn spend_by(
    db: &mut dyn Db,
    src: &Sources,
    column: &'static str,
) -> Result<BTreeMap<String, KeyLine>, DbError> {
    let d = db.dialect();
    let rows = src.rows(
        db,
        &format!(
            "SELECT {column}, {}, {} FROM r WHERE {column} IS NOT NULL GROUP BY {column}",
            d.sum("requests"),
            d.sum("cost + wasted")
        ),
    )?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row[0].string(),
                KeyLine {
                    requests: count(row[1].int()),
                    cost_nanos: row[2].int(),
                },
            )
        })
        .collect())
}

/// The report as a readable table.
pub fn render_table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Cascade cost report, last {}", r.since);
    let _ = writeln!(
        s,
        "\n{:<20} {:>8} {:>9} {:>9} {:>12} {:>12} {:>14}",
        "tier", "calls", "attempts", "failures", "prompt tok", "compl tok", "cost USD"
    );
    for (name, t) in &r.by_tier {
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>9} {:>9} {:>12} {:>12} {:>14}",
            name,
            t.calls,
            t.attempts,
            t.failures,
            t.prompt_tokens,
            t.completion_tokens,
            usd(t.cost_nanos)
        );
    }
    let _ = writeln!(
        s,
        "\n{:<20} {:>8} {:>9} {:>14}",
        "model", "calls", "failures", "cost USD"
    );
    for (name, m) in &r.by_model {
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>9} {:>14}",
            name,
            m.calls,
            m.failures,
            usd(m.cost_nanos)
        );
    }
    if r.by_endpoint.len() > 1 {
        let _ = writeln!(
            s,
            "\n{:<20} {:>8} {:>14}",
            "endpoint", "requests", "cost USD"
        );
        for (name, e) in &r.by_endpoint {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>14}",
                name,
                e.requests,
                usd(e.cost_nanos)
            );
        }
    }
    if !r.by_key.is_empty() {
        let _ = writeln!(s, "\n{:<20} {:>8} {:>14}", "key", "requests", "cost USD");
        for (name, k) in &r.by_key {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>14}",
                name,
                k.requests,
                usd(k.cost_nanos)
            );
        }
    }
    let _ = writeln!(s, "\nrequests               {}", r.requests);
    let _ = writeln!(s, "total cost             ${}", usd(r.total_nanos()));
    let _ = writeln!(s, "  of which wasted      ${}", usd(r.wasted_nanos));
    let _ = writeln!(s, "estimated savings      ${}", usd(r.savings_nanos));
    let _ = writeln!(s, "free calls             {:.1}%", r.free_call_percentage());
    let _ = writeln!(s, "fallback rate          {:.3}", r.fallback_rate());
    s
}
