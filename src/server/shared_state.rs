//! The shared-state worker (`[state] backend = "redis"`, SPEC 9.4): the one
//! task that talks to Redis. It adds this replica's spend to the shared
//! budget counters, publishes circuit opens, closes, 429 rests and
//! escalation counts, claims half-open probes, and keeps the local copy the
//! request path reads fresh (pub/sub, and a refresh every 250 ms). Redis
//! away: the link goes down, requests run on local state (each replica
//! enforcing the last known totals plus its own spend), one warning is
//! logged, and on return the spend made meanwhile is added.
//!
//! Keys (P = key_prefix): P:spend:day:DAY, P:spend:month:MONTH_MS,
//! P:spend:key:DAY:NAME, P:spend:session:ID (integer nano-USD, expiring
//! after their period); P:cb:MODEL (`open:R`, `probe:R` or `closed`, with
//! a TTL); P:rest:MODEL; P:esc:TIER:count and P:esc:TIER:owed; channel
//! P:events.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::budget::{Budgets, Counter};
use crate::ledger::time;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::secret::Secret;
use crate::shared::{Event, Link};

const REFRESH: Duration = Duration::from_millis(250);
const RETRY: Duration = Duration::from_secs(1);
/// A probe is claimed this long before the circuit's open time ends.
const CLAIM_LEAD: Duration = Duration::from_millis(300);
/// How long a `closed` mark stays (replicas that missed the message see it).
const CLOSED_MS: u64 = 10_000;
const SESSION_TTL_MS: u64 = 30 * 86_400_000;

/// Escalation: count a failure; at `after`, reset and owe one. Returns
/// {count, owed}. Atomic, so exactly one failure in each `after` fires.
const ESC_FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], 0)
  return {0, redis.call('INCR', KEYS[2])}
end
return {n, tonumber(redis.call('GET', KEYS[2]) or '0')}";
/// Escalation: take one owed (if any is left). Returns {count, owed}.
const ESC_TAKEN: &str = r"
local o = tonumber(redis.call('GET', KEYS[2]) or '0')
if o > 0 then o = redis.call('DECR', KEYS[2]) end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), o}";
/// Escalation: a success starts the count again. Returns {count, owed}.
const ESC_SUCCESS: &str = r"
redis.call('SET', KEYS[1], 0)
return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}";

struct Keys(String);

impl Keys {
    fn counter(&self, c: &Counter, id: i64) -> String {
        let p = &self.0;
        match c {
            Counter::Day => format!("{p}:spend:day:{id}"),
            Counter::Month => format!("{p}:spend:month:{id}"),
            Counter::Key(name) => format!("{p}:spend:key:{id}:{name}"),
            Counter::Session(sid) => format!("{p}:spend:session:{sid}"),
        }
    }

    fn circuit(&self, model: &str) -> String {
        format!("{}:cb:{model}", self.0)
    }

    fn rest(&self, model: &str) -> String {
        format!("{}:rest:{model}", self.0)
    }

    fn esc(&self, tier: &str) -> [String; 2] {
        [
            format!("{}:esc:{tier}:count", self.0),
            format!("{}:esc:{tier}:owed", self.0),
        ]
    }

    fn channel(&self) -> String {
        format!("{}:events", self.0)
    }
}

/// When a counter's key may go (seconds since the epoch): a day after its
/// period ended. Sessions: None (a sliding 30 days).
fn expires_at(c: &Counter, id: i64) -> Option<i64> {
    const DAY_S: i64 = 86_400;
    match c {
        Counter::Day | Counter::Key(_) => Some((id + 2) * DAY_S),
        Counter::Month => Some(time::month_start_ms(id + 32 * 86_400_000) / 1000 + DAY_S),
        Counter::Session(_) => None,
    }
}

fn counter_wire(c: &Counter) -> (&'static str, &str) {
    match c {
        Counter::Day => ("d", ""),
        Counter::Month => ("m", ""),
        Counter::Key(n) => ("k", n),
        Counter::Session(s) => ("s", s),
    }
}

fn counter_from_wire(kind: &str, name: &str) -> Option<Counter> {
    Some(match kind {
        "d" => Counter::Day,
        "m" => Counter::Month,
        "k" => Counter::Key(name.to_string()),
        "s" => Counter::Session(name.to_string()),
        _ => return None,
    })
}

/// What the worker reads and updates (the server's state).
pub trait Host: Clone + Send + Sync + 'static {
    fn runtime(&self) -> Arc<Runtime>;
    fn budgets(&self) -> &Budgets;
    fn ledger(&self) -> Option<&Arc<Ledger>>;
    fn metrics(&self) -> &Arc<Metrics>;
}

/// Start the worker (and its subscriber).
pub fn spawn<H: Host>(
    state: H,
    link: Arc<Link>,
    events: mpsc::Receiver<Event>,
    url: &Secret,
    prefix: &str,
) {
    let client = match redis::Client::open(url.expose()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("shared state: {e}; running on local state");
            return;
        }
    };
    let (wire_tx, wire_rx) = mpsc::channel(1024);
    tokio::spawn(subscribe(
        client.clone(),
        Keys(prefix.into()).channel(),
        wire_tx,
    ));
    let w = Worker {
        state,
        link,
        keys: Keys(prefix.into()),
        scripts: [ESC_FAILURE, ESC_TAKEN, ESC_SUCCESS].map(redis::Script::new),
        away_since: None,
    };
    tokio::spawn(w.run(client, events, wire_rx));
}

/// Forward what other replicas publish, reconnecting as needed.
async fn subscribe(client: redis::Client, channel: String, to: mpsc::Sender<Value>) {
    use futures_util::StreamExt;
    loop {
        if let Ok(mut ps) = client.get_async_pubsub().await {
            if ps.subscribe(&channel).await.is_ok() {
                let mut msgs = ps.into_on_message();
                while let Some(m) = msgs.next().await {
                    if let Ok(v) = serde_json::from_slice::<Value>(m.get_payload_bytes()) {
                        if to.send(v).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if to.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

struct Worker<H> {
    state: H,
    link: Arc<Link>,
    keys: Keys,
    scripts: [redis::Script; 3],
    away_since: Option<std::time::Instant>,
}

impl<H: Host> Worker<H> {
    async fn run(
        mut self,
        client: redis::Client,
        mut events: mpsc::Receiver<Event>,
        mut wire: mpsc::Receiver<Value>,
    ) {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        self.away_since = Some(std::time::Instant::now());
        let mut con = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    self.went_down(&e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_try = tokio::time::Instant::now();
        loop {
            if !self.link.up() && last_try.elapsed() >= RETRY {
                last_try = tokio::time::Instant::now();
                if let Err(e) = self.come_back(&mut con).await {
                    self.went_down(&e);
                }
            }
            let result = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.event(&mut con, ev).await,
                    None => return,
                },
                () = self.link.nudged() => self.push_spend(&mut con).await,
                msg = wire.recv() => {
                    if let Some(m) = msg {
                        self.apply(&m);
                    }
                    Ok(())
                }
                _ = tick.tick() => self.refresh(&mut con).await,
            };
            if let Err(e) = result {
                self.went_down(&e);
            }
        }
    }

    /// Redis stopped answering: local state from now on; one warning.
    fn went_down(&mut self, e: &redis::RedisError) {
        self.link.set_up(false);
        self.state.metrics().shared_state_up.set(0);
        if self.away_since.is_none() {
            tracing::warn!(
                "shared state unreachable: requests go on with local state, spend is kept and added on return: {}",
                redact(e)
            );
            self.away_since = Some(std::time::Instant::now());
        } else {
            tracing::debug!("shared state still unreachable: {}", redact(e));
        }
    }

    /// Redis answers (again): counters missing rebuilt from the ledger, the
    /// spend made meanwhile added, the local copy refreshed.
    async fn come_back(&mut self, con: &mut ConnectionManager) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<()>(con).await?;
        self.rebuild(con).await?;
        self.link.set_up(true);
        self.state.metrics().shared_state_up.set(1);
        if let Some(since) = self.away_since.take() {
            tracing::info!(
                away_ms = since.elapsed().as_millis() as u64,
                "shared state reachable"
            );
        }
        self.push_spend(con).await?;
        self.refresh(con).await
    }

    /// Counters missing in Redis (a new deployment, Redis emptied) start
    /// from the ledger, never over what another replica wrote (SET NX). A
    /// counter made here already holds this replica's spend (its rows).
    async fn rebuild(&mut self, con: &mut ConnectionManager) -> redis::RedisResult<()> {
        let Some(ledger) = self.state.ledger().cloned() else {
            return Ok(());
        };
        let now = time::now_ms();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::ledger::LedgerError>((
                ledger.spend_since(time::day_start_ms(now))?,
                ledger.spend_since(time::month_start_ms(now))?,
            ))
        })
        .await;
        let (today, month) = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!("shared state: cannot read the ledger to rebuild counters: {e}");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let budgets = self.state.budgets();
        let unsent = budgets.unsent();
        let mut wanted = vec![(Counter::Day, today.total), (Counter::Month, month.total)];
        wanted.extend(today.by_key.into_iter().map(|(k, v)| (Counter::Key(k), v)));
        for (counter, total) in wanted {
            let id = budgets.period(&counter, now);
            let key = self.keys.counter(&counter, id);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(total).arg("NX");
            if let Some(at) = expires_at(&counter, id) {
                cmd.arg("EXAT").arg(at);
            }
            let made: Option<String> = cmd.query_async(con).await?;
            if made.is_some() {
                let own = unsent
                    .iter()
                    .find(|(c, u)| *c == counter && u.id == id)
                    .map(|(_, u)| u.own);
                budgets.ack(&counter, id, own, Some(total));
            }
        }
        Ok(())
    }

    /// Add unsent spend to the shared counters, take the totals back,
    /// tell the other replicas.
    async fn push_spend(&mut self, con: &mut ConnectionManager) -> redis::RedisResult<()> {
        if !self.link.up() {
            return Ok(());
        }
        let budgets = self.state.budgets();
        let unsent = budgets.unsent();
        if unsent.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (counter, u) in &unsent {
            let key = self.keys.counter(counter, u.id);
            pipe.cmd("INCRBY").arg(&key).arg(u.delta);
            match expires_at(counter, u.id) {
                Some(at) => pipe.cmd("EXPIREAT").arg(&key).arg(at).ignore(),
                None => pipe.cmd("PEXPIRE").arg(&key).arg(SESSION_TTL_MS).ignore(),
            };
        }
        let totals: Vec<i64> = pipe.query_async(con).await?;
        let mut wire = Vec::with_capacity(unsent.len());
        for ((counter, u), total) in unsent.iter().zip(totals) {
            budgets.ack(counter, u.id, Some(u.own), Some(total));
            let (kind, name) = counter_wire(counter);
            wire.push(json!([kind, name, u.id, total]));
        }
        self.publish(con, json!({"spend": wire})).await
    }

    async fn publish(&self, con: &mut ConnectionManager, mut msg: Value) -> redis::RedisResult<()> {
        msg["r"] = json!(self.link.replica);
        redis::cmd("PUBLISH")
            .arg(self.keys.channel())
            .arg(msg.to_string())
            .query_async::<()>(con)
            .await
    }

    async fn event(&mut self, con: &mut ConnectionManager, ev: Event) -> redis::RedisResult<()> {
        if !self.link.up() {
            return Ok(()); // the local state has it
        }
        let me = &self.link.replica;
        match ev {
            Event::Open { model, ms } => {
                redis::cmd("SET")
                    .arg(self.keys.circuit(&model))
                    .arg(format!("open:{me}"))
                    .arg("PX")
                    .arg(ms.max(1))
                    .query_async::<()>(con)
                    .await?;
                self.publish(con, json!({"open": [&*model, ms]})).await
            }
            Event::Close { model } => {
                redis::cmd("SET")
                    .arg(self.keys.circuit(&model))
                    .arg("closed")
                    .arg("PX")
                    .arg(CLOSED_MS)
                    .query_async::<()>(con)
                    .await?;
                self.publish(con, json!({"close": &*model})).await
            }
            Event::Rest { model, ms } => {
                redis::cmd("SET")
                    .arg(self.keys.rest(&model))
                    .arg(me)
                    .arg("PX")
                    .arg(ms.max(1))
                    .query_async::<()>(con)
                    .await?;
                self.publish(con, json!({"rest": [&*model, ms]})).await
            }
            Event::EscFailure { tier, after } => self.escalation(con, &tier, 0, Some(after)).await,
            Event::EscTaken { tier } => self.escalation(con, &tier, 1, None).await,
            Event::EscSuccess { tier } => self.escalation(con, &tier, 2, None).await,
        }
    }

    /// Run an escalation script; mirror and publish the counts.
    async fn escalation(
        &mut self,
        con: &mut ConnectionManager,
        tier: &str,
        script: usize,
        after: Option<u32>,
    ) -> redis::RedisResult<()> {
        let [count, owed] = self.keys.esc(tier);
        let mut inv = self.scripts[script].key(count);
        inv.key(owed);
        if let Some(a) = after {
            inv.arg(a.max(1));
        }
        let (count, owed): (u32, u32) = inv.invoke_async(con).await?;
        self.mirror(tier, count, owed);
        self.publish(con, json!({"esc": [tier, count, owed]})).await
    }

    fn mirror(&self, tier: &str, count: u32, owed: u32) {
        let rt = self.state.runtime();
        if let Some(i) = rt.config.tiers.iter().position(|t| t.name == tier) {
            rt.chain.escalation[i].mirror(count, owed);
        }
    }

    /// What another replica published.
    fn apply(&self, msg: &Value) {
        if msg["r"].as_str() == Some(self.link.replica.as_str()) {
            return;
        }
        let rt = self.state.runtime();
        let health = |name: &Value| {
            let name = name.as_str()?;
            let i = rt.config.models.iter().position(|m| m.name == name)?;
            Some(&rt.chain.health[i])
        };
        let ms = |v: &Value| Duration::from_millis(v.as_u64().unwrap_or(0));
        if let Some(h) = health(&msg["open"][0]) {
            h.apply_open(ms(&msg["open"][1]));
        }
        if let Some(h) = health(&msg["close"]) {
            h.apply_close();
        }
        if let Some(h) = health(&msg["rest"][0]) {
            h.apply_rest(ms(&msg["rest"][1]));
        }
        if let (Some(tier), Some(count), Some(owed)) = (
            msg["esc"][0].as_str(),
            msg["esc"][1].as_u64(),
            msg["esc"][2].as_u64(),
        ) {
            self.mirror(tier, count as u32, owed as u32);
        }
        for s in msg["spend"].as_array().into_iter().flatten() {
            let counter =
                counter_from_wire(s[0].as_str().unwrap_or(""), s[1].as_str().unwrap_or(""));
            if let (Some(c), Some(id), Some(total)) = (counter, s[2].as_i64(), s[3].as_i64()) {
                self.state.budgets().ack(&c, id, None, Some(total));
            }
        }
    }

    /// Read back what every replica did (a message may have been missed),
    /// share the current chain's models and tiers, claim due probes.
    async fn refresh(&mut self, con: &mut ConnectionManager) -> redis::RedisResult<()> {
        let rt = self.state.runtime();
        let cfg = &rt.config;
        for (i, m) in cfg.models.iter().enumerate() {
            rt.chain.health[i].attach(&self.link, &m.name);
        }
        let escalating: Vec<usize> = (0..cfg.tiers.len())
            .filter(|&t| cfg.tiers[t].escalate.is_some())
            .collect();
        for &t in &escalating {
            rt.chain.escalation[t].attach(&self.link, &cfg.tiers[t].name);
        }
        if !self.link.up() {
            return Ok(());
        }
        let now = time::now_ms();
        let budgets = self.state.budgets();
        let mut counters = vec![Counter::Day, Counter::Month];
        counters.extend(
            cfg.keys
                .iter()
                .filter(|k| k.daily.is_some())
                .map(|k| Counter::Key(k.name.clone())),
        );
        let mut pipe = redis::pipe();
        for c in &counters {
            pipe.cmd("GET")
                .arg(self.keys.counter(c, budgets.period(c, now)));
        }
        for m in &cfg.models {
            pipe.cmd("GET").arg(self.keys.circuit(&m.name));
            pipe.cmd("PTTL").arg(self.keys.circuit(&m.name));
            pipe.cmd("PTTL").arg(self.keys.rest(&m.name));
        }
        for &t in &escalating {
            for k in self.keys.esc(&cfg.tiers[t].name) {
                pipe.cmd("GET").arg(k);
            }
        }
        let values: Vec<redis::Value> = pipe.query_async(con).await?;
        let int = |v: &redis::Value| redis::from_redis_value_ref::<Option<i64>>(v).ok().flatten();
        let text = |v: &redis::Value| {
            redis::from_redis_value_ref::<Option<String>>(v)
                .ok()
                .flatten()
        };
        let mut v = values.iter();
        for c in &counters {
            if let Some(total) = v.next().and_then(int) {
                budgets.ack(c, budgets.period(c, now), None, Some(total));
            }
        }
        let mut claims = Vec::new();
        let ms = |t: i64| Duration::from_millis(t.max(0) as u64);
        for i in 0..cfg.models.len() {
            let (state, ttl, rest) = (
                v.next().and_then(text),
                v.next().and_then(int).unwrap_or(-2),
                v.next().and_then(int).unwrap_or(-2),
            );
            let h = &rt.chain.health[i];
            if rest > 0 {
                h.apply_rest(ms(rest));
            }
            let mine = format!("probe:{}", self.link.replica);
            match state.as_deref() {
                Some("closed") => h.apply_close(),
                Some(s) if s == mine => {}
                Some(s) if ttl > 0 && (s.starts_with("open:") || s.starts_with("probe:")) => {
                    h.apply_open(ms(ttl));
                }
                _ if h.wants_probe(tokio::time::Instant::now(), CLAIM_LEAD) => {
                    claims.push(i);
                }
                _ => {}
            }
        }
        for &t in &escalating {
            let count = v.next().and_then(int).unwrap_or(0);
            let owed = v.next().and_then(int).unwrap_or(0);
            rt.chain.escalation[t].mirror(count.max(0) as u32, owed.max(0) as u32);
        }
        // a half-open probe: whoever sets the mark first probes for all
        let hold = cfg.breaker.open + cfg.server.request_timeout;
        for i in claims {
            let won: Option<String> = redis::cmd("SET")
                .arg(self.keys.circuit(&cfg.models[i].name))
                .arg(format!("probe:{}", self.link.replica))
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis().max(1) as u64)
                .query_async(con)
                .await?;
            if won.is_some() {
                rt.chain.health[i].claim_probe();
            }
        }
        Ok(())
    }
}

/// A Redis error without anything that could hold a password.
fn redact(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.detail().unwrap_or("no detail"))
}
