//! After a failed attempt: what comes next. Pure: the policy, the failure,
//! the counts and the clock in, one decision out.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff;
use super::classify::{classify, Verdict};
use crate::config::Policy;
use crate::providers::UpstreamError;

/// What the chain does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try this tier again (its next model in strategy order) after this delay.
    Retry(Duration),
    /// Leave this tier; pause this long before the next tier's first attempt
    /// (only if one follows). `larger_window`: from now on only models with a
    /// larger context window than the one that failed.
    NextTier {
        pause: Duration,
        larger_window: bool,
    },
    /// The client's request is wrong: its upstream answer goes back as is.
    Fatal,
}

/// A failed attempt, as the decision needs it.
pub struct Failed<'a> {
    pub err: &'a UpstreamError,
    /// The attempt was on the first tier actually tried.
    pub first_tier: bool,
    /// Attempts made on this tier so far, this one included.
    pub tier_attempts: u32,
    /// The step's retries.
    pub max_retries: u32,
    /// Attempts made on the whole request so far, this one included.
    pub total: u32,
    /// The tier retries a timed-out attempt (else it falls back at once).
    pub retry_on_timeout: bool,
}

/// `jitter` in [0, 1) spreads the backoff (the caller draws it).
pub fn next(policy: &Policy, f: &Failed<'_>, now: Instant, deadline: Instant, jitter: f64) -> Next {
    let leave = |larger_window| Next::NextTier {
        pause: between_tiers(policy, f.tier_attempts, jitter),
        larger_window,
    };
    match classify(f.err, f.first_tier) {
        Verdict::Fatal => Next::Fatal,
        Verdict::Fallback => leave(false),
        Verdict::ContextLength => leave(true),
        Verdict::Retry => {
            if f.tier_attempts > f.max_retries || f.total >= policy.max_total_attempts {
                return leave(false);
            }
            // a silent tier is left at once unless it asks to be retried
            if matches!(f.err, UpstreamError::Timeout) && !f.retry_on_timeout {
                return leave(false);
            }
            let retry_after = match f.err {
                UpstreamError::Status { retry_after, .. } if policy.respect_retry_after => {
                    *retry_after
                }
                _ => None,
            };
            let now_tier = Next::NextTier {
                pause: Duration::ZERO,
                larger_window: false,
            };
            let delay = match retry_after {
                // longer than we would ever wait: fall back at once
                Some(ra) if ra > policy.backoff_max => return now_tier,
                Some(ra) => ra,
                None => backoff::delay(policy, f.tier_attempts, jitter),
            };
            if now + delay >= deadline {
                // a backoff that would outlast the deadline is not slept
                return now_tier;
            }
            Next::Retry(delay)
        }
    }
}

fn between_tiers(policy: &Policy, tier_attempts: u32, jitter: f64) -> Duration {
    if policy.backoff_between_tiers {
        backoff::delay(policy, tier_attempts.max(1), jitter)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn policy() -> Policy {
        Policy {
            max_total_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_jitter: true,
            backoff_between_tiers: false,
            respect_retry_after: true,
            retry_on_timeout: true,
            default_timeout: Duration::from_secs(60),
            default_first_token_timeout: Duration::from_secs(30),
            default_max_retries: 2,
            limits: crate::config::Limits::default(),
            adaptive_timeout: crate::config::Adaptive::default(),
        }
    }

    fn status(code: u16, retry_after: Option<u64>) -> UpstreamError {
        UpstreamError::Status {
            status: code,
            message: String::new(),
            retry_after: retry_after.map(Duration::from_millis),
            context_length: false,
            body: Bytes::new(),
        }
    }

    fn failed(err: &UpstreamError, tier_attempts: u32, total: u32) -> Failed<'_> {
        Failed {
            err,
            first_tier: true,
            tier_attempts,
            max_retries: 2,
            total,
            retry_on_timeout: true,
        }
    }

    const TIER: Next = Next::NextTier {
        pause: Duration::ZERO,
        larger_window: false,
    };

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_then_fall_back() {
        let p = policy();
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let err = UpstreamError::Timeout;
        // full jitter: jitter 0.5 of base * 2^(n-1)
        let Next::Retry(d1) = next(&p, &failed(&err, 1, 1), now, far, 0.5) else {
            panic!("a timeout is retried")
        };
        let Next::Retry(d2) = next(&p, &failed(&err, 2, 2), now, far, 0.5) else {
            panic!("a second timeout is retried")
        };
        assert!(d2 >= d1 && d2 <= p.backoff_max, "{d1:?} {d2:?}");
        // retries spent on the tier, or on the request: next tier
        assert_eq!(next(&p, &failed(&err, 3, 3), now, far, 0.5), TIER);
        assert_eq!(next(&p, &failed(&err, 1, 10), now, far, 0.5), TIER);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_unless_too_long_or_past_the_deadline() {
        let p = policy();
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let limited = status(429, Some(1500));
        assert_eq!(
            next(&p, &failed(&limited, 1, 1), now, far, 0.0),
            Next::Retry(Duration::from_millis(1500))
        );
        let too_long = status(429, Some(5000));
        assert_eq!(next(&p, &failed(&too_long, 1, 1), now, far, 0.0), TIER);
        let near = now + Duration::from_millis(1000);
        assert_eq!(next(&p, &failed(&limited, 1, 1), now, near, 0.0), TIER);
        // not respected: the backoff instead
        let mut ignoring = policy();
        ignoring.respect_retry_after = false;
        assert!(matches!(
            next(&ignoring, &failed(&limited, 1, 1), now, far, 0.0),
            Next::Retry(d) if d < Duration::from_millis(1500)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_context_length_and_auth() {
        let p = policy();
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let bad = status(400, None);
        assert_eq!(next(&p, &failed(&bad, 1, 1), now, far, 0.0), Next::Fatal);
        let later = Failed {
            first_tier: false,
            ..failed(&bad, 1, 1)
        };
        assert_eq!(next(&p, &later, now, far, 0.0), TIER);
        assert_eq!(
            next(&p, &failed(&status(401, None), 1, 1), now, far, 0.0),
            TIER
        );
        let long = UpstreamError::Status {
            status: 400,
            message: String::new(),
            retry_after: None,
            context_length: true,
            body: Bytes::new(),
        };
        assert_eq!(
            next(&p, &failed(&long, 1, 1), now, far, 0.0),
            Next::NextTier {
                pause: Duration::ZERO,
                larger_window: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_falls_back_at_once_unless_the_tier_retries_it() {
        let p = policy();
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let err = UpstreamError::Timeout;
        let leaving = Failed {
            retry_on_timeout: false,
            ..failed(&err, 1, 1)
        };
        assert_eq!(next(&p, &leaving, now, far, 0.5), TIER);
        assert!(matches!(
            next(&p, &failed(&err, 1, 1), now, far, 0.5),
            Next::Retry(_)
        ));
        // other retryable outcomes keep their retries either way
        let down = status(503, None);
        let still = Failed {
            retry_on_timeout: false,
            ..failed(&down, 1, 1)
        };
        assert!(matches!(next(&p, &still, now, far, 0.5), Next::Retry(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_between_tiers_when_configured() {
        let mut p = policy();
        p.backoff_between_tiers = true;
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let Next::NextTier { pause, .. } =
            next(&p, &failed(&status(404, None), 1, 1), now, far, 0.5)
        else {
            panic!("a 404 falls back")
        };
        assert!(pause > Duration::ZERO && pause <= p.backoff_max);
    }
}
