//! The `cascade` binary: parse the command line and hand over to `cli`, the
//! only place that decides the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc in place of glibc malloc: malloc/free were ~8% of the gateway's
/// samples under load (docs/benchmarks-notes.md has the before/after).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "An OpenAI-compatible LLM gateway with tiered fallback chains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// Config file (TOML, or YAML by extension).
        #[arg(long, env = "CASCADE_CONFIG", default_value = "config/cascade.toml")]
        config: PathBuf,
        /// Log format: text or json.
        #[arg(long, env = "CASCADE_LOG_FORMAT", default_value = "text")]
        log_format: String,
    },
    /// Validate a config file and print its providers, models, tiers, chains and tasks.
    Check {
        #[arg(long, env = "CASCADE_CONFIG", default_value = "config/cascade.toml")]
        config: PathBuf,
    },
    /// Print the cost report from the ledger.
    Report {
        #[arg(long, env = "CASCADE_CONFIG", default_value = "config/cascade.toml")]
        config: PathBuf,
        /// Window: 24h, 7d or 30d.
        #[arg(long, default_value = "24h")]
        since: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => cascade::cli::check(&config),
        Command::Serve { config, log_format } => cascade::cli::serve(&config, &log_format),
        Command::Report { config, since } => cascade::cli::report(&config, &since),
    }
}
