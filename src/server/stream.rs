//! Streaming (docs/api.md, streaming). `start` holds an upstream stream until
//! its first content (so the chain can still retry or fall back); `Relay` is
//! then a pump: it forwards each event as it arrives, bounds the idle gap, and
//! reports how the stream ended, once (done, broke, or the client left when
//! it is dropped): the chain finishes the attempt, the accountant settles the
//! request and gives the closing comment sent before `[DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::settle::{self, InFlight, ServedBy, Settlement, StreamTally};
use super::splice::{Prior, Splice};
use super::state::AppState;
use super::wire::Wire;
use crate::chain::{OpenAttempt, StreamEnd};
use crate::providers::{Chunk, ChunkKind, Forward, UpstreamError, UpstreamRequest, UpstreamStream};
use crate::runtime::Runtime;

/// An upstream stream that has produced its first content.
pub struct Started {
    upstream: UpstreamStream,
    buffered: Vec<Chunk>,
}

impl Started {
    /// For tiers with `validate_output`: a stream whose first content is a
    /// finish with nothing in it is not an answer.
    pub fn answered(&self) -> Result<(), String> {
        match self.buffered.iter().find(|c| c.kind == ChunkKind::Content) {
            Some(c) if c.finish && c.text_len == 0 => {
                Err("the stream finished before any content".into())
            }
            _ => Ok(()),
        }
    }
}

/// Open the stream and read until the first content, tool-call, reasoning or
/// finish delta. Role-only chunks are held back, up to `max_hold` bytes; a
/// failure before content is a failed attempt like any other.
pub async fn start(
    open: impl Future<Output = Result<UpstreamStream, UpstreamError>>,
    max_hold: usize,
) -> Result<Started, UpstreamError> {
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
                    return Ok(Started { upstream, buffered });
                }
                ChunkKind::Done => {
                    return Err(UpstreamError::BadBody(
                        "the stream ended without any content".into(),
                    ))
                }
                ChunkKind::Malformed => {
                    return Err(UpstreamError::BadBody(
                        "a malformed stream event before the first content".into(),
                    ))
                }
            },
        }
    }
}

/// A tier's `mid_stream = "buffer"`: how long to wait for the first content
/// (the deadline and the first-token timeout), the longest gap after it, and
/// how much to hold before releasing the answer.
#[derive(Clone, Copy, Debug)]
pub struct Buffering {
    pub first: Duration,
    pub gap: Duration,
    pub max_bytes: usize,
}

/// A buffered stream that failed after content arrived: what the upstream
/// generated (and will bill) before it failed.
pub struct HeldFailure {
    pub err: UpstreamError,
    pub usage: Option<crate::cost::Usage>,
    pub text_chars: usize,
}

/// `start`, then hold the rest until the stream is complete, so a break, a
/// stall or a malformed ending is a failed attempt the client never sees.
/// Past `max_bytes` what is held is released and the stream goes on live.
pub async fn start_buffered(
    open: impl Future<Output = Result<UpstreamStream, UpstreamError>>,
    max_hold: usize,
    b: Buffering,
) -> Result<Started, HeldFailure> {
    let first = tokio::time::timeout(b.first, start(open, max_hold))
        .await
        .unwrap_or(Err(UpstreamError::Timeout));
    let mut started = first.map_err(|err| HeldFailure {
        err,
        usage: None,
        text_chars: 0,
    })?;
    let mut held: usize = started.buffered.iter().map(|c| c.data.len()).sum();
    let fail = |started: &Started, err: UpstreamError| HeldFailure {
        err,
        usage: started.buffered.iter().rev().find_map(|c| c.usage),
        text_chars: started.buffered.iter().map(|c| c.text_len).sum(),
    };
    loop {
        if held > b.max_bytes {
            return Ok(started);
        }
        let next = tokio::time::timeout(b.gap, started.upstream.next()).await;
        match next {
            Err(_) => return Err(fail(&started, UpstreamError::Timeout)),
            Ok(None) => {
                let err = UpstreamError::MidStream(
                    "the upstream closed the stream before it ended".into(),
                );
                return Err(fail(&started, err));
            }
            Ok(Some(Err(e))) => return Err(fail(&started, e)),
            Ok(Some(Ok(c))) if c.kind == ChunkKind::Malformed => {
                let err = UpstreamError::BadBody("a malformed stream event".into());
                return Err(fail(&started, err));
            }
            Ok(Some(Ok(c))) => {
                let done = c.kind == ChunkKind::Done;
                held += c.data.len();
                started.buffered.push(c);
                if done {
                    return Ok(started);
                }
            }
        }
    }
}

/// One streaming attempt as the chain makes it on `target`: `start`, or on
/// a `mid_stream = "buffer"` tier `start_buffered`, whose failed held answer
/// was generated and billed: added to `billed` as the model's wasted spend.
pub async fn attempt(
    open: impl Future<Output = Result<UpstreamStream, UpstreamError>>,
    (chain, call): (&crate::chain::Chain, crate::chain::Call),
    max_hold: usize,
    (billed, prompt_chars): (&super::pipeline::Billed, usize),
) -> Result<Started, UpstreamError> {
    let crate::config::MidStream::Buffer { max_bytes } = chain.targets[call.target].mid_stream
    else {
        return start(open, max_hold).await;
    };
    let b = Buffering {
        first: call.limit,
        gap: chain.gap_limit(call.target, call.model),
        max_bytes,
    };
    start_buffered(open, max_hold, b).await.map_err(|f| {
        if f.usage.is_some() || f.text_chars > 0 {
            let usage = f
                .usage
                .unwrap_or_else(|| crate::cost::estimate(prompt_chars, f.text_chars));
            billed.add(call.model, usage);
        }
        f.err
    })
}

/// What relaying a stream needs beyond its chunks, by the client's API.
pub struct Relaying {
    pub splice: Option<Splice>,
    pub wire: Wire,
    pub client_wants_usage: bool,
}

/// The response to a request whose stream started: its settlement opened
/// (settled when the stream ends), the headers with what the serving
/// provider was not sent, the relay as the body. The error is the
/// pipeline's (a refusal and its ticket, as every handler's `serve` returns).
#[allow(clippy::result_large_err)]
pub fn respond(
    ctx: &super::pipeline::Ctx<'_>,
    (ticket, route, run): (settle::Ticket, crate::chain::Route, crate::chain::Run),
    (served, wasted): (crate::chain::Served<Started>, crate::cost::Usd),
    dropped: &[String],
    relaying: impl FnOnce(ServedBy) -> Relaying,
    (prompt_chars, in_flight): (usize, InFlight),
) -> Result<axum::response::Response, (super::pipeline::Refusal, settle::Ticket)> {
    use axum::http::{header, HeaderValue};
    let rt = ctx.rt;
    let by = ServedBy::from(&served);
    let Some(attempt) = served.open else {
        let err = crate::error::GatewayError::invalid("a stream's attempt was not left open", None);
        return Err((err.into(), ticket));
    };
    let remaining = ctx.remaining(&ticket);
    let mut settlement = Settlement::served(ticket, route, run, by, true);
    settlement.wasted = wasted;
    let mut resp = axum::response::Response::new(axum::body::Body::empty());
    let h = resp.headers_mut();
    settle::headers(h, rt, &settlement, remaining, false);
    super::headers::dropped_params(h, dropped);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let Relaying {
        splice,
        wire,
        client_wants_usage,
    } = relaying(by);
    let open = Open {
        state: ctx.state.clone(),
        rt: Arc::clone(rt),
        settlement,
        by,
        attempt: Some(attempt),
        splice,
        wire,
        client_wants_usage,
        prompt_chars,
        idle: rt.chain.gap_limit(by.target, by.model),
    };
    let relay = Relay::new(open, served.value, in_flight);
    *resp.body_mut() = axum::body::Body::from_stream(relay.into_stream());
    Ok(resp)
}

/// A started stream's request, until it is settled.
pub struct Open {
    pub state: AppState,
    pub rt: Arc<Runtime>,
    /// The request as served; priced when the stream ends.
    pub settlement: Settlement,
    /// What serves it.
    pub by: ServedBy,
    /// The chain's attempt, finished when the stream ends (or when it broke
    /// and a continuation is sought).
    pub attempt: Option<OpenAttempt>,
    /// `mid_stream = "continue"`: what a continuation needs.
    pub splice: Option<Splice>,
    /// The API the client speaks.
    pub wire: Wire,
    pub client_wants_usage: bool,
    /// Characters of the request's messages (for an estimate of its usage).
    pub prompt_chars: usize,
    /// The serving tier's timeout: the longest quiet gap allowed.
    pub idle: Duration,
}

enum Phase {
    Relaying,
    Closing(VecDeque<Bytes>),
    Ended,
}

pub struct Relay {
    /// Until the stream is settled.
    open: Option<Open>,
    /// Held until the relay is dropped.
    _in_flight: InFlight,
    client_wants_usage: bool,
    wire: Wire,
    upstream: UpstreamStream,
    pending: VecDeque<Chunk>,
    idle: Duration,
    tally: StreamTally,
    phase: Phase,
    /// When the upstream last sent an event.
    last_event: Instant,
    /// Send a keep-alive comment after this long without an upstream event.
    keepalive: Duration,
}

/// The longest quiet gap before the relay sends `: keep-alive`.
const KEEPALIVE_MAX: Duration = Duration::from_secs(15);

use super::wire::data_event as event;

impl Relay {
    pub fn new(mut open: Open, started: Started, in_flight: InFlight) -> Self {
        let idle = open.idle;
        Self {
            wire: std::mem::replace(&mut open.wire, Wire::Chat),
            idle,
            _in_flight: in_flight,
            client_wants_usage: open.client_wants_usage,
            tally: StreamTally {
                usage: None,
                prompt_chars: open.prompt_chars,
                text_chars: 0,
                prior: None,
            },
            open: Some(open),
            upstream: started.upstream,
            pending: started.buffered.into(),
            phase: Phase::Relaying,
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
                            let gap = self.last_event.elapsed();
                            if let Some(a) = self.open.as_mut().and_then(|o| o.attempt.as_mut()) {
                                a.quiet(gap);
                            }
                            self.last_event = Instant::now();
                            r
                        }
                    }
                }
            };
            match next {
                Ok(c) => {
                    if c.usage.is_some() {
                        self.tally.usage = c.usage;
                    }
                    self.tally.text_chars += c.text_len;
                    match c.kind {
                        ChunkKind::Done => {
                            let usage = self.tally.usage.unwrap_or_else(|| {
                                crate::cost::estimate(
                                    self.tally.prompt_chars,
                                    self.tally.text_chars,
                                )
                            });
                            let comment = self.end(StreamEnd::Done);
                            self.phase = Phase::Closing(self.wire.done(&c, &usage, comment));
                        }
                        ChunkKind::UsageOnly if !self.client_wants_usage && self.wire.is_chat() => {
                        }
                        // after the first content: dropped, counted, the stream goes on
                        ChunkKind::Malformed => {
                            if let Some(a) = self.open.as_ref().and_then(|o| o.attempt.as_ref()) {
                                a.dropped_event(&self.open.as_ref()?.rt.chain);
                            }
                        }
                        _ if !self.wire.is_chat() => match self.wire.chunk(&c) {
                            Some(b) => return Some(b),
                            None => continue,
                        },
                        _ => match self.open.as_mut().and_then(|o| o.splice.as_mut()) {
                            None => return Some(event(&c.data)),
                            Some(splice) => {
                                let data = if splice.rewriting {
                                    match splice.rewrite(&c.data) {
                                        Some(data) => data,
                                        None => continue,
                                    }
                                } else {
                                    c.data
                                };
                                splice.observe(&data);
                                return Some(event(&data));
                            }
                        },
                    }
                }
                Err(e) if self.resume(&e).await => continue,
                Err(e) => {
                    let message = match &e {
                        UpstreamError::Timeout => format!(
                            "the upstream sent nothing for {} ms; the stream was cut",
                            self.idle.as_millis()
                        ),
                        other => format!("the upstream stream broke: {other}"),
                    };
                    let error = self.wire.error(&message);
                    let comment = self.end(StreamEnd::Broke(&e));
                    self.phase = Phase::Closing(VecDeque::from([error, comment]));
                }
            }
        }
    }

    /// Report how the stream ended, once: the chain finishes its attempt,
    /// the accountant settles the request. The closing comment.
    fn end(&mut self, end: StreamEnd<'_>) -> Bytes {
        let Some(open) = self.open.take() else {
            return Bytes::new();
        };
        let mut settlement = open.settlement;
        if let Some(attempt) = open.attempt {
            attempt.finish(&open.rt.chain, &mut settlement.run, end);
        }
        settle::stream_ended(
            &open.state,
            &open.rt,
            (settlement, open.by),
            &self.tally,
            end,
        )
    }
}

impl Relay {
    /// `mid_stream = "continue"`: the stream broke with `e`; ask the next
    /// models that take a prefill to continue it. When one starts, its
    /// stream is relayed from here on and the broken leg is priced as cost.
    async fn resume(&mut self, e: &UpstreamError) -> bool {
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        let Some(splice) = open.splice.as_ref().filter(|s| s.can_continue()) else {
            return false;
        };
        let Some(route) = open.settlement.route.clone() else {
            return false;
        };
        let rt = Arc::clone(&open.rt);
        let (target, model) = match self.tally.prior {
            Some(p) => (p.target, p.model),
            None => (open.by.target, open.by.model),
        };
        // the broken leg: its record and the model's health
        if let Some(attempt) = open.attempt.take() {
            attempt.finish(&rt.chain, &mut open.settlement.run, StreamEnd::Broke(e));
        }
        let cfg = &rt.config;
        let deadline = Instant::now() + cfg.server.request_timeout;
        let max_hold = cfg.policy.limits.max_event_bytes;
        let run = std::mem::take(&mut open.settlement.run);
        let trace = open.settlement.ticket.trace;
        let (run, result) = crate::chain::continuation(
            &rt.chain,
            &route,
            (run, (target, model)),
            deadline,
            &|| true,
            |call: crate::chain::Call| {
                let m = &cfg.models[call.model];
                let flags = matches!(
                    cfg.providers[m.provider].kind,
                    crate::config::ProviderKind::OpenAi
                );
                let body = splice.body.continued(&splice.text, flags);
                let rt = &rt;
                async move {
                    let body = body.ok_or_else(|| {
                        UpstreamError::BadBody("the messages could not be extended".into())
                    })?;
                    let req = UpstreamRequest {
                        body: &body,
                        model: m,
                        forward: Forward {
                            headers: &splice.headers,
                            request_id: splice.request_id.as_ref(),
                            trace: trace.map(|t| (t, call.attempt)),
                        },
                        limits: cfg.policy.limits,
                    };
                    start(rt.open_stream(req), max_hold).await
                }
            },
        )
        .await;
        open.settlement.run = run;
        let Ok(served) = result else {
            return false;
        };
        // the broken leg was billed and served: it is cost
        let leg = self.tally.usage.unwrap_or_else(|| {
            crate::cost::estimate(self.tally.prompt_chars, self.tally.text_chars)
        });
        let mut prior = self.tally.prior.unwrap_or(Prior {
            cost: crate::cost::Usd::ZERO,
            usage: crate::cost::Usage::default(),
            estimated: false,
            target,
            model,
        });
        prior.cost += crate::cost::cost(&cfg.models[model].prices, &leg);
        prior.usage.add(leg);
        prior.estimated |= self.tally.usage.is_none();
        (prior.target, prior.model) = (served.target, served.model);
        self.tally = StreamTally {
            usage: None,
            prompt_chars: self.tally.prompt_chars + splice.text.len(),
            text_chars: 0,
            prior: Some(prior),
        };
        open.attempt = served.open;
        if let Some(splice) = open.splice.as_mut() {
            splice.rewriting = true;
        }
        self.idle = rt.chain.gap_limit(served.target, served.model);
        self.upstream = served.value.upstream;
        self.pending = served.value.buffered.into();
        self.last_event = Instant::now();
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // unsettled: the client went away mid-stream, and the upstream is
        // cancelled with this relay
        self.end(StreamEnd::ClientGone);
    }
}
