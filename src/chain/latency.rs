//! What a model's latency has been, and what it says: the peak-EWMA estimate
//! `least_latency` ranks models by (one for streams, time to first token; one
//! for the rest, whole latency), and windows of recent successful attempts
//! (time to first token, longest gap between chunks, whole latency) whose
//! percentiles set `"auto"` timeouts and percentile hedges. Per model; the
//! lock is held for a few instructions; the percentiles are recomputed every
//! few samples and read from atomics on the request path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Adaptive, Quantile};

/// What a window holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A stream's time to its first content.
    Ttft,
    /// A stream's longest quiet gap between chunks.
    Gap,
    /// A non-streaming attempt's whole latency.
    Total,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ttft, Kind::Gap, Kind::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ttft => "ttft",
            Kind::Gap => "gap",
            Kind::Total => "total",
        }
    }
}

/// A window: at most this many samples ...
const WINDOW: usize = 1000;
/// ... none older than this.
const WINDOW_AGE: Duration = Duration::from_secs(300);
/// Fewer samples than this say nothing: no percentile, no learned timeout.
pub const MIN_SAMPLES: usize = 20;
/// A model with no sample this long gets a probe.
pub const STALE: Duration = Duration::from_secs(10);
/// The estimate's decay time.
const TAU: Duration = Duration::from_secs(10);
/// Percentiles are recomputed after this many new samples (at most ten
/// times a second), or a second after the last time.
const REFRESH_EVERY: u32 = 64;

/// The percentiles kept for each kind: p50, p90, p95, p99 and the
/// configured adaptive one, in microseconds (0: too few samples).
const SLOTS: usize = 5;

pub struct Latency {
    inner: Mutex<Inner>,
    /// `[kind][slot]`, microseconds.
    cached: [[AtomicU64; SLOTS]; 3],
    /// When each window last took a sample, in microseconds since `born`:
    /// a window whose newest sample has expired says nothing, whenever it
    /// was last recomputed.
    newest: [AtomicU64; 3],
    born: Instant,
    /// `[policy] adaptive_timeout` percentile, as a fraction.
    adaptive: f64,
}

#[derive(Default)]
struct Inner {
    /// Whole latency, time to first token.
    estimate: [Ewma; 2],
    /// When a probe was last handed out, for each estimate.
    probed: [Option<Instant>; 2],
    windows: [Window; 3],
}

#[derive(Default, Clone, Copy)]
struct Ewma {
    ms: f64,
    at: Option<Instant>,
}

#[derive(Default)]
struct Window {
    samples: VecDeque<(Instant, u32)>,
    fresh: u32,
    refreshed: Option<Instant>,
}

/// The estimate an answer's latency moves: streams' time to first token,
/// or the whole latency of the rest.
fn estimate_slot(answer: Kind) -> usize {
    match answer {
        Kind::Ttft => 1,
        Kind::Total | Kind::Gap => 0,
    }
}

/// Drop a window's expired samples and hand out a copy of the rest (to be
/// sorted outside the lock).
fn take(w: &mut Window, now: Instant) -> Vec<u32> {
    while w
        .samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW_AGE)
    {
        w.samples.pop_front();
    }
    w.fresh = 0;
    w.refreshed = Some(now);
    w.samples.iter().map(|(_, v)| *v).collect()
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[u32], fraction: f64) -> u32 {
    let n = sorted.len();
    let i = ((fraction * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i]
}

impl Latency {
    pub fn new(adaptive: &Adaptive) -> Latency {
        Latency {
            inner: Mutex::new(Inner::default()),
            cached: Default::default(),
            newest: Default::default(),
            born: Instant::now(),
            adaptive: adaptive.percentile / 100.0,
        }
    }

    /// Whether this was built for the same adaptive percentile (kept on reload).
    pub fn same_adaptive(&self, adaptive: &Adaptive) -> bool {
        self.adaptive == adaptive.percentile / 100.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A successful attempt's sample of `kind`. An answer's latency (`Total`
    /// or `Ttft`) also moves the estimate of its mode.
    pub fn success(&self, kind: Kind, took: Duration, now: Instant) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let age = now.saturating_duration_since(self.born).as_micros();
        self.newest[kind as usize].store(u64::try_from(age).unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut g = self.lock();
        if kind != Kind::Gap {
            g.estimate[estimate_slot(kind)].observe(took, now);
        }
        let w = &mut g.windows[kind as usize];
        if w.samples.len() == WINDOW {
            w.samples.pop_front();
        }
        w.samples.push_back((now, micros));
        w.fresh += 1;
        // at most ten sorts a second under load, and a sort a second at least
        let since = w.refreshed.map_or(Duration::MAX, |t| now.duration_since(t));
        let due = w.samples.len() <= MIN_SAMPLES
            || since >= Duration::from_secs(1)
            || (w.fresh >= REFRESH_EVERY && since >= Duration::from_millis(100));
        if due {
            let samples = take(w, now);
            drop(g);
            self.publish(kind, samples);
        }
    }

    /// A failed attempt waiting for `answer`: a model that fails is not
    /// fast, however quickly it failed. The estimate moves as if it had
    /// taken `penalty`.
    pub fn failure(&self, answer: Kind, penalty: Duration, now: Instant) {
        self.lock().estimate[estimate_slot(answer)].observe(penalty, now);
    }

    /// Recompute a window's percentiles from its samples (sorted here,
    /// outside the lock).
    fn publish(&self, kind: Kind, mut sorted: Vec<u32>) {
        let slots = &self.cached[kind as usize];
        if sorted.len() < MIN_SAMPLES {
            for s in slots {
                s.store(0, Ordering::Relaxed);
            }
            return;
        }
        sorted.sort_unstable();
        let fractions = [0.5, 0.9, 0.95, 0.99, self.adaptive];
        for (slot, f) in slots.iter().zip(fractions) {
            // 0 means "too few samples": a real 0 is kept as 1 us
            slot.store(u64::from(rank(&sorted, f)).max(1), Ordering::Relaxed);
        }
    }

    /// Bring every window up to date (expired samples dropped): for readers
    /// off the request path (the status page, a scrape).
    pub fn refresh_all(&self, now: Instant) {
        for kind in Kind::ALL {
            let samples = take(&mut self.lock().windows[kind as usize], now);
            self.publish(kind, samples);
        }
    }

    fn slot(&self, kind: Kind, slot: usize) -> Option<Duration> {
        let newest = Duration::from_micros(self.newest[kind as usize].load(Ordering::Relaxed));
        if Instant::now().saturating_duration_since(self.born) > newest + WINDOW_AGE {
            return None;
        }
        match self.cached[kind as usize][slot].load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// A percentile of the window of `kind`, if it holds enough samples.
    pub fn quantile(&self, kind: Kind, q: Quantile) -> Option<Duration> {
        let slot = match q {
            Quantile::P50 => 0,
            Quantile::P90 => 1,
            Quantile::P95 => 2,
            Quantile::P99 => 3,
        };
        self.slot(kind, slot)
    }

    /// An `"auto"` timeout bounding `kind`: the adaptive percentile times
    /// the multiplier, clamped; `max` until there are enough samples.
    pub fn timeout(&self, kind: Kind, a: &Adaptive) -> Duration {
        match self.slot(kind, 4) {
            None => a.max,
            Some(p) => Duration::try_from_secs_f64(p.as_secs_f64() * a.multiplier)
                .map_or(a.max, |d| d.clamp(a.min, a.max)),
        }
    }

    /// The estimate for attempts waiting for `answer` (None: no sample yet).
    pub fn estimate(&self, answer: Kind) -> Option<Duration> {
        let e = self.lock().estimate[estimate_slot(answer)];
        e.at.map(|_| Duration::from_secs_f64(e.ms / 1000.0))
    }

    /// Samples in the window of `kind`.
    pub fn samples(&self, kind: Kind) -> usize {
        self.lock().windows[kind as usize].samples.len()
    }

    /// How `least_latency` sees the model now: `None` when it is owed a
    /// probe (no sample, or none for `STALE`, and no probe handed out in
    /// that time), which this call hands out; else its estimate in ms.
    pub fn rank(&self, answer: Kind, now: Instant) -> Option<f64> {
        let mut g = self.lock();
        let m = estimate_slot(answer);
        let e = g.estimate[m];
        let stale = e.at.is_none_or(|t| now.duration_since(t) >= STALE);
        let probing = g.probed[m].is_some_and(|t| now.duration_since(t) < STALE);
        if stale && !probing {
            g.probed[m] = Some(now);
            return None;
        }
        // never sampled and its probe still out: rank it last
        Some(if e.at.is_none() { f64::INFINITY } else { e.ms })
    }
}

/// The quantiles exported as `cascade_model_latency_seconds`.
const EXPORTED: [(Quantile, &str); 3] = [
    (Quantile::P50, "0.5"),
    (Quantile::P95, "0.95"),
    (Quantile::P99, "0.99"),
];

impl Latency {
    /// For `/v1/cascade/status`: the estimates, each window's percentiles,
    /// and what `"auto"` timeouts are now (windows refreshed first).
    pub fn to_json(&self, a: &Adaptive) -> serde_json::Value {
        use serde_json::json;
        self.refresh_all(Instant::now());
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
        let mut windows = serde_json::Map::new();
        for kind in Kind::ALL {
            let mut w = serde_json::Map::new();
            w.insert("samples".into(), json!(self.samples(kind)));
            for (q, _) in EXPORTED {
                w.insert(
                    format!("{}_ms", q.as_str()),
                    json!(ms(self.quantile(kind, q))),
                );
            }
            windows.insert(kind.as_str().into(), w.into());
        }
        json!({
            "estimate_ms": {
                "complete": ms(self.estimate(Kind::Total)),
                "stream": ms(self.estimate(Kind::Ttft)),
            },
            "windows": windows,
            "auto_timeouts_ms": {
                "timeout": self.timeout(Kind::Total, a).as_millis() as u64,
                "stream_gap": self.timeout(Kind::Gap, a).as_millis() as u64,
                "first_token": self.timeout(Kind::Ttft, a).as_millis() as u64,
            },
        })
    }

    /// Set the model's gauges (at a scrape): its windows' percentiles, and
    /// what its `"auto"` timeouts are.
    pub fn export(&self, model: &str, m: &crate::metrics::Metrics, a: &Adaptive) {
        self.refresh_all(Instant::now());
        for kind in Kind::ALL {
            for (q, label) in EXPORTED {
                let g = m
                    .model_latency
                    .with_label_values(&[model, kind.as_str(), label]);
                g.set(self.quantile(kind, q).map_or(f64::NAN, |d| d.as_secs_f64()));
            }
        }
        for (kind, label) in [(Kind::Total, "timeout"), (Kind::Ttft, "first_token")] {
            m.model_timeout
                .with_label_values(&[model, label])
                .set(self.timeout(kind, a).as_secs_f64());
        }
    }
}

impl Ewma {
    /// Peak EWMA: a sample above the estimate is taken at once; below it,
    /// the estimate decays toward it by how long since the last sample.
    fn observe(&mut self, took: Duration, now: Instant) {
        let x = took.as_secs_f64() * 1000.0;
        match self.at {
            Some(at) if x < self.ms => {
                let dt = now.duration_since(at).as_secs_f64();
                let w = (-dt / TAU.as_secs_f64()).exp();
                self.ms = self.ms * w + x * (1.0 - w);
            }
            _ => self.ms = x,
        }
        self.at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[tokio::test(start_paused = true)]
    async fn auto_timeout_is_max_until_twenty_samples_then_clamped() {
        let a = Adaptive::default();
        let l = Latency::new(&a);
        let now = Instant::now();
        for _ in 0..19 {
            l.success(Kind::Total, ms(50), now);
        }
        assert_eq!(l.timeout(Kind::Total, &a), a.max);
        l.success(Kind::Total, ms(50), now);
        // p99 50 ms x 2 = 100 ms, clamped up to 500 ms
        assert_eq!(l.timeout(Kind::Total, &a), a.min);
        // recomputed every 64 samples at most ten times a second
        for _ in 0..100 {
            l.success(Kind::Total, ms(400), now);
        }
        assert_eq!(l.timeout(Kind::Total, &a), a.min, "not recomputed yet");
        l.success(Kind::Total, ms(400), now + ms(100));
        assert_eq!(l.timeout(Kind::Total, &a), ms(800));
        assert_eq!(l.quantile(Kind::Total, Quantile::P50), Some(ms(400)));
        assert_eq!(l.quantile(Kind::Ttft, Quantile::P50), None);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_leave_the_window() {
        let a = Adaptive::default();
        let l = Latency::new(&a);
        let now = Instant::now();
        for _ in 0..30 {
            l.success(Kind::Gap, ms(50), now);
        }
        assert!(l.quantile(Kind::Gap, Quantile::P99).is_some());
        l.refresh_all(now + WINDOW_AGE + ms(1));
        assert_eq!(l.samples(Kind::Gap), 0);
        assert_eq!(l.timeout(Kind::Gap, &a), a.max);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_decays_down_and_probes_the_stale() {
        let l = Latency::new(&Adaptive::default());
        let t0 = Instant::now();
        // no sample: one probe, then ranked last while it is out
        assert_eq!(l.rank(Kind::Total, t0), None);
        assert_eq!(l.rank(Kind::Total, t0), Some(f64::INFINITY));
        l.success(Kind::Total, ms(20), t0);
        assert_eq!(l.rank(Kind::Total, t0), Some(20.0));
        l.success(Kind::Total, ms(300), t0 + ms(10));
        assert_eq!(l.rank(Kind::Total, t0 + ms(10)), Some(300.0));
        l.success(Kind::Total, ms(20), t0 + ms(10) + TAU);
        let r = l.rank(Kind::Total, t0 + ms(10) + TAU).unwrap();
        assert!(r > 20.0 && r < 300.0 * 0.5, "{r}");
        // a fast failure counts as slow
        l.failure(Kind::Total, ms(5000), t0 + TAU * 2);
        assert_eq!(l.rank(Kind::Total, t0 + TAU * 2), Some(5000.0));
        // streams are ranked apart
        assert_eq!(l.rank(Kind::Ttft, t0 + TAU * 2), None);
        // stale: one more probe
        assert_eq!(l.rank(Kind::Total, t0 + TAU * 2 + STALE), None);
    }
}
