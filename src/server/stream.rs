//! Streaming (SPEC 4.5). `start` holds an upstream stream until its first
//! content (so the chain can still retry or fall back); `Relay` then forwards
//! each event as it arrives, bounds the idle gap, and ends with the closing
//! cost comment and `[DONE]`, or with an error event when the upstream breaks.
//! Whatever happens, the request is accounted once, when the relay ends or is
//! dropped (client gone).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::chat::{self, InFlight, RequestOutcome, Settlement};
use super::AppState;
use crate::chain::classify::{self, HealthEffect};
use crate::chain::health::Permit;
use crate::chain::AttemptOutcome;
use crate::cost::{self, Usage};
use crate::providers::{Chunk, ChunkKind, UpstreamError, UpstreamStream};
use crate::routing::Route;
use crate::runtime::Runtime;

/// An upstream stream that has produced its first content.
pub struct Started {
    upstream: UpstreamStream,
    buffered: Vec<Chunk>,
    ttft: Duration,
}

/// Open the stream and read until the first content, tool-call, reasoning or
/// finish delta. Role-only chunks are held back, up to `max_hold` bytes; a
/// failure before content is a failed attempt like any other.
pub async fn start(
    open: impl Future<Output = Result<UpstreamStream, UpstreamError>>,
    max_hold: usize,
) -> Result<Started, UpstreamError> {
    let t0 = Instant::now();
    let mut upstream = open.await?;
    let mut buffered: Vec<Chunk> = Vec::new();
    let mut held = 0usize;
    loop {
        if held > max_hold {
            return Err(UpstreamError::BadBody(format!(
                "more than policy.max_event_bytes ({max_hold} bytes) before the first content"
            )));
        }
        match upstream.next().await {
            None => {
                return Err(UpstreamError::MidStream(
                    "the stream ended before any content".into(),
                ))
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(c)) => match c.kind {
                ChunkKind::Preamble | ChunkKind::UsageOnly => {
                    held += c.data.len();
                    buffered.push(c);
                }
                ChunkKind::Content => {
                    buffered.push(c);
                    return Ok(Started {
                        upstream,
                        buffered,
                        ttft: t0.elapsed(),
                    });
                }
                ChunkKind::Done => {
                    return Err(UpstreamError::BadBody(
                        "the stream ended without any content".into(),
                    ))
                }
            },
        }
    }
}

/// What the relay needs to settle the request when it ends.
pub struct RelayContext {
    pub state: AppState,
    pub rt: Arc<Runtime>,
    pub permit: Option<Permit>,
    pub client_wants_usage: bool,
    pub prompt_chars_estimate: usize,
    /// Filled in and settled when the stream ends.
    pub settlement: Settlement,
    /// Held until the stream ends.
    pub _in_flight: InFlight,
}

enum Phase {
    Relaying,
    Closing(VecDeque<Bytes>),
    Ended,
}

pub struct Relay {
    ctx: RelayContext,
    upstream: UpstreamStream,
    pending: VecDeque<Chunk>,
    idle: Duration,
    usage: Option<Usage>,
    text_len: usize,
    phase: Phase,
    accounted: bool,
    attempt_started: Instant,
    /// When the upstream last sent an event.
    last_event: Instant,
    /// Send a keep-alive comment after this long without an upstream event.
    keepalive: Duration,
}

/// The longest quiet gap before the relay sends `: keep-alive`.
const KEEPALIVE_MAX: Duration = Duration::from_secs(15);

fn event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Relay {
    pub fn new(ctx: RelayContext, started: Started) -> Self {
        let (target, model) = ctx.settlement.served.unwrap_or_default();
        let t = &ctx.rt.targets[target];
        if let Some(i) = t.models.iter().position(|&m| m == model) {
            t.metrics[i].ttft.observe(started.ttft.as_secs_f64());
        }
        let idle = t.timeout;
        let last = ctx.settlement.run.as_ref().and_then(|r| r.attempts.last());
        let attempt_started = Instant::now()
            .checked_sub(last.map_or(Duration::ZERO, |a| a.elapsed))
            .unwrap_or_else(Instant::now);
        Self {
            idle,
            upstream: started.upstream,
            pending: started.buffered.into(),
            ctx,
            usage: None,
            text_len: 0,
            phase: Phase::Relaying,
            accounted: false,
            attempt_started,
            last_event: Instant::now(),
            // well inside the idle timeout, so a client's own read timeout
            // sees bytes during long quiet stretches of a healthy stream
            keepalive: (idle / 2).clamp(Duration::from_millis(1), KEEPALIVE_MAX),
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut relay| async move {
            let next = relay.next_bytes().await?;
            Some((Ok(next), relay))
        })
    }

    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Ended => return None,
                Phase::Closing(queue) => match queue.pop_front() {
                    Some(b) => return Some(b),
                    None => {
                        self.phase = Phase::Ended;
                        return None;
                    }
                },
                Phase::Relaying => {}
            }
            let next = match self.pending.pop_front() {
                Some(c) => Ok(c),
                None => {
                    // the idle deadline runs from the last upstream event; a
                    // keep-alive sent meanwhile does not move it
                    let idle_left = self.idle.saturating_sub(self.last_event.elapsed());
                    let wait = idle_left.min(self.keepalive);
                    match tokio::time::timeout(wait, self.upstream.next()).await {
                        Err(_) if self.last_event.elapsed() >= self.idle => {
                            Err(UpstreamError::Timeout)
                        }
                        Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                        Ok(None) => Err(UpstreamError::MidStream(
                            "the upstream closed the stream".into(),
                        )),
                        Ok(Some(r)) => {
                            self.last_event = Instant::now();
                            r
                        }
                    }
                }
            };
            match next {
                Ok(c) => {
                    if c.usage.is_some() {
                        self.usage = c.usage;
                    }
                    self.text_len += c.text_len;
                    match c.kind {
                        ChunkKind::Done => {
                            let comment = self.account(None);
                            self.phase = Phase::Closing(VecDeque::from([
                                comment,
                                Bytes::from_static(b"data: [DONE]\n\n"),
                            ]));
                        }
                        ChunkKind::UsageOnly if !self.ctx.client_wants_usage => {}
                        _ => return Some(event(&c.data)),
                    }
                }
                Err(e) => {
                    let message = match &e {
                        UpstreamError::Timeout => format!(
                            "the upstream sent nothing for {} ms; the stream was cut",
                            self.idle.as_millis()
                        ),
                        other => format!("the upstream stream broke: {other}"),
                    };
                    let error = json!({"error": {
                        "message": message,
                        "type": "upstream_error",
                        "param": null,
                        "code": "stream_interrupted",
                    }});
                    let comment = self.account(Some(&e));
                    self.phase = Phase::Closing(VecDeque::from([
                        event(error.to_string().as_bytes()),
                        comment,
                    ]));
                }
            }
        }
    }

    /// Usage as reported, or estimated from what was seen.
    fn usage(&self) -> (Usage, bool) {
        match self.usage {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt: (self.ctx.prompt_chars_estimate as u64).div_ceil(4),
                    completion: (self.text_len as u64).div_ceil(4),
                    ..Usage::default()
                },
                true,
            ),
        }
    }

    /// Count, price and settle the request once. `failure`: the upstream
    /// broke mid-stream. Returns the closing comment.
    fn account(&mut self, failure: Option<&UpstreamError>) -> Bytes {
        self.accounted = true;
        let rt = Arc::clone(&self.ctx.rt);
        let (target_id, model) = self.ctx.settlement.served.unwrap_or_default();
        let (usage, estimated) = self.usage();
        let prices = &rt.config.models[model].prices;
        let s = &mut self.ctx.settlement;
        s.usage = Some(usage);
        match failure {
            None => {
                s.cost = cost::cost(prices, &usage);
                s.savings = chat::savings(
                    &rt,
                    s.route.as_ref().map_or(&EMPTY_ROUTE, |r| r),
                    &usage,
                    s.cost,
                );
            }
            Some(_) => {
                // billed tokens of a broken stream: spent, and wasted
                s.wasted = cost::token_cost(prices, &usage);
                s.outcome = RequestOutcome::Failed;
            }
        }
        let target = &rt.targets[target_id];
        let outcome = failure.map_or(AttemptOutcome::Success, classify::outcome);
        if let Some(i) = target.models.iter().position(|&m| m == model) {
            target.metrics[i].outcomes[outcome.index()].inc();
            target.metrics[i]
                .upstream_duration
                .observe(self.attempt_started.elapsed().as_secs_f64());
        }
        if let Some(permit) = self.ctx.permit.take() {
            permit.record(failure.map_or(HealthEffect::Success, classify::health_effect));
        }
        if let Some(e) = failure {
            tracing::warn!(request_id = %s.request_id, error = %e, "stream interrupted after it started");
            // the attempt that started the stream failed after all
            if let Some(a) = s.run.as_mut().and_then(|r| r.attempts.last_mut()) {
                a.outcome = outcome;
                a.status = e.status();
                a.error = Some(e.to_string());
            }
            if let Some(t) = target.tier {
                if let (Some(esc), true) = (
                    rt.config.tiers[t].escalate,
                    outcome != AttemptOutcome::ClientError,
                ) {
                    rt.escalation[t].failure(esc.after);
                }
            }
        }
        let remaining = chat::settle(&self.ctx.state, &rt, s);
        let mut report = json!({
            "cost_usd": (s.cost + s.wasted).to_json(),
            "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion,
            "savings_usd": s.savings.to_json(),
        });
        if estimated {
            report["usage_estimated"] = json!(true);
        }
        if let Some(left) = remaining {
            report["budget_remaining_usd"] = left.to_json();
        }
        Bytes::from(format!(
            ": cascade {}\n\n",
            crate::api::to_plain_json(&report)
        ))
    }
}

static EMPTY_ROUTE: Route = Route {
    steps: Vec::new(),
    task: None,
    minor: false,
    escalated: false,
    task_retries: None,
    retries_cap: None,
};

impl Drop for Relay {
    fn drop(&mut self) {
        if self.accounted {
            return;
        }
        // the client went away mid-stream: the upstream is cancelled with
        // this relay; its tokens so far are still priced (the provider bills
        // them) and recorded, with status 499
        self.accounted = true;
        let rt = Arc::clone(&self.ctx.rt);
        let (target, model) = self.ctx.settlement.served.unwrap_or_default();
        rt.metrics
            .client_disconnects
            .with_label_values(&[&rt.targets[target].label])
            .inc();
        let (usage, _) = self.usage();
        let s = &mut self.ctx.settlement;
        s.usage = Some(usage);
        s.cost = cost::token_cost(&rt.config.models[model].prices, &usage);
        s.outcome = RequestOutcome::ClientError;
        s.status = 499;
        chat::settle(&self.ctx.state, &rt, s);
        tracing::info!(request_id = %s.request_id, "client disconnected mid-stream; upstream cancelled");
    }
}
