//! What the walk takes and gives: one attempt's record, the run, the answer
//! (a stream's attempt left open until it ends), how it failed.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::classify;
use super::health::Permit;
use super::targets::Chain;
use crate::config::ModelId;
use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

/// One upstream attempt, as reported in metrics, logs and `all_models_failed`.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// Index into `Chain::targets`.
    pub target: usize,
    pub model: ModelId,
    /// 1-based, across the whole request.
    pub attempt: u32,
    pub status: Option<u16>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub elapsed: Duration,
    /// The upstream's Retry-After, if it sent one.
    pub retry_after: Option<Duration>,
    pub started: Instant,
    /// Started as a hedge (another attempt was in flight).
    pub hedge: bool,
}

/// What the walk did, whatever the result.
#[derive(Debug, Default)]
pub struct Run {
    pub attempts: Vec<AttemptRecord>,
    /// Targets that got at least one attempt, in order.
    pub tried: Vec<usize>,
    /// Hedged attempts started (each also in `attempts`; none is a retry).
    pub hedges: u32,
}

/// The attempt that answered.
pub struct Served<T> {
    pub target: usize,
    pub model: ModelId,
    /// Where `model` is in its target's `models` (and `metrics`).
    pub index: usize,
    pub value: T,
    /// A stream's attempt, still open: finished when the stream ends.
    pub open: Option<OpenAttempt>,
}

#[derive(Debug)]
pub enum Failure {
    /// Every tier left was paid and a budget is spent (free_only).
    BudgetExceeded,
    /// The client's request is wrong (a 400/413/422 from the first tier):
    /// the upstream's answer goes back as is.
    Fatal(UpstreamError),
    AllFailed {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
}

/// How long an attempt may take: streaming attempts are bounded by the
/// first-token timeout, others by the tier's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Complete,
    Stream,
}

impl Mode {
    /// What an attempt waits for before it answers: the whole answer, or a
    /// stream's first content.
    pub fn waits_for(self) -> super::latency::Kind {
        match self {
            Mode::Complete => super::latency::Kind::Total,
            Mode::Stream => super::latency::Kind::Ttft,
        }
    }
}

/// One call the chain asks for.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub model: ModelId,
    /// Index into `Chain::targets` of the tier it is made for.
    pub target: usize,
    /// How long it may take (for a buffered stream: to its first content).
    pub limit: Duration,
    /// Its number across the request (1-based): its span in the trace.
    pub attempt: u32,
}

/// How a stream that had started ended.
#[derive(Clone, Copy, Debug)]
pub enum StreamEnd<'a> {
    /// It finished as it should.
    Done,
    /// The upstream broke, went quiet too long, or sent what could not be read.
    Broke(&'a UpstreamError),
    /// The client went away; the upstream was cancelled.
    ClientGone,
}

/// A streaming attempt that answered: its outcome is known only when the
/// stream ends. Holds the model's concurrency slot until then.
pub struct OpenAttempt {
    pub(super) target: usize,
    pub(super) index: usize,
    pub(super) model: ModelId,
    pub(super) started: Instant,
    pub(super) permit: Option<Permit>,
    /// None: a held (buffered) stream, whose gaps the client never waited.
    pub(super) longest_gap: Option<Duration>,
}

impl OpenAttempt {
    /// The stream went this long without an event (its longest gap is
    /// what an `"auto"` timeout of its tier learns from).
    pub fn quiet(&mut self, gap: Duration) {
        if let Some(g) = self.longest_gap.as_mut() {
            *g = (*g).max(gap);
        }
    }

    /// A malformed event was dropped from the stream (it went on).
    pub fn dropped_event(&self, chain: &Chain) {
        chain.targets[self.target].metrics[self.index]
            .events_dropped
            .inc();
    }

    /// Record how the stream ended: the attempt's outcome and duration, the
    /// model's health, the tier's escalation count, and (when it broke) the
    /// attempt's record in `run`. A client that left says nothing about the
    /// upstream: the slot is freed, nothing is recorded.
    pub fn finish(mut self, chain: &Chain, run: &mut Run, end: StreamEnd<'_>) {
        let err = match end {
            StreamEnd::ClientGone => return,
            StreamEnd::Done => None,
            StreamEnd::Broke(e) => Some(e),
        };
        let target = &chain.targets[self.target];
        let outcome = err.map_or(AttemptOutcome::Success, classify::outcome);
        let m = &target.metrics[self.index];
        m.outcomes[outcome.index()].inc();
        m.upstream_duration
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(permit) = self.permit.take() {
            permit.record(err.map_or(classify::HealthEffect::Success, classify::health_effect));
        }
        if let (None, Some(gap)) = (err, self.longest_gap) {
            chain.latency[self.model].success(super::latency::Kind::Gap, gap, Instant::now());
        }
        if let Some(e) = err {
            // the attempt that started the stream failed after all
            if let Some(a) = run.attempts.last_mut() {
                a.outcome = outcome;
                a.status = e.status();
                a.error = Some(e.to_string());
            }
            escalation_failure(chain, self.target, outcome);
        }
    }
}

/// A failed attempt on a tier with `escalate` counts toward it, unless the
/// client's request was at fault.
pub(super) fn escalation_failure(chain: &Chain, target: usize, outcome: AttemptOutcome) {
    let Some(t) = chain.targets[target].tier else {
        return;
    };
    if let (Some(esc), true) = (
        chain.config.tiers[t].escalate,
        outcome != AttemptOutcome::ClientError,
    ) {
        chain.escalation[t].failure(esc.after);
    }
}

/// How an answer is judged on tiers with `validate_output`: `Err` says why
/// it is not worth serving (the attempt fails, outcome `invalid_output`).
pub type Check<'a, T> = &'a (dyn Fn(ModelId, &T) -> Result<(), String> + Sync);
