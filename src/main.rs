//! The `cascade` binary: parse the command line and hand over to `cli`, the
//! only place that decides the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc in place of glibc malloc: ~15% less user CPU per request
/// (docs/benchmarks-notes.md has the before/after). Transparent huge pages are
/// turned off for the process at start (`no_huge_pages`).
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

/// mimalloc asks for transparent huge pages on its arenas; the kernel then
/// zeroes 2 MiB at a time on first touch, on the request path. Measured with
/// 1,000 streams: per-chunk delay p99 0.24-0.30 ms without them, 0.4-3.5 ms
/// with, and less memory (RSS idle 11 MiB, not 16; 52 MiB with 1,000 streams,
/// not 82; docs/benchmarks-notes.md). Set before anything else runs, so every
/// later page fault is a small one.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments only and
    // changes nothing but this process's page-fault policy.
    unsafe {
        let off: libc::c_ulong = 1;
        let zero: libc::c_ulong = 0;
        libc::prctl(libc::PR_SET_THP_DISABLE, off, zero, zero, zero);
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    match Cli::parse().command {
        Command::Check { config } => cascade::cli::check(&config),
        Command::Serve { config, log_format } => cascade::cli::serve(&config, &log_format),
        Command::Report { config, since } => cascade::cli::report(&config, &since),
    }
}
