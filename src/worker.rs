//! Workers: each a thread with its own single-threaded async runtime and its
//! own listener on the port (SO_REUSEPORT), so a connection is accepted,
//! served and relayed upstream on one thread. `workers` is set once at start
//! (before the providers' pools are made); `current` is this thread's index
//! (0 off the workers). A leaf module: the providers read it, the CLI sets it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

pub fn set_workers(n: usize) {
    WORKERS.store(n.max(1), Ordering::Relaxed);
}

pub fn workers() -> usize {
    WORKERS.load(Ordering::Relaxed)
}

pub fn set_current(i: usize) {
    CURRENT.with(|w| w.set(i));
}

pub fn current() -> usize {
    CURRENT.with(Cell::get)
}
