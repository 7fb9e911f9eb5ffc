//! Issue "Hardening", at the connection level: on the release binary's
//! code (`cascade serve` as a child process), idle and slow connections,
//! `max_connections`, and a client that stops reading a stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::gateway::body;
use crate::common::process::open_files;
use crate::common::{Step, StreamScript, Upstream};
use crate::hardening::{stream_body, Bin};
use crate::{model, prelude, tier, ENV};

/// A raw connection that has sent `bytes`.
async fn connect(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Read until the peer closes; what was read. Bounded: 20 s.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the gateway never closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";

/// Raise this process's soft open-files limit to its hard one; the hard one.
fn raise_own_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_max
}

#[tokio::test]
async fn a_thousand_idle_connections_leave_the_gateway_answering() {
    let hard = raise_own_open_files_limit();
    // 1,100 where the hard limit allows it (it does on every machine we know;
    // a hard limit of 1,024 leaves nothing to raise, and fewer connections)
    let n: usize = if hard >= 1400 {
        1100
    } else {
        (hard as usize).saturating_sub(300)
    };
    let up = Upstream::start().await;
    // the gateway starts with a soft limit of 1,024 open files (spawn_logged)
    let cfg = [
        prelude(&up, "").replace("[server]", "[server]\nheader_read_timeout_ms = 60000"),
        model("m", ""),
        tier("t", &["m"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect(gw.addr, PARTIAL_HEAD).await);
    }
    // every one of them is accepted (they would sit in the kernel's queue,
    // and the gateway with them, under the soft limit)...
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_files(gw.pid()) < n {
        assert!(Instant::now() < deadline, "connections were not accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the gateway still answers
    let resp = gw
        .http
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw.chat().json(&body("t")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    if hard > 1024 {
        assert!(gw.log().contains("raised the soft open-files limit"));
    }
    drop(held);
}

#[tokio::test]
async fn slow_heads_idle_connections_and_slow_bodies_are_closed() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "")
            .replace("request_timeout_ms = 10000", "request_timeout_ms = 1000")
            .replace(
                "[server]",
                "[server]\nheader_read_timeout_ms = 500\nkeep_alive_timeout_ms = 800",
            ),
        model("m", ""),
        tier("t", &["m"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;

    // a head that never ends: closed, unanswered
    let mut slow = connect(gw.addr, PARTIAL_HEAD).await;
    // a connection that says nothing at all: closed
    let mut mute = connect(gw.addr, b"").await;
    // a request answered, then the connection left idle: closed
    let mut idle = connect(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // a body that never arrives: 408 request_timeout, then closed
    let mut body = connect(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"",
    )
    .await;

    assert_eq!(read_to_close(&mut slow).await, "");
    assert_eq!(read_to_close(&mut mute).await, "");
    let answered = read_to_close(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let timed_out = read_to_close(&mut body).await;
    assert!(timed_out.starts_with("HTTP/1.1 408"), "{timed_out}");
    assert!(timed_out.contains("\"request_timeout\""), "{timed_out}");
}

#[tokio::test]
async fn beyond_max_connections_only_the_ops_endpoints_answer() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "").replace(
            "[server]",
            "[server]\nmax_connections = 8\nheader_read_timeout_ms = 60000",
        ),
        model("m", ""),
        tier("t", &["m"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    // wait_ready's pooled connection holds one of the 8: let it go
    drop(gw.http.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(gw.addr, PARTIAL_HEAD).await);
    }
    // the reserved connections: probes and scrapes answer, the API is 503
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&body("t"))
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            let b: Value = resp.json().await.unwrap();
            assert_eq!(b["error"]["code"], "overloaded");
            break;
        }
        // a connection of wait_ready's may still hold a regular slot
        assert!(Instant::now() < deadline, "never saturated");
        held.push(connect(gw.addr, PARTIAL_HEAD).await);
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = http.get(format!("{}{path}", gw.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    // the held connections go: the API answers again
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&body("t"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the API never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_dropped_and_the_upstream_cancelled() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "").replace("[server]", "[server]\nstream_write_timeout_ms = 500"),
        model(
            "m-big",
            "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0",
        ),
        tier("big", &["m-big"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    // 80 MB of content, far more than the socket buffers hold
    let piece: &'static str = Box::leak("a".repeat(4096).into_boxed_str());
    let mut script = StreamScript::text(&[]);
    script.chunks = vec![(0, piece); 20_000];
    up.script("m-big", vec![Step::Stream(script)]);
    let request = stream_body("big").to_string();
    let mut client = connect(
        gw.addr,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{request}",
            request.len()
        )
        .as_bytes(),
    )
    .await;
    // the client reads nothing; the gateway gives up on it and cancels the upstream
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.streams_closed_early() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gw.text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cascade_client_disconnects_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let log = gw.log();
    assert!(log.contains("client disconnected mid-stream"), "{log}");
    let _ = client.shutdown().await;
}
