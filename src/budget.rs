//! Budgets (SPEC 4.6): spend per UTC day and month, per named key per day,
//! per session. Loaded from the ledger at start (so a restart does not reset
//! them), then kept in memory. The lock is held for a few instructions.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{Config, NamedKey, OnExhausted};
use crate::cost::Usd;
use crate::ledger::{time, Ledger, LedgerError};

#[derive(Debug, Default)]
struct State {
    day: i64,
    day_nanos: i64,
    month_start_ms: i64,
    month_nanos: i64,
    /// Per named key: (day, spend that day).
    keys: HashMap<String, (i64, i64)>,
    sessions: HashMap<String, i64>,
}

#[derive(Debug, Default)]
pub struct Budgets {
    state: Mutex<State>,
}

/// How far back session spend is loaded at start.
const SESSION_MEMORY_MS: i64 = 30 * 86_400_000;

impl Budgets {
    /// Spend so far, from the ledger.
    pub fn load(ledger: &Ledger, now_ms: i64) -> Result<Budgets, LedgerError> {
        let month_start = time::month_start_ms(now_ms);
        let day = time::day(now_ms);
        let month = ledger.spend_since(month_start)?;
        let today = ledger.spend_since(time::day_start_ms(now_ms))?;
        let sessions = ledger.spend_since(now_ms - SESSION_MEMORY_MS)?;
        Ok(Budgets {
            state: Mutex::new(State {
                day,
                day_nanos: today.total,
                month_start_ms: month_start,
                month_nanos: month.total,
                keys: today
                    .by_key
                    .into_iter()
                    .map(|(k, v)| (k, (day, v)))
                    .collect(),
                sessions: sessions.by_session.into_iter().collect(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn roll(s: &mut State, now_ms: i64) {
        let day = time::day(now_ms);
        if day != s.day {
            s.day = day;
            s.day_nanos = 0;
        }
        let month_start = time::month_start_ms(now_ms);
        if month_start != s.month_start_ms {
            s.month_start_ms = month_start;
            s.month_nanos = 0;
        }
    }

    /// Add what a request spent (cost and wasted).
    pub fn record(&self, key: Option<&str>, session: Option<&str>, spent: Usd, now_ms: i64) {
        let nanos = spent.nanos() as i64;
        if nanos == 0 {
            return;
        }
        let mut s = self.lock();
        Self::roll(&mut s, now_ms);
        s.day_nanos += nanos;
        s.month_nanos += nanos;
        let day = s.day;
        if let Some(k) = key {
            let e = s.keys.entry(k.to_string()).or_insert((day, 0));
            if e.0 != day {
                *e = (day, 0);
            }
            e.1 += nanos;
        }
        if let Some(id) = session {
            *s.sessions.entry(id.to_string()).or_insert(0) += nanos;
        }
    }

    /// What is left of the tightest budget that applies; None when none does.
    pub fn remaining(
        &self,
        cfg: &Config,
        key: Option<&NamedKey>,
        session: Option<&str>,
        now_ms: i64,
    ) -> Option<Usd> {
        let global = cfg.budget.as_ref();
        let limits_apply = global.is_some() || key.is_some_and(|k| k.daily.is_some());
        if !limits_apply {
            return None;
        }
        let mut s = self.lock();
        Self::roll(&mut s, now_ms);
        let nanos = |u: Usd| u.nanos() as i64;
        let mut left: Option<i64> = None;
        let mut tighten = |v: i64| left = Some(left.map_or(v, |l: i64| l.min(v)));
        if let Some(b) = global {
            if let Some(d) = b.daily {
                tighten(nanos(d) - s.day_nanos);
            }
            if let Some(m) = b.monthly {
                tighten(nanos(m) - s.month_nanos);
            }
            if let (Some(limit), Some(id)) = (b.session, session) {
                tighten(nanos(limit) - s.sessions.get(id).copied().unwrap_or(0));
            }
        }
        if let Some(k) = key {
            if let Some(d) = k.daily {
                let spent = s
                    .keys
                    .get(&k.name)
                    .filter(|(day, _)| *day == s.day)
                    .map_or(0, |e| e.1);
                tighten(nanos(d) - spent);
            }
        }
        left.map(|l| Usd::from_femto(i128::from(l.max(0)) * 1_000_000))
    }
}

/// What happens once a budget is spent.
pub fn on_exhausted(cfg: &Config) -> OnExhausted {
    cfg.budget
        .as_ref()
        .map_or(OnExhausted::FreeOnly, |b| b.on_exhausted)
}
