//! Issue "Hardening": each defect found by probing the release binary, on
//! the release binary's code (`cascade serve` as a child process) against a
//! scripted upstream that misbehaves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::common::gateway::{body, temp_dir, TempDir};
use crate::common::process::{free_port, rss, spawn_logged, wait_ready, Proc};
use crate::common::upstream::Flood;
use crate::common::{Step, StreamScript, Upstream};
use crate::{model, prelude, tier, ENV, UP_KEY};

/// The gateway binary on a free port, its log in a file.
pub(crate) struct Bin {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) http: reqwest::Client,
    pub(crate) config: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) dir: TempDir,
}

impl Bin {
    pub(crate) async fn start(cfg: &str, env: &[(&str, &str)]) -> Bin {
        let dir = temp_dir();
        let config = dir.0.join("cascade.toml");
        std::fs::write(&config, cfg).unwrap();
        let log = dir.0.join("gateway.log");
        let port = free_port();
        let proc = spawn_logged(&config, port, env, &log);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&http, &url).await;
        Bin {
            proc,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            url,
            http,
            config,
            log,
            dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub(crate) fn chat(&self) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/v1/chat/completions", self.url))
    }

    pub(crate) async fn text(&self, path: &str) -> String {
        let resp = self.http.get(format!("{}{path}", self.url)).send().await;
        resp.unwrap().text().await.unwrap()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

pub(crate) fn stream_body(model: &str) -> Value {
    let mut b = body(model);
    b["stream"] = json!(true);
    b
}

/// A chat chunk as an upstream sends it.
pub(crate) fn chunk(delta: Value) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

pub(crate) fn frame(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// The key, or a piece of it long enough to matter (not "4242" alone: a
/// random request id may hold it).
fn leak(text: &str) -> Option<&'static str> {
    ["sk-ups", "SECRET", "T-4242"]
        .into_iter()
        .find(|f| text.contains(f))
}

fn assert_clean(what: &str, text: &str) {
    assert!(leak(text).is_none(), "{what} leaks the key: {text}");
}

/// An upstream error body echoing the Authorization header it received,
/// after `pad` characters.
fn echo(pad: usize) -> String {
    json!({"error": {
        "message": format!("{}invalid header Authorization: Bearer {UP_KEY}", "x".repeat(pad)),
        "type": "invalid_request_error", "param": null, "code": "bad_header"
    }})
    .to_string()
}

#[tokio::test]
async fn the_provider_key_reaches_neither_clients_nor_the_log() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "default_max_retries = 0"),
        model("m-echo", ""),
        model("m-down", ""),
        model("m-long", ""),
        model("m-sse-early", ""),
        model("m-sse-late", ""),
        tier("echo", &["m-echo"], ""),
        tier("down", &["m-down"], "fallback = [\"echo\"]"),
        tier("long", &["m-long"], ""),
        tier("early", &["m-sse-early"], ""),
        tier("late", &["m-sse-late"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    up.script("m-echo", vec![Step::Raw(400, "application/json", echo(0))]);
    up.script("m-down", vec![Step::Status(503, "down")]);
    let error_event =
        json!({"error": {"message": format!("rejected: Bearer {UP_KEY}"), "type": "server_error"}});
    up.script(
        "m-sse-early",
        vec![Step::Events(vec![("", error_event.clone())])],
    );
    up.script(
        "m-sse-late",
        vec![Step::Events(vec![
            ("", chunk(json!({"role": "assistant", "content": "hello"}))),
            ("", error_event),
        ])],
    );

    // a 400 passed through as is: first tier, after a fallback, streaming or not
    for (name, stream) in [
        ("echo", false),
        ("echo", true),
        ("down", false),
        ("down", true),
    ] {
        let b = if stream {
            stream_body(name)
        } else {
            body(name)
        };
        let resp = gw.chat().json(&b).send().await.unwrap();
        // the first tier's 400 as is; a later tier's fails the chain (502)
        let want = if name == "echo" { 400 } else { 502 };
        assert_eq!(resp.status(), want, "{name} stream={stream}");
        let text = resp.text().await.unwrap();
        assert_clean(name, &text);
        assert!(text.contains("Bearer [redacted]"), "{text}");
    }

    // an error event before the first content: the 502's attempts
    let resp = gw.chat().json(&stream_body("early")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert_clean("the 502", &text);
    assert!(text.contains("[redacted]"), "{text}");

    // after the first content: the stream_interrupted event
    let resp = gw.chat().json(&stream_body("late")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("hello") && text.contains("stream_interrupted"),
        "{text}"
    );
    assert_clean("the interrupted stream", &text);

    // a key straddling the 300-character cut of a message: wherever the cut
    // falls, no start of the key is left
    for pad in (230..300).step_by(3) {
        up.script(
            "m-long",
            vec![Step::Raw(500, "application/json", echo(pad))],
        );
        let resp = gw.chat().json(&body("long")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        assert_clean(&format!("pad {pad}"), &resp.text().await.unwrap());
    }

    // nor anywhere the gateway writes
    for path in ["/metrics", "/v1/cascade/status", "/v1/cascade/costs"] {
        assert_clean(path, &gw.text(path).await);
    }
    let log = gw.log();
    assert!(log.contains("stream interrupted"), "{log}");
    assert_clean("the log", &log);
}

/// An SSE answer: `head`, then `repeat` until the gateway hangs up.
fn sse_flood(head: String, repeat: Bytes) -> Step {
    Step::Flood(Flood {
        status: 200,
        content_type: "text/event-stream",
        head: Bytes::from(head),
        repeat,
        times: usize::MAX,
    })
}

#[tokio::test]
async fn an_endless_event_fails_the_attempt_within_max_event_bytes() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "max_event_bytes = 65536\ndefault_max_retries = 0"),
        model("m-endless", ""),
        model("m-late", ""),
        model("m-roles", ""),
        model("m-ok", ""),
        tier("endless", &["m-endless"], "fallback = [\"ok\"]"),
        tier("late", &["m-late"], "fallback = [\"ok\"]"),
        tier("roles", &["m-roles"], "fallback = [\"ok\"]"),
        tier("ok", &["m-ok"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    let line = Bytes::from("a".repeat(65536));
    let role = frame(&chunk(json!({"role": "assistant", "content": ""})));
    up.script(
        "m-endless",
        vec![sse_flood(format!("{role}data: "), line.clone())],
    );
    up.script(
        "m-late",
        vec![sse_flood(
            format!(
                "{}data: ",
                frame(&chunk(json!({"role": "assistant", "content": "hi"})))
            ),
            line,
        )],
    );
    up.script("m-roles", vec![sse_flood(String::new(), Bytes::from(role))]);
    up.script("m-ok", vec![Step::Stream(StreamScript::text(&["fine"]))]);

    // before the first content: the attempt fails, the next tier answers
    for name in ["endless", "roles"] {
        let resp = gw.chat().json(&stream_body(name)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-cascade-tier"], "ok", "{name}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("fine"), "{text}");
    }
    // after it: stream_interrupted
    let resp = gw.chat().json(&stream_body("late")).send().await.unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("hi") && text.contains("stream_interrupted"),
        "{text}"
    );
    // the gateway read a bounded amount: the limit plus what sat in buffers
    assert!(
        up.flood_bytes() < 64 << 20,
        "read {} bytes",
        up.flood_bytes()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.streams_closed_early() < 3 {
        assert!(
            Instant::now() < deadline,
            "an endless stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rss(gw.pid()) < 200 << 20, "rss {}", rss(gw.pid()));
}

#[tokio::test]
async fn huge_upstream_bodies_fail_the_attempt_without_filling_memory() {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, "max_response_bytes = 1048576\ndefault_max_retries = 0"),
        model("m-huge", ""),
        model("m-huge-error", ""),
        model("m-ok", ""),
        tier("huge", &["m-huge"], "fallback = [\"ok\"]"),
        tier("huge-error", &["m-huge-error"], "fallback = [\"ok\"]"),
        tier("ok", &["m-ok"], ""),
    ]
    .concat();
    let gw = Bin::start(&cfg, ENV).await;
    // 256 MB each, sent only as fast as the gateway reads
    let flood = |status| {
        Step::Flood(Flood {
            status,
            content_type: "application/json",
            head: Bytes::from_static(b"{\"error\": {\"message\": \""),
            repeat: Bytes::from("a".repeat(65536)),
            times: 4096,
        })
    };
    up.script("m-huge", vec![flood(200)]);
    up.script("m-huge-error", vec![flood(500)]);
    for name in ["huge", "huge-error"] {
        let resp = gw.chat().json(&body(name)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(resp.headers()["x-cascade-tier"], "ok", "{name}");
    }
    assert!(
        up.flood_bytes() < 64 << 20,
        "read {} bytes",
        up.flood_bytes()
    );
    assert!(rss(gw.pid()) < 200 << 20, "rss {}", rss(gw.pid()));
}

#[tokio::test]
async fn absurd_usage_is_estimated_and_never_breaks_budgets_or_the_ledger() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let cfg = [
        crate::with_ledger(prelude(&up, ""), &db, ""),
        model(
            "m-paid",
            "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0",
        ),
        tier("paid", &["m-paid"], ""),
        "\n[budget]\ndaily_usd = 1.0\non_exhausted = \"reject\"\n".to_string(),
    ]
    .concat();
    let absurd = |prompt: Value, completion: Value| {
        Step::Json(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m-paid",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 1}
        }))
    };
    up.script(
        "m-paid",
        vec![
            absurd(json!(15_000_000_000_000_000u64), json!(5)),
            absurd(json!(-5), json!(u64::MAX)),
            absurd(
                json!(15_000_000_000_000_000u64),
                json!(15_000_000_000_000_000u64),
            ),
            Step::Ok,
        ],
    );
    let mut gw = Bin::start(&cfg, ENV).await;
    for _ in 0..3 {
        let resp = gw.chat().json(&body("paid")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-cascade-usage-estimated"], "true");
        let cost: f64 = h["x-cascade-cost-usd"].to_str().unwrap().parse().unwrap();
        assert!(cost < 0.001, "cost {cost}");
        let left: f64 = h["x-cascade-budget-remaining-usd"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(left > 0.99 && left <= 1.0, "remaining {left}");
    }
    let resp = gw.chat().json(&body("paid")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-cascade-usage-estimated").is_none());
    let costs = gw
        .http
        .get(format!("{}/v1/cascade/costs", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(costs.status(), 200);

    // whatever the ledger holds, the gateway starts and sums it
    gw.proc.0.kill().unwrap();
    gw.proc.0.wait().unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for id in ["huge-1", "huge-2", "negative"] {
            let v = if id == "negative" { i64::MIN } else { i64::MAX };
            conn.execute(
                "INSERT INTO requests (id, ts_ms, chain, free, fallback, escalated, status, stream, prompt_tokens, completion_tokens, cost_nanos, savings_nanos, wasted_nanos, latency_ms)
                 VALUES (?1, ?2, 'paid', 0, 0, 0, 200, 0, ?3, ?3, ?3, ?3, ?3, 1)",
                rusqlite::params![id, chrono_ms(), v],
            )
            .unwrap();
        }
    }
    let port = free_port();
    let log = gw.dir.0.join("restart.log");
    gw.proc = spawn_logged(&gw.config, port, ENV, &log);
    gw.url = format!("http://127.0.0.1:{port}");
    wait_ready(&gw.http, &gw.url).await;
    let costs = gw
        .http
        .get(format!("{}/v1/cascade/costs", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(costs.status(), 200);
    // spent: the budget is exhausted, not wrapped round
    let resp = gw.chat().json(&body("paid")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn repeated_keys_forged_request_ids_and_models_per_key() {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}\n[keys.planner]\nkey_env = \"PLANNER_KEY\"\nallowed_tiers = [\"cheap\"]\n[keys.ops]\nkey_env = \"OPS_KEY\"\n",
        prelude(&up, ""),
        model("m-paid", ""),
        model("m-cheap", ""),
        tier("paid", &["m-paid"], "fallback = [\"cheap\"]"),
        tier("cheap", &["m-cheap"], ""),
    );
    let mut env = ENV.to_vec();
    env.extend([("PLANNER_KEY", "pk-planner"), ("OPS_KEY", "pk-ops")]);
    let gw = Bin::start(&cfg, &env).await;

    // a repeated top-level key: 400 naming it, nothing sent upstream
    let raw = r#"{"model": "cheap", "stream": false, "messages": [{"role": "user", "content": "hi"}], "stream": true}"#;
    let resp = gw
        .chat()
        .bearer_auth("pk-ops")
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_request");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"stream\""),
        "{b}"
    );
    assert_eq!(up.requests().len(), 0);

    // a request id that is not short and plain is replaced, and the new one
    // goes upstream; a plain one is kept
    for (sent, kept) in [("x outcome=success key=admin", false), ("run-42_a.b", true)] {
        let resp = gw
            .chat()
            .bearer_auth("pk-ops")
            .header("x-request-id", sent)
            .json(&body("cheap"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id == sent, kept, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{id}"
        );
        let last = up.requests().pop().unwrap();
        assert_eq!(last.headers["x-request-id"], id.as_str());
    }
    assert!(!gw.log().contains("key=admin"));

    // /v1/models: what the key may use
    let ids = |key: &'static str| {
        let req = gw
            .http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(key);
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let planner = ids("pk-planner").await;
    assert!(planner.contains(&"cheap".to_string()), "{planner:?}");
    assert!(planner.contains(&"m-cheap".to_string()), "{planner:?}");
    // "paid" falls back to "cheap" for this key; the paid model itself is not its
    assert!(!planner.contains(&"m-paid".to_string()), "{planner:?}");
    let all = ids("pk-ops").await;
    assert!(
        all.contains(&"paid".to_string()) && all.contains(&"m-paid".to_string()),
        "{all:?}"
    );
}
