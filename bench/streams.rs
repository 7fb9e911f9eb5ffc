//! Streaming benchmark: many concurrent SSE streams, directly and through Cascade.
//!
//! One process plays both ends: an upstream that streams chunks carrying their
//! send time (wall clock, ns), and clients that read them and note the arrival
//! time of each. The same clients run the same streams twice, once against the
//! upstream and once through a `cascade serve` it starts, so the client's and
//! the upstream's own delays are in both figures and the difference is what the
//! gateway adds. Prints one JSON object (read by bench/report.py).
//!
//!   cargo run --release --example streams -- --gateway-bin target/release/cascade [--mode smoke]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/v1/chat/completions";

struct Plan {
    streams: usize,
    chunks: usize,
    interval: Duration,
    ramp: Duration,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn sse(body: &serde_json::Value) -> Vec<u8> {
    format!("data: {body}\n\n").into_bytes()
}

fn delta_chunk(delta: serde_json::Value, finish: Option<&str>) -> Vec<u8> {
    sse(&serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }))
}

/// Reads one HTTP/1.1 request (head and content-length body) off the socket.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut have = buf.len() - end - 4;
            while have < len {
                let n = sock.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += n;
            }
            return Ok(());
        }
    }
}

/// The upstream: every request gets a stream of `chunks` timestamped chunks.
async fn upstream(listener: TcpListener, chunks: usize, interval: Duration) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            if read_request(&mut sock).await.is_err() {
                return;
            }
            let mut head =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                    .to_vec();
            head.extend(delta_chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            ));
            if sock.write_all(&head).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(interval);
            for _ in 0..chunks {
                tick.tick().await;
                let c = delta_chunk(
                    serde_json::json!({"content": format!("ts:{} ", now_ns())}),
                    None,
                );
                if sock.write_all(&c).await.is_err() {
                    return;
                }
            }
            let mut tail = delta_chunk(serde_json::json!({}), Some("stop"));
            tail.extend(sse(&serde_json::json!({
                "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": chunks},
            })));
            tail.extend_from_slice(b"data: [DONE]\n\n");
            let _ = sock.write_all(&tail).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[derive(Default)]
struct Samples {
    delays_ms: Vec<f64>,
    ttft_ms: Vec<f64>,
    failed: usize,
}

/// Finds every complete `ts:<digits> ` in `buf`; returns the timestamps and how
/// many bytes can be dropped (everything before a possibly incomplete marker).
fn scan(buf: &[u8], out: &mut Vec<u128>) -> usize {
    let mut i = 0;
    let mut keep_from = buf.len().saturating_sub(2);
    while let Some(p) = buf[i..].windows(3).position(|w| w == b"ts:") {
        let start = i + p;
        let digits = &buf[start + 3..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == digits.len() {
            keep_from = start; // the marker runs off the end: wait for more
            break;
        }
        if let Ok(ts) = std::str::from_utf8(&digits[..n]).unwrap_or("").parse() {
            out.push(ts);
        }
        i = start + 3 + n;
        keep_from = buf.len().saturating_sub(2).max(i);
    }
    keep_from.min(buf.len())
}

async fn one_stream(addr: SocketAddr, samples: Arc<Mutex<Samples>>) {
    let body = r#"{"model":"s","stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let t0 = now_ns();
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        samples.lock().unwrap().failed += 1;
        return;
    };
    let _ = sock.set_nodelay(true);
    if sock.write_all(req.as_bytes()).await.is_err() {
        samples.lock().unwrap().failed += 1;
        return;
    }
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = vec![0u8; 16 * 1024];
    let mut stamps = Vec::new();
    let mut delays = Vec::new();
    let mut first = None;
    loop {
        let n = match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = now_ns();
        buf.extend_from_slice(&tmp[..n]);
        stamps.clear();
        let drop = scan(&buf, &mut stamps);
        buf.drain(..drop);
        for &ts in &stamps {
            first.get_or_insert(now);
            delays.push(now.saturating_sub(ts) as f64 / 1e6);
        }
    }
    let mut s = samples.lock().unwrap();
    match first {
        Some(f) => s.ttft_ms.push(f.saturating_sub(t0) as f64 / 1e6),
        None => s.failed += 1,
    }
    s.delays_ms.extend(delays);
}

async fn run_streams(addr: SocketAddr, plan: &Plan) -> Samples {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let gap = plan.ramp / plan.streams as u32;
    let mut tasks = Vec::with_capacity(plan.streams);
    for _ in 0..plan.streams {
        tasks.push(tokio::spawn(one_stream(addr, samples.clone())));
        tokio::time::sleep(gap).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(samples)
        .ok()
        .expect("every stream task has ended")
        .into_inner()
        .unwrap()
}

fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p / 100.0) as usize).min(v.len() - 1);
    Some((v[i] * 1000.0).round() / 1000.0)
}

fn mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

fn gateway_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "{listen}"
[circuit_breaker]
failure_threshold = 0
[ledger]
path = ""
[providers.up]
kind = "openai"
base_url = "http://{upstream}/v1"
auth = "none"
[models.s]
provider = "up"
model = "s"
[tiers.t]
models = ["s"]
timeout_ms = 60000
first_token_timeout_ms = 30000
"#
    )
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let mut gateway_bin = None;
    let mut gateway_cpus: Option<String> = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gateway-bin" => gateway_bin = args.next().map(PathBuf::from),
            "--mode" => smoke = args.next().as_deref() == Some("smoke"),
            "--gateway-cpus" => gateway_cpus = args.next(),
            _ => {
                eprintln!(
                    "usage: streams --gateway-bin PATH [--gateway-cpus LIST] [--mode full|smoke]"
                );
                std::process::exit(2);
            }
        }
    }
    let gateway_bin = gateway_bin.expect("--gateway-bin PATH is required");
    let plan = if smoke {
        Plan {
            streams: 50,
            chunks: 10,
            interval: Duration::from_millis(50),
            ramp: Duration::from_millis(200),
        }
    } else {
        Plan {
            streams: 1000,
            chunks: 50,
            interval: Duration::from_millis(100),
            ramp: Duration::from_secs(1),
        }
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(upstream(listener, plan.chunks, plan.interval));

    let gw = free_addr();
    let dir = std::env::temp_dir().join(format!("cascade-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("streams.toml");
    std::fs::File::create(&cfg)
        .unwrap()
        .write_all(gateway_config(gw, up).as_bytes())
        .unwrap();
    // pinned through taskset, which execs the gateway (so the pid is its own)
    let mut command = match &gateway_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(&gateway_bin);
            c
        }
        None => Command::new(&gateway_bin),
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let ready = Instant::now();
    while TcpStream::connect(gw).await.is_err() {
        assert!(ready.elapsed() < Duration::from_secs(10), "gateway not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = mib(child.id(), "VmRSS");
    let mut direct = run_streams(up, &plan).await;
    let mut through = run_streams(gw, &plan).await;
    let peak = mib(child.id(), "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let mut out = serde_json::json!({
        "client": "rust",
        "streams": plan.streams,
        "chunks_per_stream": plan.chunks,
        "chunk_interval_ms": plan.interval.as_millis() as u64,
        "chunks_received_direct": direct.delays_ms.len(),
        "chunks_received_gateway": through.delays_ms.len(),
        "streams_failed_direct": direct.failed,
        "streams_failed_gateway": through.failed,
        "gateway_rss_idle_mib": idle,
        "gateway_rss_peak_mib": peak,
    });
    for (key, d, g) in [
        (
            "chunk_delay_ms",
            &mut direct.delays_ms,
            &mut through.delays_ms,
        ),
        ("ttft_ms", &mut direct.ttft_ms, &mut through.ttft_ms),
    ] {
        for p in [50.0, 90.0, 99.0, 99.9] {
            let name = format!("p{p}").replace(".0", "").replace('.', "");
            let (a, b) = (pct(d, p), pct(g, p));
            out[format!("{key}_direct")][&name] = a.into();
            out[format!("{key}_gateway")][&name] = b.into();
            let added = a.zip(b).map(|(a, b)| ((b - a) * 1000.0).round() / 1000.0);
            out[format!("added_{key}")][&name] = added.into();
        }
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
