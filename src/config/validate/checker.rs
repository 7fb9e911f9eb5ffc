//! Collects every problem of a config file, with the key it is about, and
//! the small checks the sections share.

use std::time::Duration;

use crate::config::types::*;
use crate::cost::Usd;
use crate::secret::Secret;

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn err(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            problem: problem.into(),
        });
    }

    pub(super) fn name(&mut self, key: &str, name: &str) {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.err(
                key,
                format!("invalid name {name:?}: use only letters, digits, '-' and '_'"),
            );
        }
    }

    pub(super) fn ms(&mut self, key: &str, value: i64) -> Duration {
        if value < 0 {
            self.err(key, format!("must not be negative (got {value})"));
            return Duration::ZERO;
        }
        Duration::from_millis(value as u64)
    }

    /// A duration that must be above zero.
    pub(super) fn positive_ms(&mut self, key: &str, value: i64) -> Duration {
        if value <= 0 {
            self.err(key, format!("must be positive (got {value})"));
            return Duration::from_millis(1);
        }
        Duration::from_millis(value as u64)
    }

    /// A size or count that must be above zero.
    pub(super) fn positive(&mut self, key: &str, value: i64) -> usize {
        match usize::try_from(value) {
            Ok(v) if v > 0 => v,
            _ => {
                self.err(
                    key,
                    format!("must be a positive whole number (got {value})"),
                );
                1
            }
        }
    }

    pub(super) fn count(&mut self, key: &str, value: i64) -> u32 {
        match u32::try_from(value) {
            Ok(v) => v,
            Err(_) => {
                self.err(key, format!("must be a whole number from 0 (got {value})"));
                0
            }
        }
    }

    pub(super) fn usd(&mut self, key: &str, value: f64) -> Usd {
        if !value.is_finite() || value < 0.0 {
            self.err(key, format!("must not be negative (got {value})"));
            return Usd::ZERO;
        }
        Usd::from_dollars(value)
    }

    /// A price per Mtok (or per request) as nano-dollars.
    pub(super) fn price(&mut self, key: &str, value: f64) -> u64 {
        if !value.is_finite() || value < 0.0 {
            self.err(key, format!("must not be negative (got {value})"));
            return 0;
        }
        (value * 1e9).round() as u64
    }

    pub(super) fn secret_from_env(&mut self, key: &str, var: &str, env: &Env) -> Option<Secret> {
        match env.get(var).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                self.err(key, format!("environment variable {var} is unset or empty"));
                None
            }
        }
    }

    /// A store's connection URL, from `url` or from the variable `url_env`
    /// names (one of the two) in `[section]`, for `backend = "name"`.
    pub(super) fn store_url(
        &mut self,
        (section, backend): (&str, &str),
        url: Option<&str>,
        url_env: Option<&str>,
        env: &Env,
    ) -> Option<Secret> {
        match (url, url_env) {
            (Some(_), Some(_)) => {
                self.err(format!("{section}.url"), "set url or url_env, not both");
                None
            }
            (Some(u), None) => Some(Secret::new(u.trim())),
            (None, Some(var)) => self.secret_from_env(&format!("{section}.url_env"), var, env),
            (None, None) => {
                self.err(
                    section,
                    format!("backend = \"{backend}\" needs url or url_env"),
                );
                None
            }
        }
    }
}
