//! Budgets (docs/api.md, budget): spend per UTC day and month, per named key per day,
//! per session. Loaded from the ledger at start (so a restart does not reset
//! them), then kept in memory.
//!
//! Every request records its spend here, so nothing in it is a global lock:
//! the day's and the month's totals are atomics (a lock is taken once per
//! period, to roll over), named keys sit in a copy-on-write map read through
//! `arc-swap` (a key is added once, at its first spend), and sessions, whose
//! ids come from clients, in sharded maps.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;

use crate::config::{Config, NamedKey, OnExhausted};
use crate::cost::Usd;
use crate::ledger::{time, Ledger, LedgerError};
use crate::shared::Link;

/// The spend of the current period of one kind (a UTC day, a UTC month).
///
/// At a period's boundary a request that read the clock just before it may
/// add its spend to the new period (counted a moment late, never lost).
#[derive(Debug)]
struct Period {
    /// The period after a given one.
    next: fn(i64) -> i64,
    /// The current period: a day number or a month's first millisecond.
    id: AtomicI64,
    /// The one before it: a clock reading of that period is a late reader.
    previous: AtomicI64,
    /// This replica's spend in the period.
    own: AtomicI64,
    /// The part of `own` added to the shared counter.
    sent: AtomicI64,
    /// The shared counter as last seen (every replica's sent spend; from
    /// the ledger at start). Spent = shared + own - sent.
    shared: AtomicI64,
    roll: Mutex<()>,
}

/// A period's spend this replica has not added to the shared counter yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsent {
    /// The period (a day number, a month's first millisecond).
    pub id: i64,
    /// `own` when it was read: what the shared counter holds once `delta` is in.
    pub own: i64,
    pub delta: i64,
}

impl Period {
    fn new(next: fn(i64) -> i64, id: i64, nanos: i64) -> Self {
        Period {
            next,
            id: AtomicI64::new(id),
            previous: AtomicI64::new(id),
            own: AtomicI64::new(0),
            sent: AtomicI64::new(0),
            shared: AtomicI64::new(nanos),
            roll: Mutex::new(()),
        }
    }

    /// Make `id` the current period. A reading of the period just before is
    /// taken as late, not as a step back; any other change (the clock jumping
    /// either way) starts the period at `id` afresh, as the day it names.
    fn roll(&self, id: i64) {
        if id == self.id.load(Ordering::Acquire) || id == self.previous.load(Ordering::Acquire) {
            return;
        }
        let _once = self.roll.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.id.load(Ordering::Acquire);
        if current != id {
            self.own.store(0, Ordering::Release);
            self.sent.store(0, Ordering::Release);
            self.shared.store(0, Ordering::Release);
            // only the period just before the new one has late readers
            let previous = if (self.next)(current) == id {
                current
            } else {
                id
            };
            self.previous.store(previous, Ordering::Release);
            self.id.store(id, Ordering::Release);
        }
    }

    fn day(day: i64, nanos: i64) -> Self {
        Period::new(|d| d + 1, day, nanos)
    }

    fn month(month_start_ms: i64, nanos: i64) -> Self {
        // a month's first millisecond plus 32 days is in the next month
        Period::new(
            |m| time::month_start_ms(m + 32 * 86_400_000),
            month_start_ms,
            nanos,
        )
    }

    fn add(&self, id: i64, nanos: i64) {
        self.roll(id);
        let _ = self
            .own
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(nanos))
            });
    }

    fn spent(&self, id: i64) -> i64 {
        self.roll(id);
        let shared = self.shared.load(Ordering::Acquire);
        // `sent` before `own`: a concurrent ack can only make this larger
        let sent = self.sent.load(Ordering::Acquire);
        shared.saturating_add(self.own.load(Ordering::Acquire).saturating_sub(sent))
    }

    /// What the worker should add to the shared counter, if anything.
    fn unsent(&self) -> Option<Unsent> {
        let _p = self.roll.lock().unwrap_or_else(|e| e.into_inner());
        let own = self.own.load(Ordering::Acquire);
        let delta = own - self.sent.load(Ordering::Acquire);
        (delta != 0).then(|| Unsent {
            id: self.id.load(Ordering::Acquire),
            own,
            delta,
        })
    }

    /// The shared counter is `total` (None: unknown), and holds `own` of
    /// this replica's spend. Ignored once the period has changed.
    fn ack(&self, id: i64, own: Option<i64>, total: Option<i64>) {
        // a total for a later period (no spend here since it began) starts it
        if id > self.id.load(Ordering::Acquire) {
            self.roll(id);
        }
        let _p = self.roll.lock().unwrap_or_else(|e| e.into_inner());
        if self.id.load(Ordering::Acquire) != id {
            return;
        }
        // raise the total before counting the spend as sent: a reader in
        // between sees the spend twice, never not at all
        if let Some(t) = total {
            self.shared.fetch_max(t, Ordering::AcqRel);
        }
        if let Some(o) = own {
            self.sent.fetch_max(o, Ordering::AcqRel);
        }
    }
}

/// How far back session spend is loaded at start; a session not seen for
/// this long may be dropped from memory.
const SESSION_MEMORY_MS: i64 = 30 * 86_400_000;
const SESSION_SHARDS: usize = 16;
/// A shard this large (and each time it doubles) drops the sessions not seen
/// for SESSION_MEMORY_MS.
const SESSION_SHARD_PRUNE_AT: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct SessionSpend {
    last_ms: i64,
    /// As `Period`: this replica's spend, the part sent, the shared total.
    own: i64,
    sent: i64,
    shared: i64,
}

impl SessionSpend {
    fn spent(&self) -> i64 {
        self.shared.saturating_add(self.own - self.sent)
    }
}

type SessionShard = Mutex<HashMap<String, SessionSpend>>;

#[derive(Debug)]
pub struct Budgets {
    day: Period,
    month: Period,
    /// Per named key, its spend per day.
    keys: ArcSwap<HashMap<String, Arc<Period>>>,
    sessions: [SessionShard; SESSION_SHARDS],
    /// Some session has spend not sent yet.
    sessions_unsent: AtomicBool,
    /// With shared state: nudged at each spend.
    link: OnceLock<Arc<Link>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::empty(time::now_ms())
    }
}

impl Budgets {
    /// Nothing spent yet, as of `now`.
    fn empty(now: i64) -> Self {
        Budgets {
            day: Period::day(time::day(now), 0),
            month: Period::month(time::month_start_ms(now), 0),
            keys: ArcSwap::default(),
            sessions: std::array::from_fn(|_| Mutex::default()),
            sessions_unsent: AtomicBool::new(false),
            link: OnceLock::new(),
        }
    }

    /// Spend so far, from the ledger.
    pub fn load(ledger: &Ledger, now_ms: i64) -> Result<Budgets, LedgerError> {
        let month_start = time::month_start_ms(now_ms);
        let day = time::day(now_ms);
        let month = ledger.spend_since(month_start)?;
        let today = ledger.spend_since(time::day_start_ms(now_ms))?;
        let sessions = ledger.spend_since(now_ms - SESSION_MEMORY_MS)?;
        let b = Budgets {
            day: Period::day(day, today.total),
            month: Period::month(month_start, month.total),
            keys: ArcSwap::from_pointee(
                today
                    .by_key
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(Period::day(day, v))))
                    .collect(),
            ),
            sessions: std::array::from_fn(|_| Mutex::default()),
            sessions_unsent: AtomicBool::new(false),
            link: OnceLock::new(),
        };
        for (id, nanos) in sessions.by_session {
            let last_ms = now_ms;
            b.shard(&id).insert(
                id,
                SessionSpend {
                    last_ms,
                    shared: nanos,
                    ..SessionSpend::default()
                },
            );
        }
        Ok(b)
    }

    fn shard(&self, session: &str) -> MutexGuard<'_, HashMap<String, SessionSpend>> {
        let mut h = DefaultHasher::new();
        session.hash(&mut h);
        let shard = &self.sessions[(h.finish() as usize) % SESSION_SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A named key's daily spend, added at its first spend.
    fn key(&self, name: &str) -> Arc<Period> {
        if let Some(p) = self.keys.load().get(name) {
            return Arc::clone(p);
        }
        self.keys.rcu(|keys| {
            let mut keys = HashMap::clone(keys);
            keys.entry(name.to_string())
                .or_insert_with(|| Arc::new(Period::day(0, 0)));
            keys
        });
        self.keys
            .load()
            .get(name)
            .map_or_else(|| Arc::new(Period::day(0, 0)), Arc::clone)
    }

    /// Add what a request spent (cost and wasted).
    pub fn record(&self, key: Option<&str>, session: Option<&str>, spent: Usd, now_ms: i64) {
        let nanos = spent.nanos_i64();
        if nanos == 0 {
            return;
        }
        let day = time::day(now_ms);
        self.day.add(day, nanos);
        self.month.add(time::month_start_ms(now_ms), nanos);
        if let Some(k) = key {
            self.key(k).add(day, nanos);
        }
        if let Some(id) = session {
            let mut shard = self.shard(id);
            // amortised: a shard is swept each time its size doubles
            let n = shard.len();
            if n >= SESSION_SHARD_PRUNE_AT && n.is_power_of_two() && !shard.contains_key(id) {
                shard.retain(|_, s| s.last_ms >= now_ms - SESSION_MEMORY_MS);
            }
            let s = shard.entry(id.to_string()).or_default();
            s.last_ms = now_ms;
            s.own = s.own.saturating_add(nanos);
            self.sessions_unsent.store(true, Ordering::Release);
        }
        if let Some(link) = self.link.get() {
            link.spent();
        }
    }

    /// Spent today and this month (UTC), every key together; and a named
    /// key's today.
    pub fn spent(&self, key: Option<&str>, now_ms: i64) -> (Usd, Usd, Usd) {
        let usd = |n: i64| Usd::from_femto(i128::from(n.max(0)) * 1_000_000);
        let day = time::day(now_ms);
        let by_key = key
            .and_then(|k| self.keys.load().get(k).map(|p| p.spent(day)))
            .unwrap_or(0);
        (
            usd(self.day.spent(day)),
            usd(self.month.spent(time::month_start_ms(now_ms))),
            usd(by_key),
        )
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
        let day = time::day(now_ms);
        let nanos = |u: Usd| u.nanos_i64();
        let mut left: Option<i64> = None;
        let mut tighten = |v: i64| left = Some(left.map_or(v, |l: i64| l.min(v)));
        if let Some(b) = global {
            if let Some(d) = b.daily {
                tighten(nanos(d).saturating_sub(self.day.spent(day)));
            }
            if let Some(m) = b.monthly {
                tighten(nanos(m).saturating_sub(self.month.spent(time::month_start_ms(now_ms))));
            }
            if let (Some(limit), Some(id)) = (b.session, session) {
                let spent = self.shard(id).get(id).map_or(0, SessionSpend::spent);
                tighten(nanos(limit).saturating_sub(spent));
            }
        }
        if let Some(k) = key {
            if let Some(d) = k.daily {
                let spent = self.keys.load().get(&k.name).map_or(0, |p| p.spent(day));
                tighten(nanos(d).saturating_sub(spent));
            }
        }
        left.map(|l| Usd::from_femto(i128::from(l.max(0)) * 1_000_000))
    }
}

/// A shared counter: the whole gateway's day or month, a named key's day,
/// a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    Day,
    Month,
    Key(String),
    Session(String),
}

/// The worker's side of the budgets (shared state): what to send, what came
/// back.
impl Budgets {
    /// Nudge `link` at every spend from now on.
    pub fn attach(&self, link: &Arc<Link>) {
        let _ = self.link.set(Arc::clone(link));
    }

    /// Every counter with spend not sent yet.
    pub fn unsent(&self) -> Vec<(Counter, Unsent)> {
        let mut out = Vec::new();
        if let Some(u) = self.day.unsent() {
            out.push((Counter::Day, u));
        }
        if let Some(u) = self.month.unsent() {
            out.push((Counter::Month, u));
        }
        for (name, p) in self.keys.load().iter() {
            if let Some(u) = p.unsent() {
                out.push((Counter::Key(name.clone()), u));
            }
        }
        if self.sessions_unsent.swap(false, Ordering::AcqRel) {
            let before = out.len();
            for shard in &self.sessions {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                for (id, s) in shard.iter().filter(|(_, s)| s.own != s.sent) {
                    let u = Unsent {
                        id: 0,
                        own: s.own,
                        delta: s.own - s.sent,
                    };
                    out.push((Counter::Session(id.clone()), u));
                }
            }
            // until they are acknowledged, they are looked for again
            if out.len() > before {
                self.sessions_unsent.store(true, Ordering::Release);
            }
        }
        out
    }

    /// The current period of a counter (a day number, a month's first ms;
    /// 0 for sessions).
    pub fn period(&self, counter: &Counter, now_ms: i64) -> i64 {
        match counter {
            Counter::Day | Counter::Key(_) => time::day(now_ms),
            Counter::Month => time::month_start_ms(now_ms),
            Counter::Session(_) => 0,
        }
    }

    /// The shared counter of `counter` for period `id` is `total` (None:
    /// not known) and holds this replica's spend up to `own` (None: only
    /// what it held before). A failed send passes neither: the spend stays
    /// unsent, counted here, and is sent again.
    pub fn ack(&self, counter: &Counter, id: i64, own: Option<i64>, total: Option<i64>) {
        match counter {
            Counter::Day => self.day.ack(id, own, total),
            Counter::Month => self.month.ack(id, own, total),
            Counter::Key(name) => {
                if own.is_some() || total.is_some_and(|t| t > 0) {
                    self.key(name).ack(id, own, total);
                }
            }
            Counter::Session(sid) => {
                let mut shard = self.shard(sid);
                if own.is_none() && !shard.contains_key(sid) && total.is_none_or(|t| t <= 0) {
                    return;
                }
                let s = shard.entry(sid.clone()).or_default();
                if let Some(t) = total {
                    s.shared = s.shared.max(t);
                }
                if let Some(o) = own {
                    s.sent = s.sent.max(o);
                }
            }
        }
    }
}

/// What happens once a budget is spent.
pub fn on_exhausted(cfg: &Config) -> OnExhausted {
    cfg.budget
        .as_ref()
        .map_or(OnExhausted::FreeOnly, |b| b.on_exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;
    /// 2026-01-31 12:00 UTC: the next day is in another month.
    const NOON: i64 = 1_769_860_800_000;

    fn usd(nanos: i64) -> Usd {
        Usd::from_femto(i128::from(nanos) * 1_000_000)
    }

    #[test]
    fn days_and_months_roll_over_and_a_late_reading_counts_now() {
        let b = Budgets::empty(NOON);
        b.record(None, None, usd(5), NOON);
        b.record(None, None, usd(7), NOON + 1);
        assert_eq!(b.day.spent(time::day(NOON)), 12);
        // the next day (and month): both totals start again
        let next = NOON + DAY_MS;
        b.record(None, None, usd(3), next);
        assert_eq!(b.day.spent(time::day(next)), 3);
        assert_eq!(b.month.spent(time::month_start_ms(next)), 3);
        // a late reading of the day before counts in the current day
        b.record(None, None, usd(1), NOON);
        assert_eq!(b.day.spent(time::day(next)), 4);
        // within a month, a new day leaves the month's total alone
        let later = next + DAY_MS;
        b.record(None, None, usd(2), later);
        assert_eq!(b.day.spent(time::day(later)), 2);
        assert_eq!(b.month.spent(time::month_start_ms(later)), 6);
    }

    #[test]
    fn a_clock_that_jumps_ahead_and_back_does_not_stick() {
        let b = Budgets::empty(NOON);
        b.record(None, None, usd(5), NOON);
        // a wrong clock, ten days ahead, then right again
        let ahead = NOON + 10 * DAY_MS;
        b.record(None, None, usd(7), ahead);
        assert_eq!(b.day.spent(time::day(ahead)), 7);
        b.record(None, None, usd(1), NOON + 1);
        assert_eq!(
            b.day.spent(time::day(NOON)),
            1,
            "the real day starts afresh"
        );
        b.record(None, None, usd(2), NOON + 2);
        assert_eq!(b.day.spent(time::day(NOON)), 3);
    }

    #[test]
    fn keys_and_sessions_count_apart() {
        let b = Budgets::empty(NOON);
        b.record(Some("a"), Some("s1"), usd(5), NOON);
        b.record(Some("a"), Some("s2"), usd(6), NOON);
        b.record(Some("b"), Some("s1"), usd(7), NOON);
        let today = time::day(NOON);
        assert_eq!(b.key("a").spent(today), 11);
        assert_eq!(b.key("b").spent(today), 7);
        assert_eq!(b.key("a").spent(today + 1), 0);
        assert_eq!(b.shard("s1").get("s1").map(SessionSpend::spent), Some(12));
        assert_eq!(b.shard("s2").get("s2").map(SessionSpend::spent), Some(6));
        assert_eq!(b.day.spent(today), 18);
    }

    #[test]
    fn concurrent_spend_adds_up_exactly() {
        let b = Arc::new(Budgets::empty(NOON));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let key = if i % 2 == 0 { "even" } else { "odd" };
                    for _ in 0..10_000 {
                        b.record(Some(key), Some("s"), usd(3), NOON);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let today = time::day(NOON);
        assert_eq!(b.day.spent(today), 8 * 10_000 * 3);
        assert_eq!(b.key("even").spent(today), 4 * 10_000 * 3);
        assert_eq!(b.key("odd").spent(today), 4 * 10_000 * 3);
        assert_eq!(
            b.shard("s").get("s").map(SessionSpend::spent),
            Some(8 * 10_000 * 3)
        );
    }

    #[test]
    fn old_sessions_are_dropped_from_a_full_shard() {
        let b = Budgets::empty(NOON);
        let old = NOON - SESSION_MEMORY_MS - 1;
        let mut i = 0;
        while b.shard("new").len() < SESSION_SHARD_PRUNE_AT {
            b.record(None, Some(&format!("old-{i}")), usd(1), old);
            i += 1;
        }
        b.record(None, Some("new"), usd(1), NOON);
        let shard = b.shard("new");
        assert_eq!(shard.len(), 1, "the old sessions of that shard are gone");
        assert_eq!(shard.get("new").map(SessionSpend::spent), Some(1));
    }

    #[test]
    fn shared_counters_add_own_unsent_spend_and_never_count_it_twice() {
        let b = Budgets::empty(NOON);
        let day = time::day(NOON);
        b.record(Some("k"), Some("s"), usd(5), NOON);
        // another replica's total arrives: 100, then our 5 is sent (105)
        b.ack(&Counter::Day, day, None, Some(100));
        assert_eq!(b.day.spent(day), 105);
        let unsent = b.unsent();
        let (_, u) = unsent.iter().find(|(c, _)| *c == Counter::Day).unwrap();
        assert_eq!((u.own, u.delta), (5, 5));
        b.record(None, None, usd(2), NOON); // spent while the send is on its way
        b.ack(&Counter::Day, day, Some(u.own), Some(105));
        assert_eq!(b.day.spent(day), 107);
        assert_eq!(b.day.unsent().map(|u| u.delta), Some(2));
        // a stale total never lowers it; a total for another day is ignored
        b.ack(&Counter::Day, day, None, Some(50));
        b.ack(&Counter::Day, day - 1, None, Some(10_000));
        assert_eq!(b.day.spent(day), 107);
        // sessions and keys likewise
        let unsent = b.unsent();
        assert!(unsent
            .iter()
            .any(|(c, u)| *c == Counter::Session("s".into()) && u.delta == 5));
        b.ack(&Counter::Session("s".into()), 0, Some(5), Some(40));
        assert_eq!(b.shard("s").get("s").map(SessionSpend::spent), Some(40));
        b.ack(&Counter::Key("k".into()), day, Some(5), Some(9));
        assert_eq!(b.spent(Some("k"), NOON).2, usd(9));
        // a later period's total starts it
        b.ack(&Counter::Day, day + 1, None, Some(3));
        assert_eq!(b.day.spent(day + 1), 3);
    }
}
