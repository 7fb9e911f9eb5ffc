//! State shared by every request: the runtime (swapped whole on reload),
//! metrics, readiness, the ledger and the budgets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::recent::Recent;
use crate::budget::Budgets;
use crate::config::SharedState;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::shared::Link;

/// State shared by every request. The runtime is swapped whole on reload;
/// a request keeps the one it started with.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    ledger: Option<Arc<Ledger>>,
    budgets: Budgets,
    recent: Recent,
    /// With `[state] backend = "redis"`.
    link: Option<Arc<Link>>,
    /// `max_connections`, for every worker together.
    slots: super::conn::Slots,
}

impl AppState {
    /// Open the ledger the config names (if any), load budget spend from it.
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Result<Self, String> {
        let cfg = Arc::clone(&runtime.config);
        let ledger = match &cfg.ledger.store {
            Some(store) => Some(Arc::new(
                Ledger::open(
                    store,
                    (cfg.ledger.flush_interval, cfg.ledger.retention),
                    metrics.ledger_dropped.clone(),
                )
                .map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let budgets = match &ledger {
            Some(l) => {
                Budgets::load(l, crate::ledger::time::now_ms()).map_err(|e| e.to_string())?
            }
            None => Budgets::default(),
        };
        let shared = match &cfg.state {
            SharedState::Local => None,
            SharedState::Redis { url, key_prefix } => {
                let (link, events) = Link::new();
                budgets.attach(&link);
                // down until the worker has reached Redis
                metrics.shared_state_up.set(0);
                Some((link, events, url, key_prefix))
            }
        };
        let state = Self {
            inner: Arc::new(Shared {
                runtime: ArcSwap::from_pointee(runtime),
                metrics,
                ready: AtomicBool::new(true),
                ledger,
                budgets,
                recent: Recent::default(),
                link: shared.as_ref().map(|(l, ..)| Arc::clone(l)),
                slots: super::conn::Slots::new(cfg.server.max_connections),
            }),
        };
        if let Some((link, events, url, prefix)) = shared {
            super::shared_state::spawn(state.clone(), link, events, url, prefix);
        }
        Ok(state)
    }

    /// The connection slots every worker takes from.
    pub fn slots(&self) -> &super::conn::Slots {
        &self.inner.slots
    }

    /// The shared-state link (None with the local backend).
    pub fn link(&self) -> Option<&Arc<Link>> {
        self.inner.link.as_ref()
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    pub fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    /// The last requests settled (the page's list).
    pub fn recent(&self) -> &Recent {
        &self.inner.recent
    }

    /// Flush and stop the ledger writer.
    pub fn close(&self) {
        if let Some(l) = &self.inner.ledger {
            l.close();
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn swap_runtime(&self, runtime: Runtime) {
        self.inner.runtime.store(Arc::new(runtime));
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }
}

impl super::shared_state::Host for AppState {
    fn runtime(&self) -> Arc<Runtime> {
        AppState::runtime(self)
    }

    fn budgets(&self) -> &Budgets {
        AppState::budgets(self)
    }

    fn ledger(&self) -> Option<&Arc<Ledger>> {
        AppState::ledger(self)
    }

    fn metrics(&self) -> &Arc<Metrics> {
        AppState::metrics(self)
    }
}
