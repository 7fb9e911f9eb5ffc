//! The binary with several workers (`[server] worker_threads`): each a
//! thread with its own runtime and listener on the port (SO_REUSEPORT).
//! Connections spread over them; a drain, a reload, budgets and circuits
//! reach every one.

use std::path::Path;

use serde_json::Value;

use crate::common::gateway::{get_json, header, temp_dir};
use crate::common::process::{free_port, spawn_with, wait_ready, Proc};
use crate::common::{Step, Upstream};
use crate::lifecycle::{metric, signal, until};
use crate::replicas::nanos;
use crate::{model, prelude_with, tier, with_ledger, UP_KEY};

const WORKERS: &[(&str, &str); 2] = &[("CASCADE__SERVER__WORKER_THREADS", "2"), ("UP_KEY", UP_KEY)];

/// A client that opens a new connection for every request (the kernel
/// picks a worker per connection).
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn start(config: &Path) -> (Proc, String) {
    let port = free_port();
    let gw = spawn_with(config, port, WORKERS);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &url).await;
    (gw, url)
}

async fn ask(http: &reqwest::Client, url: &str, model: &str) -> reqwest::Response {
    http.post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// CPU time (ns) of each of the process's threads, by name and id.
fn thread_cpu(pid: u32) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        out.push((comm.trim().to_string(), tid, ns));
    }
    out
}

/// The worker threads: the main thread (worker 0) and cascade-worker-N.
fn workers_cpu(pid: u32) -> Vec<(u32, u64)> {
    thread_cpu(pid)
        .into_iter()
        .filter(|(name, tid, _)| *tid == pid || name.starts_with("cascade-worker-"))
        .map(|(_, tid, ns)| (tid, ns))
        .collect()
}

/// Two workers: both serve requests (each one's thread does work while
/// connections arrive), and one worker's failures open the circuit for the
/// other; the daily budget is one for both.
#[tokio::test]
async fn several_workers_serve_and_share_circuits_and_budgets() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    let db = dir.0.join("ledger.db").display().to_string();
    std::fs::write(
        &config,
        [
            with_ledger(prelude_with(&up, "", 2), &db, ""),
            model("m1", "input_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0"),
            model("m2", "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0"),
            tier("a", &["m1"], "max_retries = 0\nfallback = [\"b\"]"),
            tier("b", &["m2"], "max_retries = 0"),
            "\n[budget]\ndaily_usd = 100.0\n".to_string(),
        ]
        .concat(),
    )
    .unwrap();
    let (gw, url) = start(&config).await;
    let pid = gw.0.id();
    let before = workers_cpu(pid);
    assert_eq!(before.len(), 2, "two workers: {:?}", thread_cpu(pid));

    let http = fresh_connections();
    let mut spent = 0.0;
    for _ in 0..200 {
        let resp = ask(&http, &url, "b").await;
        assert_eq!(resp.status(), 200);
        spent += header(&resp, "x-cascade-cost-usd").parse::<f64>().unwrap();
    }
    // one budget for every worker
    let status: Value = get_json(&http, &format!("{url}/v1/cascade/status")).await;
    assert_eq!(
        nanos(status["budget"]["spent_today_usd"].as_f64().unwrap()),
        nanos(spent)
    );
    let after = workers_cpu(pid);
    let used: Vec<u64> = after
        .iter()
        .map(|(tid, ns)| ns - before.iter().find(|(t, _)| t == tid).map_or(0, |b| b.1))
        .collect();
    let total: u64 = used.iter().sum();
    for u in &used {
        assert!(*u * 10 > total, "each worker served a share: {used:?}");
    }

    // failures on fresh connections (on either worker) open m1 for both
    up.script("m1", vec![Step::Status(503, "down")]);
    for _ in 0..2 {
        assert_eq!(header(&ask(&http, &url, "a").await, "x-cascade-tier"), "b");
    }
    assert_eq!(up.count("m1"), 2);
    for _ in 0..16 {
        let resp = ask(&http, &url, "a").await;
        assert_eq!(header(&resp, "x-cascade-tier"), "b");
    }
    assert_eq!(up.count("m1"), 2, "no worker tried the open model");
    assert_eq!(
        metric(&http, &url, r#"cascade_circuit_open{model="m1"}"#).await,
        1.0
    );
}

/// SIGTERM: requests in flight on every worker finish; SIGHUP: every worker
/// serves the new config.
#[tokio::test]
async fn a_reload_and_a_drain_reach_every_worker() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    let text = |tier_model: &str| {
        [
            prelude_with(&up, "", 0),
            model("m1", ""),
            model("m2", ""),
            tier("t", &[tier_model], "max_retries = 0"),
        ]
        .concat()
    };
    std::fs::write(&config, text("m1")).unwrap();
    let (gw, url) = start(&config).await;
    let http = fresh_connections();

    std::fs::write(&config, text("m2")).unwrap();
    signal(&gw, "-HUP");
    until("the reload", 10, || async {
        metric(&http, &url, r#"cascade_config_reloads_total{result="ok"}"#).await >= 1.0
    })
    .await;
    for _ in 0..16 {
        let resp = ask(&http, &url, "t").await;
        assert_eq!(
            header(&resp, "x-cascade-model"),
            "m2",
            "every worker has the new config"
        );
    }
    assert_eq!(up.count("m1"), 0);

    // 16 slow requests on 16 connections, then SIGTERM; the kernel hashes
    // each new connection to a worker's listener, so both hold some (all 16
    // on one worker is a 1 in 32,768 chance; the test above shows both serve)
    up.script("m2", vec![Step::Delay(1_500, Box::new(Step::Ok))]);
    let inflight: Vec<_> = (0..16)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let r = ask(&http, &url, "t").await;
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    until("16 requests in flight", 10, || async {
        metric(&reqwest::Client::new(), &url, "cascade_in_flight_requests").await >= 16.0
    })
    .await;
    signal(&gw, "-TERM");
    for h in inflight {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200);
        assert!(body["choices"][0]["message"]["content"].as_str().is_some());
    }
    let mut gw = gw;
    let exit = gw.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A second gateway on a port the first already serves is refused, as with
/// one worker: the workers' SO_REUSEPORT does not let another process in.
#[tokio::test]
async fn a_second_process_on_the_same_port_is_refused() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    let text = [
        prelude_with(&up, "", 0),
        model("m1", ""),
        tier("t", &["m1"], ""),
    ]
    .concat();
    std::fs::write(&config, text).unwrap();
    let (_first, url) = start(&config).await;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("CASCADE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .envs(WORKERS.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // bounded: a second process that did start is killed, and the test fails
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let status = status.expect("the second process started and served");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(ask(&reqwest::Client::new(), &url, "t").await.status(), 200);
}
