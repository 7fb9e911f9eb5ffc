//! The commands behind the binary: `serve` and `check`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, ProviderKind};
use crate::cost::Usd;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server::{self, AppState};

/// Print the cost report from the ledger the config names.
pub fn report(path: &Path, since: &str) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let window = match crate::ledger::Window::parse(since) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(ledger) = &cfg.ledger.store else {
        eprintln!(
            "{}: ledger.path is empty: there is no ledger to report from",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    match crate::ledger::report_at(ledger, window, crate::ledger::time::now_ms()) {
        Ok(r) => {
            print!("{}", crate::ledger::render_table(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Validate and describe a config. Exit 1 when it is invalid.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            print!("{}", describe(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn price(nanos_per_mtok: u64) -> String {
    Usd::from_femto(i128::from(nanos_per_mtok) * 1_000_000).to_string()
}

/// The human summary `check` prints.
pub fn describe(cfg: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "config {} is valid", cfg.path.display());
    let _ = writeln!(s, "\nproviders:");
    for p in &cfg.providers {
        let _ = writeln!(
            s,
            "  {:<16} kind={:<9} {}{}{}",
            p.name,
            p.kind.as_str(),
            if p.base_url.is_empty() {
                "(in-process)".to_string()
            } else {
                p.base_url.clone()
            },
            if p.key.is_some() { "  key=set" } else { "" },
            if p.enabled { "" } else { "  DISABLED" },
        );
        if let ProviderKind::Mock(m) = &p.kind {
            let _ = writeln!(
                s,
                "  {:<16} latency={}ms chunk_delay={}ms fail_rate={} fail_status={}",
                "",
                m.latency.as_millis(),
                m.chunk_delay.as_millis(),
                m.fail_rate,
                m.fail_status
            );
        }
    }
    let _ = writeln!(s, "\nmodels (USD per Mtok in/out):");
    for m in &cfg.models {
        let _ = writeln!(
            s,
            "  {:<16} {}:{}  in={} out={}{}{}{}{}",
            m.name,
            cfg.providers[m.provider].name,
            m.upstream,
            price(m.prices.input),
            price(m.prices.output),
            if m.prices.per_request > 0 {
                format!(" per_request={}", price(m.prices.per_request))
            } else {
                String::new()
            },
            match (m.context_window, &m.kind) {
                (Some(w), _) => format!(" context={w}"),
                // a context-length fallback may go to it: nothing rules it out
                (None, crate::config::ModelKind::Chat) => " context=unknown".to_string(),
                (None, _) => String::new(),
            },
            if m.max_concurrency > 0 {
                format!(" max_concurrency={}", m.max_concurrency)
            } else {
                String::new()
            },
            if m.enabled { "" } else { "  DISABLED" },
        );
    }
    let unknown: Vec<&str> = cfg
        .models
        .iter()
        .filter(|m| m.context_window.is_none() && !m.kind.is_embedding())
        .map(|m| m.name.as_str())
        .collect();
    if !unknown.is_empty() {
        let _ = writeln!(
            s,
            "  warning: no context_window for {}: after a context-length failure they are still tried",
            unknown.join(", ")
        );
    }
    for t in &cfg.tiers {
        let continues = t.mid_stream == crate::config::MidStream::Continue;
        let prefill = std::iter::once(t)
            .chain(t.chain.iter().map(|&c| &cfg.tiers[c]))
            .flat_map(|t| t.models.iter())
            .any(|&m| cfg.models[m].prefill);
        if continues && !prefill {
            let _ = writeln!(
                s,
                "  warning: tier {} has mid_stream = \"continue\" but no model of its chain has prefill = true: a broken stream ends in stream_interrupted",
                t.name
            );
        }
    }
    let _ = writeln!(s, "\ntiers:");
    for t in &cfg.tiers {
        let chain: Vec<&str> = t
            .chain
            .iter()
            .map(|&c| cfg.tiers[c].name.as_str())
            .collect();
        let models: Vec<&str> = t
            .models
            .iter()
            .map(|&m| cfg.models[m].name.as_str())
            .collect();
        let usable = t.enabled && t.models.iter().any(|&m| cfg.models[m].enabled);
        let _ = writeln!(
            s,
            "  {:<16} {} chain={} models=[{}] strategy={} timeout={} first_token={} retries={}{}{}{}",
            t.name,
            if t.free { "free" } else { "paid" },
            chain.join(" -> "),
            models.join(", "),
            t.strategy.as_str(),
            t.timeout,
            t.first_token_timeout,
            t.max_retries,
            t.hedge.map(|h| format!(" {h}")).unwrap_or_default(),
            t.escalate.map(|e| format!(" escalate_after={} to={}", e.after, cfg.tiers[e.to].name)).unwrap_or_default(),
            if usable { "" } else { "  SKIPPED (nothing enabled)" },
        );
    }
    if !cfg.tasks.is_empty() {
        let _ = writeln!(s, "\ntasks:");
        for t in &cfg.tasks {
            let chain: Vec<&str> = t
                .chain
                .iter()
                .map(|&c| cfg.tiers[c].name.as_str())
                .collect();
            let _ = writeln!(
                s,
                "  {:<16} chain={}{}{}",
                t.name,
                chain.join(" -> "),
                t.max_retries
                    .map(|r| format!(" retries={r}"))
                    .unwrap_or_default(),
                if t.minor {
                    " minor (paid tiers skipped)"
                } else {
                    ""
                },
            );
        }
    }
    speed(&mut s, cfg);
    let p = &cfg.policy;
    let _ = writeln!(
        s,
        "\npolicy: max_total_attempts={} backoff={}..{}ms jitter={} between_tiers={} respect_retry_after={} request_timeout={}ms",
        p.max_total_attempts,
        p.backoff_base.as_millis(),
        p.backoff_max.as_millis(),
        p.backoff_jitter,
        p.backoff_between_tiers,
        p.respect_retry_after,
        cfg.server.request_timeout.as_millis()
    );
    let _ = writeln!(
        s,
        "circuit breaker: {}",
        if cfg.breaker.failure_threshold == 0 {
            "off".to_string()
        } else {
            format!(
                "open after {} failures for {}ms",
                cfg.breaker.failure_threshold,
                cfg.breaker.open.as_millis()
            )
        }
    );
    let _ = writeln!(
        s,
        "ledger: {}",
        cfg.ledger
            .store
            .as_ref()
            .map_or("off".to_string(), |store| format!(
                "{} (flush every {}ms)",
                crate::ledger::label(store),
                cfg.ledger.flush_interval.as_millis()
            ))
    );
    match &cfg.state {
        crate::config::SharedState::Local => {
            let _ = writeln!(s, "state: local (this process only)");
        }
        crate::config::SharedState::Redis { key_prefix, .. } => {
            let _ = writeln!(s, "state: redis (key prefix {key_prefix:?})");
            if matches!(
                cfg.ledger.store,
                Some(crate::ledger::LedgerStore::Sqlite(_)) | None
            ) {
                let _ = writeln!(
                    s,
                    "  warning: state is shared through Redis but the ledger is this replica's own (SQLite): \
                     budget counters missing from Redis are rebuilt from this replica's rows only, and each \
                     replica's report shows its own requests (use [ledger] backend = \"postgres\")"
                );
            }
        }
    }
    if let Some(b) = &cfg.budget {
        let _ = writeln!(
            s,
            "budget: daily={} monthly={} session={} on_exhausted={:?}",
            b.daily.map_or("-".into(), |u| u.to_string()),
            b.monthly.map_or("-".into(), |u| u.to_string()),
            b.session.map_or("-".into(), |u| u.to_string()),
            b.on_exhausted
        );
    }
    let _ = writeln!(
        s,
        "auth: {}",
        if cfg.auth_required() {
            format!(
                "{} gateway key(s), {} named key(s)",
                cfg.gateway_keys.len(),
                cfg.keys.len()
            )
        } else {
            "none (open)".to_string()
        }
    );
    s
}

/// Logs go to stdout through a writer thread, so a request never waits on the
/// terminal or the log collector. The returned guard flushes what is queued when
/// it drops at exit. Should the queue ever fill (a stalled stdout), lines are
/// dropped rather than requests held up (the crate's lossy default).
fn init_logging(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // 16k queued lines: a few seconds of a busy gateway's request logs, and 0.5 MiB
    // of queue where the crate's default (128k) would keep 4 MiB resident.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .thread_name("cascade-log")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    if format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// Run the gateway until SIGTERM/SIGINT; reload on SIGHUP.
pub fn serve(path: &Path, log_format: &str) -> ExitCode {
    let _log_flush = init_logging(log_format);
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // 0 = one worker per core this process may run on (taskset is honoured)
    let workers = match cfg.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // each worker: one thread, its own current-thread runtime and listener
    // (SO_REUSEPORT), so a connection never changes threads; this thread is
    // worker 0 and also runs the background tasks (reload, shared state)
    crate::worker::set_workers(workers);
    let tokio_rt = match worker_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tokio_rt.block_on(run(path, cfg, workers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A worker's runtime: one thread, timers and I/O.
fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A socket bound to `addr` that other workers may bind too.
fn reuseport_socket(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    #[cfg(unix)]
    s.set_reuseport(true)?;
    s.bind(addr)?;
    Ok(s)
}

/// How many connections may wait in the kernel for `accept` (tokio's default).
const BACKLOG: u32 = 1024;

async fn run(path: &Path, cfg: Config, workers: usize) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let listen = cfg.server.listen;
    if !cfg.auth_required() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "no gateway keys configured and listening beyond loopback: anyone who can reach this port can spend your upstream credit");
    }
    server::conn::raise_open_files_limit();
    let runtime = Runtime::build(cfg, &metrics, None)?;
    let state = AppState::new(runtime, Arc::clone(&metrics))?;
    let cannot = |e: std::io::Error| format!("cannot listen on {listen}: {e}");
    // SO_REUSEPORT would let this process share a port another process of
    // the same user already listens on: a plain bind first, so that is
    // "address in use" as it is with one worker
    if workers > 1 && listen.port() != 0 {
        drop(std::net::TcpListener::bind(listen).map_err(cannot)?);
    }
    let listener = if workers == 1 {
        tokio::net::TcpListener::bind(listen)
            .await
            .map_err(cannot)?
    } else {
        reuseport_socket(listen)
            .and_then(|s| s.listen(BACKLOG))
            .map_err(cannot)?
    };
    // with port 0, the others join the port the first one got
    let bound = listener.local_addr().map_err(cannot)?;
    let others = (1..workers)
        .map(|i| reuseport_socket(bound).map(|s| (i, s)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cannot)?;
    tracing::info!(%listen, workers, config = %path.display(), "cascade is serving");
    spawn_reloader(path.to_path_buf(), state.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let threads = others
        .into_iter()
        .map(|(i, socket)| spawn_worker(i, socket, state.clone(), stopped.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let signal = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    server::serve(listener, state.clone(), signal)
        .await
        .map_err(|e| format!("server error: {e}"))?;
    // every worker drains at the same time; wait for the last
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    state.close();
    tracing::info!("ledger flushed; cascade stopped");
    Ok(())
}

/// Worker `i`: a thread with its own runtime, serving its own listener
/// until `stopped` turns true.
fn spawn_worker(
    i: usize,
    socket: tokio::net::TcpSocket,
    state: AppState,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(format!("cascade-worker-{i}"))
        .spawn(move || {
            crate::worker::set_current(i);
            let rt = match worker_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = i, "cannot start the worker's runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match socket.listen(BACKLOG) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(worker = i, "worker cannot listen: {e}");
                        return;
                    }
                };
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = server::serve(listener, state, stop).await {
                    tracing::error!(worker = i, "server error: {e}");
                }
            });
        })
        .map_err(|e| format!("cannot start worker {i}: {e}"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP: load the file off to the side and swap it in; refuse an invalid one.
fn spawn_reloader(path: std::path::PathBuf, state: AppState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let result = Config::load(&path)
                .map_err(|e| e.to_string())
                .and_then(|cfg| Runtime::build(cfg, state.metrics(), Some(&state.runtime())));
            match result {
                Ok(rt) => {
                    state.swap_runtime(rt);
                    state
                        .metrics()
                        .config_reloads
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(config = %path.display(), "config reloaded");
                }
                Err(e) => {
                    state
                        .metrics()
                        .config_reloads
                        .with_label_values(&["rejected"])
                        .inc();
                    tracing::error!(config = %path.display(), "config reload refused, the old config stays in force: {e}");
                }
            }
        }
    });
}

/// What `least_latency`, hedging and `"auto"` timeouts do on each tier
/// that uses them, in words.
fn speed(s: &mut String, cfg: &Config) {
    use crate::config::{HedgeAfter, Limit, Strategy};
    let a = &cfg.policy.adaptive_timeout;
    let mut lines = Vec::new();
    for t in &cfg.tiers {
        if t.strategy == Strategy::LeastLatency {
            lines.push(format!(
                "  {}: least_latency: each request starts at the model with the lowest recent latency (peak EWMA; time to first token for streams), ties within 10% drawn at random; a model with no sample for 10 s gets one probe",
                t.name
            ));
        }
        if let Some(h) = t.hedge {
            let after = match h.after {
                HedgeAfter::Fixed(d) => format!("{}ms", d.as_millis()),
                HedgeAfter::Percentile(q) => format!(
                    "the model's own {} latency (none under 20 samples)",
                    q.as_str()
                ),
            };
            lines.push(format!(
                "  {}: hedges: an attempt with no answer (streams: no first content) after {after} gets one more attempt on the tier's next model, else the next tier's first; at most {} extra in flight; the first answer wins, the others are cancelled",
                t.name, h.max
            ));
        }
        for (key, limit, bounds) in [
            (
                "timeout_ms",
                t.timeout,
                "the whole answer (streams: the longest gap between chunks)",
            ),
            (
                "first_token_timeout_ms",
                t.first_token_timeout,
                "a stream's first content",
            ),
        ] {
            if limit == Limit::Auto {
                lines.push(format!(
                    "  {}: {key} = auto: p{} of the model's recent successful attempts for {bounds}, x{}, clamped to {}..{}ms; {}ms until 20 samples",
                    t.name,
                    a.percentile,
                    a.multiplier,
                    a.min.as_millis(),
                    a.max.as_millis(),
                    a.max.as_millis()
                ));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(s, "\nfaster chains:");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
    }
}
