//! Issue "Deploy and operate": the real binary under SIGTERM and SIGHUP.

use std::process::Command;

use crate::common::process::{free_port, spawn, spawn_with, wait_ready, Proc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::gateway::{body, temp_dir};

pub fn signal(p: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Bounded poll of `check` every 20 ms.
pub async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url).send().await.ok().map(|r| r.status().as_u16())
}

pub async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let Ok(resp) = http.get(format!("{base}/metrics")).send().await else {
        return -1.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

const BASE: &str = r#"
[server]
shutdown_delay_ms = 300
shutdown_grace_ms = 10000
[ledger]
path = ""
[providers.slow]
kind = "mock"
latency_ms = 1200
[providers.streamy]
kind = "mock"
latency_ms = 10
chunk_delay_ms = 150
[models.slow-model]
provider = "slow"
model = "s"
[models.stream-model]
provider = "streamy"
model = "t"
[tiers.slow]
models = ["slow-model"]
[tiers.streaming]
models = ["stream-model"]
"#;

#[tokio::test]
async fn sigterm_lets_in_flight_requests_and_streams_finish() {
    sigterm_drains(&[]).await;
}

/// One worker thread runs on tokio's current-thread scheduler: the same drain.
#[tokio::test]
async fn sigterm_drains_on_one_worker_thread_too() {
    sigterm_drains(&[("CASCADE__SERVER__WORKER_THREADS", "1")]).await;
}

async fn sigterm_drains(env: &[(&str, &str)]) {
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    std::fs::write(&config, BASE).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut gw = spawn_with(&config, port, env);
    wait_ready(&http, &url).await;

    let slow = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .json(&body("slow"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let stream = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let b = json!({"model": "streaming", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]});
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .json(&b)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    until("both requests in flight", 10, || async {
        metric(&http, &url, "cascade_in_flight_requests").await >= 2.0
    })
    .await;
    signal(&gw, "-TERM");
    // not ready at once, while still accepting for shutdown_delay_ms
    until("readyz 503", 5, || async {
        get_status(&http, &format!("{url}/readyz")).await == Some(503)
    })
    .await;

    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("hello"));
    let (status, text) = stream.await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("six"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = gw.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

/// The serving process runs without transparent huge pages (their 2 MiB
/// first-touch zeroing was the streams' latency tail).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_gateway_runs_without_transparent_huge_pages() {
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    std::fs::write(&config, BASE).unwrap();
    let port = free_port();
    let http = reqwest::Client::new();
    let gw = spawn(&config, port);
    wait_ready(&http, &format!("http://127.0.0.1:{port}")).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.0.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}

#[tokio::test]
async fn sighup_reloads_and_refuses_an_invalid_file() {
    let dir = temp_dir();
    let config = dir.0.join("cascade.toml");
    std::fs::write(&config, BASE).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let gw = spawn(&config, port);
    wait_ready(&http, &url).await;
    let ask = |model: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(format!("{url}/v1/chat/completions"))
                .json(&body(model))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(ask("fresh").await, 404);

    // a new tier becomes routable
    let added = format!("{BASE}\n[providers.quick]\nkind = \"mock\"\n[models.quick-model]\nprovider = \"quick\"\nmodel = \"q\"\n[tiers.fresh]\nmodels = [\"quick-model\"]\n");
    std::fs::write(&config, &added).unwrap();
    signal(&gw, "-HUP");
    until("the reload", 10, || async {
        metric(&http, &url, r#"cascade_config_reloads_total{result="ok"}"#).await >= 1.0
    })
    .await;
    assert_eq!(ask("fresh").await, 200);

    // an invalid file is refused; the old config keeps serving
    std::fs::write(&config, "[server]\nlisten = 12\nnonsense = true\n").unwrap();
    signal(&gw, "-HUP");
    until("the refusal", 10, || async {
        metric(
            &http,
            &url,
            r#"cascade_config_reloads_total{result="rejected"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(ask("fresh").await, 200);
    assert_eq!(get_status(&http, &format!("{url}/readyz")).await, Some(200));
}

#[tokio::test]
async fn a_reload_keeps_clients_circuits_and_counters_of_what_did_not_change() {
    use crate::common::gateway::load_config;
    use crate::common::{Gateway, Step, Upstream};
    use crate::{model, prelude_with, tier, ENV};
    use std::sync::Arc;

    let up = Upstream::start().await;
    let base = format!(
        "{}{}{}",
        prelude_with(&up, "", 1),
        model("m1", ""),
        tier("a", &["m1"], "max_retries = 0"),
    );
    let gw = Gateway::start(&base, ENV).await;
    up.script("m1", vec![Step::Status(503, "down")]);
    assert_eq!(gw.ask("a").await.status(), 502); // threshold 1: the circuit opens
    let old = gw.state.runtime();
    let cfg = load_config(&format!("{base}{}", tier("b", &["m1"], "")), ENV);
    gw.state.swap_runtime(
        cascade::runtime::Runtime::build(cfg, gw.state.metrics(), Some(&old)).unwrap(),
    );
    let new = gw.state.runtime();
    let up_idx = |rt: &cascade::runtime::Runtime| {
        rt.config
            .providers
            .iter()
            .position(|p| p.name == "up")
            .unwrap()
    };
    assert!(
        Arc::ptr_eq(&old.clients[up_idx(&old)], &new.clients[up_idx(&new)]),
        "the pooled client is kept"
    );
    assert!(
        Arc::ptr_eq(&old.chain.health[0], &new.chain.health[0]),
        "the model's health is kept"
    );
    // still open after the reload: skipped, no attempt
    let resp = gw.ask("b").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(up.count("m1"), 1);

    // a changed provider gets a new client
    let cfg = load_config(&base.replace("HTTP-Referer", "X-Other"), ENV);
    let newer = cascade::runtime::Runtime::build(cfg, gw.state.metrics(), Some(&new)).unwrap();
    assert!(!Arc::ptr_eq(
        &new.clients[up_idx(&new)],
        &newer.clients[up_idx(&newer)]
    ));
}
