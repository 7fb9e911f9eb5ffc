//! State shared between replicas (`[state] backend = "redis"`): the handle
//! the request path holds. It never waits on Redis: circuit and escalation
//! changes go to the background worker (server/shared_state.rs) through a
//! bounded channel, spend is read from the budgets' atomics by the worker
//! when nudged, and what other replicas did comes back into the local copy
//! (circuits, rests, budget totals, escalation counts) from the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

/// What the request path tells the worker.
#[derive(Debug)]
pub enum Event {
    /// This replica opened a model's circuit for `ms`.
    Open { model: Arc<str>, ms: u64 },
    /// This replica's probe (or any call) found the model up again.
    Close { model: Arc<str> },
    /// A 429: the model rests for `ms`.
    Rest { model: Arc<str>, ms: u64 },
    /// A failed attempt on a tier that escalates after `after` of them.
    EscFailure { tier: Arc<str>, after: u32 },
    /// A served attempt on such a tier: the count starts again.
    EscSuccess { tier: Arc<str> },
    /// This replica took an owed escalation.
    EscTaken { tier: Arc<str> },
}

/// Events waiting for the worker; beyond this they are dropped (the local
/// state still has them).
const EVENTS: usize = 4096;

pub struct Link {
    up: AtomicBool,
    tx: mpsc::Sender<Event>,
    wake: Notify,
    /// This process among the replicas (random at start).
    pub replica: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("replica", &self.replica)
            .field("up", &self.up())
            .finish()
    }
}

impl Link {
    /// A link and the worker's end of its channel.
    pub fn new() -> (Arc<Link>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(EVENTS);
        (
            Arc::new(Link {
                up: AtomicBool::new(false),
                tx,
                wake: Notify::new(),
                replica: format!("{:016x}", rand::random::<u64>()),
            }),
            rx,
        )
    }

    /// Whether Redis answers: while it does not, every decision is local.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Hand an event to the worker (never waits; dropped when the worker
    /// is that far behind).
    pub fn send(&self, event: Event) {
        if self.up() && self.tx.try_send(event).is_err() {
            tracing::debug!("shared state: event queue full, event kept local");
        }
    }

    /// New spend to add to the shared counters.
    pub fn spent(&self) {
        self.wake.notify_one();
    }

    /// Until `spent` is called.
    pub async fn nudged(&self) {
        self.wake.notified().await;
    }
}

/// A model or a tier as the link knows it.
#[derive(Debug)]
pub struct Attached {
    pub link: Arc<Link>,
    pub name: Arc<str>,
}

impl Attached {
    pub fn new(link: &Arc<Link>, name: &str) -> Self {
        Attached {
            link: Arc::clone(link),
            name: Arc::from(name),
        }
    }

    /// Shared right now (attached and Redis answering).
    pub fn live(&self) -> bool {
        self.link.up()
    }
}
