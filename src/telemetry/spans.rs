//! A finished request as spans (OpenTelemetry GenAI conventions): one
//! server span for the request, a child of the client's span when it sent a
//! `traceparent`, and one client span per attempt, in order, each with the
//! span id its `traceparent` carried upstream. The request path copies a few
//! numbers into a `Finished`; names and attributes are built here, by the
//! export task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::export::{Attr, SpanOut};
use super::TraceCtx;
use crate::config::{Config, MidStream, Provider, ProviderKind};
use crate::cost::{Usage, Usd};
use crate::outcome::AttemptOutcome;

/// One attempt, as copied when the request was settled.
pub struct Attempt {
    pub target: usize,
    pub model: usize,
    pub number: u32,
    /// From the request's start.
    pub offset: Duration,
    pub elapsed: Duration,
    pub status: Option<u16>,
    pub outcome: AttemptOutcome,
    pub hedge: bool,
}

/// Everything the spans need, owned.
pub struct Finished {
    pub ctx: TraceCtx,
    pub config: Arc<Config>,
    pub start: SystemTime,
    pub elapsed: Duration,
    pub request_id: String,
    pub endpoint: &'static str,
    pub task: Option<usize>,
    pub first_target: Option<usize>,
    pub served: Option<(usize, usize)>,
    pub attempts: Vec<Attempt>,
    pub usage: Option<Usage>,
    pub cost: Usd,
    pub status: u16,
    pub outcome: &'static str,
    pub stream: bool,
    pub prompt: Option<Box<str>>,
    pub completion: Option<Box<str>>,
}

/// `gen_ai.provider.name`: the well-known name for OpenAI's and
/// Anthropic's own APIs, else the provider's name in the config (an
/// OpenAI-compatible server is not OpenAI).
fn provider_name(p: &Provider) -> String {
    match (&p.kind, p.host.as_deref()) {
        (ProviderKind::OpenAi, Some("api.openai.com")) => "openai".into(),
        (ProviderKind::Anthropic, Some("api.anthropic.com")) => "anthropic".into(),
        _ => p.name.clone(),
    }
}

/// `t + d`, or `t` where that would overflow.
fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

/// `gen_ai.operation.name` by client API.
fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "embeddings" => "embeddings",
        _ => "chat",
    }
}

fn str_attr(v: impl Into<String>) -> Attr {
    Attr::Str(v.into())
}

/// The request's spans, the request's first.
pub fn spans(c: Finished) -> Vec<SpanOut> {
    let cfg = &c.config;
    let op = operation(c.endpoint);
    // what the client asked for: its task, else the chain's first step
    let requested = match c.task {
        Some(t) => cfg.tasks[t].name.clone(),
        None => c
            .first_target
            .map_or_else(String::new, |t| cfg.target_label(t)),
    };
    let mut out = Vec::with_capacity(1 + c.attempts.len());
    let mut attrs = vec![
        ("gen_ai.operation.name", str_attr(op)),
        ("gen_ai.request.model", str_attr(requested.clone())),
        ("http.response.status_code", Attr::Int(i64::from(c.status))),
        ("cascade.request_id", str_attr(c.request_id.clone())),
        ("cascade.endpoint", str_attr(c.endpoint)),
        ("cascade.attempts", Attr::Int(c.attempts.len() as i64)),
        ("cascade.cost_usd", Attr::Float(c.cost.as_f64())),
        ("cascade.outcome", str_attr(c.outcome)),
        ("cascade.stream", Attr::Bool(c.stream)),
    ];
    if let Some(t) = c.task {
        attrs.push(("cascade.task", str_attr(cfg.tasks[t].name.clone())));
    }
    if let Some(first) = c.first_target {
        attrs.push(("cascade.route", str_attr(cfg.target_label(first))));
    }
    if let Some((target, model)) = c.served {
        let m = &cfg.models[model];
        attrs.push(("gen_ai.response.model", str_attr(m.upstream.clone())));
        attrs.push((
            "gen_ai.provider.name",
            str_attr(provider_name(&cfg.providers[m.provider])),
        ));
        attrs.push(("cascade.tier", str_attr(cfg.target_label(target))));
        attrs.push(("cascade.model", str_attr(m.name.clone())));
    }
    if let Some(u) = c.usage {
        attrs.push(("gen_ai.usage.input_tokens", Attr::Int(u.prompt as i64)));
        attrs.push(("gen_ai.usage.output_tokens", Attr::Int(u.completion as i64)));
    }
    if let Some(p) = &c.prompt {
        attrs.push(("gen_ai.input.messages", str_attr(p.to_string())));
    }
    if let Some(o) = &c.completion {
        attrs.push(("gen_ai.output.messages", str_attr(o.to_string())));
    }
    let failed = c.status >= 400;
    if failed {
        attrs.push(("error.type", str_attr(c.outcome)));
    }
    out.push(SpanOut {
        trace_id: c.ctx.trace_id,
        span_id: c.ctx.span,
        parent: c.ctx.parent,
        name: format!("{op} {requested}"),
        server: true,
        start: c.start,
        end: later(c.start, c.elapsed),
        error: failed.then(|| format!("HTTP {}", c.status)),
        attributes: attrs,
    });
    let mut previous: Option<usize> = None;
    let mut by_number: Vec<&Attempt> = c.attempts.iter().collect();
    by_number.sort_by_key(|a| a.number);
    for a in by_number {
        let m = &cfg.models[a.model];
        let provider = &cfg.providers[m.provider];
        let why = if a.hedge {
            "hedge"
        } else {
            match previous {
                None => "first",
                Some(p) if p == a.target => "retry",
                Some(_) => "fallback",
            }
        };
        if !a.hedge {
            previous = Some(a.target);
        }
        let ok = a.outcome == AttemptOutcome::Success;
        let mut attrs = vec![
            ("gen_ai.operation.name", str_attr(op)),
            ("gen_ai.request.model", str_attr(m.upstream.clone())),
            ("gen_ai.provider.name", str_attr(provider_name(provider))),
            ("cascade.tier", str_attr(cfg.target_label(a.target))),
            ("cascade.model", str_attr(m.name.clone())),
            ("cascade.provider", str_attr(provider.name.clone())),
            ("cascade.attempt", Attr::Int(i64::from(a.number))),
            ("cascade.attempt.reason", str_attr(why)),
            ("cascade.outcome", str_attr(a.outcome.as_str())),
        ];
        if let Some(host) = &provider.host {
            attrs.push(("server.address", str_attr(host.clone())));
        }
        if let Some(status) = a.status {
            attrs.push(("http.response.status_code", Attr::Int(i64::from(status))));
        }
        // a stream's serving attempt answered at its first content and ran
        // until the request ended; a held (buffered) one answered at its end
        let held = cfg
            .tiers
            .get(a.target)
            .is_some_and(|t| matches!(t.mid_stream, MidStream::Buffer { .. }));
        let streamed = ok && c.stream && Some((a.target, a.model)) == c.served;
        if ok {
            attrs.push(("gen_ai.response.model", str_attr(m.upstream.clone())));
            if streamed && !held {
                attrs.push((
                    "cascade.time_to_first_token_ms",
                    Attr::Float(a.elapsed.as_secs_f64() * 1000.0),
                ));
            }
        } else {
            attrs.push(("error.type", str_attr(a.outcome.as_str())));
        }
        let start = later(c.start, a.offset);
        let end = if streamed {
            later(c.start, c.elapsed).max(later(start, a.elapsed))
        } else {
            later(start, a.elapsed)
        };
        out.push(SpanOut {
            trace_id: c.ctx.trace_id,
            span_id: c.ctx.attempt_span(a.number),
            parent: Some(c.ctx.span),
            name: format!("{op} {}", m.upstream),
            server: false,
            start,
            end,
            error: (!ok && a.outcome != AttemptOutcome::Cancelled)
                .then(|| a.outcome.as_str().to_string()),
            attributes: attrs,
        });
    }
    out
}
