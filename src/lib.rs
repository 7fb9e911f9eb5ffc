//! Cascade: an OpenAI-compatible LLM gateway that runs each request down a
//! fallback chain of model tiers.
//!
//! Data flows one way: `server` -> `routing` -> `chain` -> `providers`, with
//! `config`, `api`, `error`, `cost` and `metrics` as leaves used by all.

pub mod api;
pub mod budget;
pub mod chain;
pub mod config;
pub mod cost;
pub mod error;
pub mod header_names;
pub mod ledger;
pub mod metrics;
pub mod outcome;
pub mod providers;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod shared;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod worker;

pub use server::{app, AppState};
pub mod cli;
