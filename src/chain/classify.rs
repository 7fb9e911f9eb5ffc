//! Pure classification of an upstream outcome (docs/api.md, attempts, retries and fallback). The chain loop asks;
//! nothing else decides whether to retry or fall back.

use std::time::Duration;

pub use crate::outcome::AttemptOutcome;
use crate::providers::UpstreamError;

/// What the chain does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retry on the same tier, then fall back.
    Retry,
    /// Do not retry this tier; fall back.
    Fallback,
    /// The prompt did not fit: fall back to tiers with a larger context window.
    ContextLength,
    /// The client's request is wrong: return the upstream's answer as is.
    Fatal,
}

/// `first_tier`: the attempt was on the first tier that was actually tried.
pub fn classify(err: &UpstreamError, first_tier: bool) -> Verdict {
    match err {
        UpstreamError::Timeout
        | UpstreamError::Connect(_)
        | UpstreamError::BadBody(_)
        | UpstreamError::ErrorInBody(_)
        | UpstreamError::MidStream(_)
        | UpstreamError::InvalidOutput(_) => Verdict::Retry,
        UpstreamError::Status {
            status,
            context_length,
            ..
        } => match status {
            408 | 429 | 500 | 502 | 503 | 504 | 529 => Verdict::Retry,
            401 | 403 | 404 => Verdict::Fallback,
            400 | 413 if *context_length => Verdict::ContextLength,
            400 | 413 | 422 if first_tier => Verdict::Fatal,
            400 | 413 | 422 => Verdict::Fallback,
            s if *s >= 500 => Verdict::Retry,
            _ => Verdict::Fallback,
        },
    }
}

pub fn outcome(err: &UpstreamError) -> AttemptOutcome {
    match err {
        UpstreamError::Timeout => AttemptOutcome::Timeout,
        UpstreamError::Connect(_) => AttemptOutcome::ConnectError,
        UpstreamError::Status { status: 429, .. } => AttemptOutcome::RateLimited,
        UpstreamError::Status {
            status: 400 | 413 | 422,
            ..
        } => AttemptOutcome::ClientError,
        UpstreamError::Status { status: 408, .. } => AttemptOutcome::Timeout,
        UpstreamError::InvalidOutput(_) => AttemptOutcome::InvalidOutput,
        _ => AttemptOutcome::UpstreamError,
    }
}

/// How an outcome affects the model's health (docs/api.md, model health).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthEffect {
    Success,
    /// Counts toward opening the circuit.
    Failure,
    /// Rests the model for this long (None: the breaker's open_ms).
    RateLimited(Option<Duration>),
    /// Says nothing about the model's health (client-class answers, auth).
    Neutral,
}

pub fn health_effect(err: &UpstreamError) -> HealthEffect {
    match err {
        UpstreamError::Status {
            status: 429,
            retry_after,
            ..
        } => HealthEffect::RateLimited(*retry_after),
        UpstreamError::Status { status, .. } if *status >= 500 || *status == 408 => {
            HealthEffect::Failure
        }
        UpstreamError::Status { .. } => HealthEffect::Neutral,
        // the client's format asked too much: never opens a circuit for everyone
        UpstreamError::InvalidOutput(_) => HealthEffect::Neutral,
        _ => HealthEffect::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn status(code: u16, context_length: bool) -> UpstreamError {
        UpstreamError::Status {
            status: code,
            message: String::new(),
            retry_after: None,
            context_length,
            body: Bytes::new(),
        }
    }

    #[test]
    fn the_spec_table() {
        use Verdict::*;
        let rows: Vec<(UpstreamError, Verdict, Verdict)> = vec![
            (UpstreamError::Timeout, Retry, Retry),
            (UpstreamError::Connect("refused".into()), Retry, Retry),
            (UpstreamError::BadBody("x".into()), Retry, Retry),
            (UpstreamError::ErrorInBody("x".into()), Retry, Retry),
            (status(408, false), Retry, Retry),
            (status(429, false), Retry, Retry),
            (status(500, false), Retry, Retry),
            (status(502, false), Retry, Retry),
            (status(503, false), Retry, Retry),
            (status(504, false), Retry, Retry),
            (status(529, false), Retry, Retry),
            (status(401, false), Fallback, Fallback),
            (status(403, false), Fallback, Fallback),
            (status(404, false), Fallback, Fallback),
            (status(400, true), ContextLength, ContextLength),
            (status(400, false), Fatal, Fallback),
            (status(413, false), Fatal, Fallback),
            (status(422, false), Fatal, Fallback),
        ];
        for (err, first, later) in rows {
            assert_eq!(classify(&err, true), first, "{err} on the first tier");
            assert_eq!(classify(&err, false), later, "{err} on a later tier");
        }
    }

    #[test]
    fn client_answers_never_hurt_health() {
        for code in [400, 413, 422, 401, 404] {
            assert_eq!(health_effect(&status(code, false)), HealthEffect::Neutral);
        }
        for code in [500, 503, 529] {
            assert_eq!(health_effect(&status(code, false)), HealthEffect::Failure);
        }
        assert_eq!(
            health_effect(&UpstreamError::Timeout),
            HealthEffect::Failure
        );
        assert_eq!(
            health_effect(&status(429, false)),
            HealthEffect::RateLimited(None)
        );
    }
}
