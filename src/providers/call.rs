//! What one upstream call takes and gives, shared by every provider: the
//! request, the answer, the error (and its scrubbing), and the reading of an
//! OpenAI-shaped 200 body.

use std::time::Duration;

use ::http::HeaderMap;
use bytes::Bytes;

use crate::api::embeddings::{check_answer, BadAnswer, EmbeddingsBody};
use crate::api::ChatBody;
use crate::config::{Limits, Model, ModelKind};
use crate::cost::Usage;
use crate::secret::Scrubber;

/// One upstream call: the client's body, the model to send it to, and the
/// client headers that may be forwarded.
/// What of the client's request goes upstream besides the body: the
/// allowlisted client headers (picked out as the upstream request is built)
/// and the request id (which replaces any the client sent).
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    pub headers: &'a HeaderMap,
    pub request_id: Option<&'a http::HeaderValue>,
    /// With tracing on: the request's trace and the attempt's number (its
    /// own `traceparent` replaces the client's).
    pub trace: Option<(crate::telemetry::TraceCtx, u32)>,
}

impl<'a> Forward<'a> {
    /// The same, for attempt `number` of a request in `trace`.
    pub fn attempt(self, trace: Option<crate::telemetry::TraceCtx>, number: u32) -> Forward<'a> {
        Forward {
            trace: trace.map(|t| (t, number)),
            ..self
        }
    }
}

pub struct UpstreamRequest<'a> {
    pub body: &'a ChatBody,
    pub model: &'a Model,
    pub forward: Forward<'a>,
    /// How much of the upstream's answer may be held.
    pub limits: Limits,
}

/// A successful non-streaming answer: the body to return as is, and its usage.
#[derive(Debug)]
pub struct Completion {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// What went wrong with an upstream call. Messages are as the upstream sent
/// them until [`UpstreamError::scrubbed`] cleans and shortens them, which the
/// chain does to every error before anything else sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
        /// The error says the context length was exceeded.
        context_length: bool,
        /// The upstream's body, for client errors returned as is.
        body: Bytes,
    },
    #[error("unparseable response: {0}")]
    BadBody(String),
    #[error("error in a 200 response: {0}")]
    ErrorInBody(String),
    /// The stream broke after it started (reset, bad event, idle too long).
    #[error("stream interrupted: {0}")]
    MidStream(String),
    /// A 200 whose answer is not worth serving (`validate_output`).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
}

/// Upstream messages are kept this short in attempt lists and logs.
pub const MESSAGE_MAX: usize = 300;

impl UpstreamError {
    /// Every credential the gateway holds removed from what the upstream
    /// sent (messages and a passed-through body), then messages cut short.
    pub fn scrubbed(self, s: &Scrubber) -> UpstreamError {
        let cut = |m: String| s.clean_cut(m, MESSAGE_MAX);
        match self {
            UpstreamError::Timeout => UpstreamError::Timeout,
            UpstreamError::Connect(m) => UpstreamError::Connect(cut(m)),
            UpstreamError::Status {
                status,
                message,
                retry_after,
                context_length,
                body,
            } => UpstreamError::Status {
                status,
                message: cut(message),
                retry_after,
                context_length,
                body: s.clean_bytes(body),
            },
            UpstreamError::BadBody(m) => UpstreamError::BadBody(cut(m)),
            UpstreamError::ErrorInBody(m) => UpstreamError::ErrorInBody(cut(m)),
            UpstreamError::MidStream(m) => UpstreamError::MidStream(cut(m)),
            UpstreamError::InvalidOutput(m) => UpstreamError::InvalidOutput(cut(m)),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether an upstream error message says the prompt did not fit.
pub fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "input is too long",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Classify a complete 200 body: a completion with its usage, an error
/// carried in a 200, or garbage. Only the top level is read (`scan`): the
/// choices go to the client as they came.
pub fn parse_completion(body: Bytes) -> Result<Completion, UpstreamError> {
    let not_json = |e: &dyn std::fmt::Display| UpstreamError::BadBody(format!("not JSON: {e}"));
    let top = super::scan::top_level(&body).map_err(|e| not_json(&e))?;
    fn present(v: Option<&[u8]>) -> Option<&[u8]> {
        v.filter(|v| *v != b"null")
    }
    if let Some(err) = present(top.error) {
        let err: serde_json::Value = serde_json::from_slice(err).map_err(|e| not_json(&e))?;
        let msg = crate::api::upstream_error_message(&serde_json::json!({ "error": err }))
            .unwrap_or_else(|| "an error object".into());
        return Err(UpstreamError::ErrorInBody(msg));
    }
    if present(top.choices).is_none() {
        return Err(UpstreamError::BadBody(
            "no 'choices' in the response".into(),
        ));
    }
    let usage = match present(top.usage) {
        Some(u) => serde_json::from_slice::<crate::api::WireUsage>(u)
            .map_err(|e| not_json(&e))?
            .usage(),
        None => None,
    };
    Ok(Completion { usage, body })
}

/// One embeddings call.
pub struct EmbedRequest<'a> {
    pub body: &'a EmbeddingsBody,
    pub model: &'a Model,
    pub forward: Forward<'a>,
    pub limits: Limits,
}

impl EmbedRequest<'_> {
    /// The length every vector must have: the client's `dimensions`, else
    /// the model's configured one.
    pub fn dimensions(&self) -> Option<u32> {
        self.body.dimensions.or(match &self.model.kind {
            ModelKind::Embedding { dimensions, .. } => *dimensions,
            ModelKind::Chat => None,
        })
    }
}

/// An embeddings answer, checked: one vector per input, of the expected
/// length and encoding.
#[derive(Debug)]
pub struct Embeddings {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// Check a 200 body for `req`; a wrong one is a failed attempt.
pub fn parse_embeddings(body: Bytes, req: &EmbedRequest<'_>) -> Result<Embeddings, UpstreamError> {
    match check_answer(&body, req.body.inputs, req.body.encoding, req.dimensions()) {
        Ok(usage) => Ok(Embeddings { body, usage }),
        Err(BadAnswer::Error(m)) => Err(UpstreamError::ErrorInBody(m)),
        Err(BadAnswer::Unreadable(m) | BadAnswer::Vectors(m)) => Err(UpstreamError::BadBody(m)),
    }
}
