//! The last requests, for `GET /v1/cascade/requests` and the page: a ring of
//! `CAPACITY` slots written without a lock (each settled request takes the
//! next slot and swaps its entry in), read newest first. Names are resolved
//! when read, from the config the request ran under; no prompt text is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde_json::{json, Value};

use crate::config::Config;
use crate::cost::Usd;

/// How many requests the ring keeps.
pub const CAPACITY: usize = 50;

/// One settled request, as the page shows it.
pub struct Entry {
    pub config: Arc<Config>,
    pub at_ms: i64,
    pub request_id: String,
    pub endpoint: &'static str,
    pub task: Option<usize>,
    /// The serving target (a tier, then one per model for direct requests).
    pub target: Option<usize>,
    pub model: Option<usize>,
    pub attempts: usize,
    pub hedged: bool,
    pub fallback: bool,
    pub status: u16,
    pub outcome: &'static str,
    pub stream: bool,
    pub cost: Usd,
    pub latency_ms: f64,
}

pub struct Recent {
    slots: Box<[ArcSwapOption<(u64, Entry)>]>,
    next: AtomicU64,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: (0..CAPACITY).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicU64::new(0),
        }
    }
}

impl Recent {
    pub fn push(&self, e: Entry) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(seq % CAPACITY as u64) as usize];
        slot.store(Some(Arc::new((seq, e))));
    }

    /// Newest first.
    pub fn to_json(&self) -> Value {
        let mut entries: Vec<Arc<(u64, Entry)>> =
            self.slots.iter().filter_map(|s| s.load_full()).collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let e = &e.1;
                let cfg = &e.config;
                json!({
                    "time_ms": e.at_ms,
                    "request_id": e.request_id,
                    "endpoint": e.endpoint,
                    "task": e.task.map(|t| cfg.tasks[t].name.as_str()),
                    "tier": e.target.map(|t| cfg.target_label(t)),
                    "model": e.model.map(|m| cfg.models[m].name.as_str()),
                    "attempts": e.attempts,
                    "fallback": e.fallback,
                    "hedged": e.hedged,
                    "status": e.status,
                    "outcome": e.outcome,
                    "stream": e.stream,
                    "cost_usd": e.cost.to_json(),
                    "latency_ms": (e.latency_ms * 10.0).round() / 10.0,
                })
            })
            .collect();
        json!({"object": "list", "data": list})
    }
}
