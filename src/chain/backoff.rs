//! Delay before a retry: `base * 2^(n-1)`, capped at `backoff_max`, with
//! optional full jitter. A pure function of the policy, the retry number and
//! a random draw in [0, 1).

use std::time::Duration;

use crate::config::Policy;

/// `n` is the retry number, from 1.
pub fn delay(policy: &Policy, n: u32, draw: f64) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    let exp = policy
        .backoff_base
        .checked_mul(factor)
        .unwrap_or(policy.backoff_max)
        .min(policy.backoff_max);
    if policy.backoff_jitter {
        exp.mul_f64(draw.clamp(0.0, 1.0))
    } else {
        exp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: u64, max: u64, jitter: bool) -> Policy {
        Policy {
            max_total_attempts: 6,
            backoff_base: Duration::from_millis(base),
            backoff_max: Duration::from_millis(max),
            backoff_jitter: jitter,
            backoff_between_tiers: false,
            respect_retry_after: true,
            retry_on_timeout: false,
            default_timeout: Duration::from_secs(60),
            default_first_token_timeout: Duration::from_secs(30),
            default_max_retries: 2,
            limits: crate::config::Limits::default(),
            adaptive_timeout: crate::config::Adaptive::default(),
        }
    }

    #[test]
    fn doubles_then_caps() {
        let p = policy(500, 8000, false);
        let ms: Vec<u128> = (1..=7).map(|n| delay(&p, n, 0.5).as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(delay(&p, 200, 0.5), Duration::from_millis(8000));
    }

    #[test]
    fn fixed_delay_when_base_equals_max() {
        let p = policy(500, 500, false);
        assert!((1..=5).all(|n| delay(&p, n, 0.9) == Duration::from_millis(500)));
    }

    #[test]
    fn full_jitter_scales_the_delay() {
        let p = policy(500, 8000, true);
        assert_eq!(delay(&p, 3, 0.0), Duration::ZERO);
        assert_eq!(delay(&p, 3, 0.5), Duration::from_millis(1000));
    }
}
