//! Configuration: load (file + `CASCADE__*` environment) -> raw serde types ->
//! validated runtime types. Every error names the file, the key and the problem.

mod raw;
mod types;
mod validate;

use std::path::Path;

pub use types::*;

impl Config {
    /// Load and validate `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &process_env())
    }

    /// Load and validate `path`, reading overrides and secrets from `env`.
    pub fn load_with_env(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let raw = validate::read_raw(path, env)?;
        validate::validate(path, raw, env)
    }
}

#[cfg(test)]
mod tests;
