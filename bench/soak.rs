//! Soak: a fixed request rate for a long stretch against a gateway whose first
//! two tiers misbehave at random and whose last tier (the built-in mock
//! provider) is healthy. Every request must be answered with content, and the
//! gateway's resident memory and open files at the end must be within 10% of
//! where they stood after the warm-up. Then a spike (500 requests at once)
//! and, after a further minute at the usual rate, the memory and files it left
//! behind.
//!
//! One process plays the faulty upstream and the clients, and runs the
//! gateway binary it is given. Prints one JSON object; exits 1 when a check
//! fails.
//!
//!   cargo run --release --example soak -- --gateway-bin target/release/cascade \
//!       [--rate 40] [--warmup-s 180] [--duration-s 600] [--stream-share 0.3]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// What the faulty upstream does with one request.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Ok,
    Unavailable,
    RateLimited,
    Hang,
    Garbage,
    Reset,
    /// A 200 body far beyond `max_response_bytes`.
    Huge,
    /// An SSE stream whose one event never ends.
    EndlessEvent,
    /// An SSE error event before any content.
    ErrorEvent,
    /// A stream cut after the role chunk, before any content.
    CutBeforeContent,
}

/// Six in fifteen answers are good ones, so the circuit breaker opens
/// sometimes, not all the time, and the faults keep reaching the gateway.
const FAULTS: [Fault; 15] = [
    Fault::Ok,
    Fault::Ok,
    Fault::Ok,
    Fault::Ok,
    Fault::Ok,
    Fault::Ok,
    Fault::Unavailable,
    Fault::RateLimited,
    Fault::Hang,
    Fault::Garbage,
    Fault::Reset,
    Fault::Huge,
    Fault::EndlessEvent,
    Fault::ErrorEvent,
    Fault::CutBeforeContent,
];

fn completion(model: &str) -> Value {
    json!({"id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn sse(items: Vec<Result<Bytes, std::io::Error>>, endless: Option<Bytes>) -> Response {
    let head = futures_util::stream::iter(items);
    let body = match endless {
        Some(b) => {
            Body::from_stream(head.chain(futures_util::stream::repeat_with(move || Ok(b.clone()))))
        }
        None => Body::from_stream(head),
    };
    (
        StatusCode::OK,
        [("content-type", "text/event-stream")],
        body,
    )
        .into_response()
}

async fn upstream(body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("m").to_string();
    let stream = req["stream"] == json!(true);
    let fault = FAULTS[rand::random_range(0..FAULTS.len())];
    let role = frame(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    match fault {
        Fault::Ok if stream => sse(
            vec![
                Ok(role),
                Ok(frame(&chunk(json!({"content": "fine"}), Value::Null))),
                Ok(frame(&chunk(json!({}), json!("stop")))),
                Ok(Bytes::from_static(b"data: [DONE]\n\n")),
            ],
            None,
        ),
        Fault::Ok => axum::Json(completion(&model)).into_response(),
        Fault::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":{\"message\":\"down\"}}",
        )
            .into_response(),
        Fault::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "{\"error\":{\"message\":\"slow\"}}",
        )
            .into_response(),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Fault::Garbage => (StatusCode::OK, "<html>not json").into_response(),
        Fault::Reset => {
            let s = futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"{\"id\":")),
                Err(std::io::Error::other("reset")),
            ]);
            (StatusCode::OK, Body::from_stream(s)).into_response()
        }
        Fault::Huge => {
            let piece = Bytes::from(vec![b'a'; 64 * 1024]);
            let s = futures_util::stream::iter(
                std::iter::once(Bytes::from_static(b"{\"pad\":\""))
                    .chain(std::iter::repeat_n(piece, 64)),
            )
            .map(Ok::<_, std::io::Error>);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(s),
            )
                .into_response()
        }
        Fault::EndlessEvent => sse(
            vec![Ok(role), Ok(Bytes::from_static(b"data: "))],
            Some(Bytes::from(vec![b'x'; 16 * 1024])),
        ),
        Fault::ErrorEvent => sse(
            vec![Ok(frame(
                &json!({"error": {"message": "overloaded", "type": "server_error"}}),
            ))],
            None,
        ),
        Fault::CutBeforeContent => sse(vec![Ok(role), Err(std::io::Error::other("cut"))], None),
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn proc_status(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss_kb, fds)
}

fn config(port: u16, up: u16, dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
request_timeout_ms = 30000

[policy]
max_total_attempts = 6
default_max_retries = 1
backoff_base_ms = 10
backoff_max_ms = 50
max_response_bytes = 262144
max_event_bytes = 65536

[circuit_breaker]
failure_threshold = 5
open_ms = 1000

[ledger]
path = "{ledger}"

[providers.flaky]
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
auth = "none"

[providers.local]
kind = "mock"
latency_ms = 5
chunk_delay_ms = 2

[models.paid-m]
provider = "flaky"
model = "paid"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[models.cheap-m]
provider = "flaky"
model = "cheap"

[models.local-m]
provider = "local"
model = "local"

[tiers.premium]
models = ["paid-m"]
timeout_ms = 1000
first_token_timeout_ms = 1000
fallback = ["budget", "local"]

[tiers.budget]
models = ["cheap-m"]
timeout_ms = 1000
first_token_timeout_ms = 1000
fallback = ["local"]

[tiers.local]
models = ["local-m"]
"#,
        ledger = dir.join("ledger.db").display()
    )
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    streams: AtomicU64,
    fell_back: AtomicU64,
}

/// One request; whether it was answered with content.
async fn one(http: &reqwest::Client, url: &str, stream: bool, tally: &Tally) -> Result<(), String> {
    let body = json!({"model": "premium", "stream": stream,
        "messages": [{"role": "user", "content": "soak"}]});
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if resp
        .headers()
        .get("x-cascade-fallback")
        .is_some_and(|v| v == "true")
    {
        tally.fell_back.fetch_add(1, Ordering::Relaxed);
    }
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let content = if stream {
        if !text.contains("data: [DONE]") || text.contains("stream_interrupted") {
            return Err(format!("stream not finished: {text}"));
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect::<String>()
    } else {
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    if content.is_empty() {
        return Err(format!("no content: {text}"));
    }
    Ok(())
}

/// Send at `rate` per second for `secs`; the failures' first few messages.
async fn load(
    url: &str,
    rate: f64,
    secs: u64,
    stream_share: f64,
    tally: Arc<Tally>,
) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        let stream = rand::random::<f64>() < stream_share;
        let (http, url, tally, errors) = (
            http.clone(),
            url.to_string(),
            Arc::clone(&tally),
            Arc::clone(&errors),
        );
        tally.sent.fetch_add(1, Ordering::Relaxed);
        if stream {
            tally.streams.fetch_add(1, Ordering::Relaxed);
        }
        tasks.spawn(async move {
            match one(&http, &url, stream, &tally).await {
                Ok(()) => tally.answered.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    let mut errs = errors.lock().unwrap();
                    if errs.len() < 5 {
                        errs.push(e.chars().take(300).collect());
                    }
                    tally.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let errs = errors.lock().unwrap().clone();
    errs
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(arg(&args, "--gateway-bin", "target/release/cascade"));
    let rate: f64 = arg(&args, "--rate", "40").parse().unwrap();
    // three minutes: long enough for the ledger's SQLite page cache (2 MB
    // at most) to fill, so what grows after it is not a bounded cache
    let warmup: u64 = arg(&args, "--warmup-s", "180").parse().unwrap();
    let duration: u64 = arg(&args, "--duration-s", "600").parse().unwrap();
    let stream_share: f64 = arg(&args, "--stream-share", "0.3").parse().unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/v1/chat/completions", post(upstream));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("cascade-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("soak.toml");
    std::fs::write(&cfg, config(port, up_port, &dir)).unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{base}/v1/chat/completions");
    let start = proc_status(pid);

    let warm = Arc::new(Tally::default());
    let warm_errors = load(&url, rate, warmup, stream_share, Arc::clone(&warm)).await;
    let after_warmup = proc_status(pid);

    // sample the peak while the main run goes
    let peak = Arc::new(AtomicU64::new(after_warmup.0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peak.fetch_max(proc_status(pid).0, Ordering::Relaxed);
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let errors = load(&url, rate, duration, stream_share, Arc::clone(&tally)).await;
    sampler.abort();
    // let idle upstream and client connections time out on both sides
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = proc_status(pid);

    // a spike: 500 requests at once (a third streams), then quiet; the
    // memory it took should go back
    let spike = Arc::new(Tally::default());
    let spike_peak = {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let peak = Arc::new(AtomicU64::new(end.0));
        let sampling = {
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    peak.fetch_max(proc_status(pid).0, Ordering::Relaxed);
                }
            })
        };
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..500 {
            let (http, url, tally) = (http.clone(), url.clone(), Arc::clone(&spike));
            burst.spawn(async move {
                tally.sent.fetch_add(1, Ordering::Relaxed);
                match one(&http, &url, i % 3 == 0, &tally).await {
                    Ok(()) => tally.answered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
        while burst.join_next().await.is_some() {}
        sampling.abort();
        peak.load(Ordering::Relaxed)
    };
    // then a minute of the usual rate: the allocator returns freed memory as
    // it works (an idle process keeps what it holds until its next allocation)
    let after = Arc::new(Tally::default());
    let after_errors = load(&url, rate, 60, stream_share, Arc::clone(&after)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_spike = proc_status(pid);
    let within = |a: f64, b: f64| b <= a * 1.10;
    let rss_ok = within(after_warmup.0 as f64, end.0 as f64);
    let fds_ok = within(after_warmup.1 as f64, end.1 as f64) || end.1 <= after_warmup.1 + 2;
    let all_answered =
        tally.failed.load(Ordering::Relaxed) == 0 && warm.failed.load(Ordering::Relaxed) == 0;
    let out = json!({
        "rate_per_s": rate, "warmup_s": warmup, "duration_s": duration, "stream_share": stream_share,
        "requests": tally.sent.load(Ordering::Relaxed),
        "streams": tally.streams.load(Ordering::Relaxed),
        "answered_with_content": tally.answered.load(Ordering::Relaxed),
        "failed": tally.failed.load(Ordering::Relaxed),
        "fell_back": tally.fell_back.load(Ordering::Relaxed),
        "warmup_failed": warm.failed.load(Ordering::Relaxed),
        "errors": errors, "warmup_errors": warm_errors,
        "rss_kb": {"start": start.0, "after_warmup": after_warmup.0, "peak": peak.load(Ordering::Relaxed), "end": end.0,
            "spike_peak": spike_peak, "after_spike": after_spike.0},
        "open_files": {"start": start.1, "after_warmup": after_warmup.1, "end": end.1, "after_spike": after_spike.1},
        "spike": {"requests": spike.sent.load(Ordering::Relaxed), "answered_with_content": spike.answered.load(Ordering::Relaxed), "failed": spike.failed.load(Ordering::Relaxed),
            "then_requests": after.sent.load(Ordering::Relaxed), "then_failed": after.failed.load(Ordering::Relaxed), "then_errors": after_errors},
        "checks": {"every_request_answered": all_answered, "rss_within_10pct": rss_ok, "open_files_within_10pct": fds_ok},
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    if !(all_answered && rss_ok && fds_ok) {
        std::process::exit(1);
    }
}
