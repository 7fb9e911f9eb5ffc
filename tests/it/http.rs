//! SPEC 3 and 5: headers, errors, bodies, auth, what goes upstream, secrets.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::common::gateway::{body, header};
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude, tier, ENV, UP_KEY};

async fn gateway_with(env: &[(&str, &str)], server: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}",
        prelude(&up, "").replace("[server]\n", &format!("[server]\n{server}\n")),
        model(
            "m-paid",
            "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0"
        ),
        model("m-cheap", "input_usd_per_mtok = 0.1"),
        tier(
            "paid",
            &["m-paid"],
            "max_retries = 0\nfallback = [\"cheap\"]"
        ),
        tier("cheap", &["m-cheap"], "max_retries = 0"),
    );
    let mut all: Vec<(&str, &str)> = ENV.to_vec();
    all.extend_from_slice(env);
    (up, Gateway::start(&cfg, &all).await)
}

async fn gateway() -> (Upstream, Gateway) {
    gateway_with(&[], "").await
}

#[tokio::test]
async fn every_response_header_on_success() {
    let (up, gw) = gateway().await;
    up.script("m-paid", vec![Step::Status(503, "down"), Step::Ok]);
    let resp = gw
        .chat()
        .header("x-request-id", "client-id-1")
        .json(&body("paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-request-id"), "client-id-1");
    assert_eq!(header(&resp, "x-cascade-tier"), "cheap");
    assert_eq!(header(&resp, "x-cascade-model"), "m-cheap");
    assert_eq!(header(&resp, "x-cascade-provider"), "up");
    assert_eq!(header(&resp, "x-cascade-fallback"), "true");
    assert_eq!(header(&resp, "x-cascade-chain"), "paid,cheap");
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    assert_eq!(header(&resp, "x-cascade-retries"), "1");
    // 10 prompt tokens at $0.1/Mtok
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0.000001");
    // the paid model would have cost 10 * 1.0 + 5 * 2.0 per Mtok
    assert_eq!(header(&resp, "x-cascade-savings-usd"), "0.000019");
    // the body is the upstream's, as is
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["choices"][0]["message"]["content"], "ok from m-cheap");

    let resp = gw.ask("paid").await;
    assert!(header(&resp, "x-request-id").starts_with("req_"));
    assert_eq!(header(&resp, "x-cascade-fallback"), "false");
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0.00002");
    assert_eq!(header(&resp, "x-cascade-savings-usd"), "0");
}

#[tokio::test]
async fn every_response_header_on_failure() {
    let (up, gw) = gateway().await;
    up.script("m-paid", vec![Step::Status(503, "down")]);
    up.script("m-cheap", vec![Step::Status(500, "down")]);
    let resp = gw.ask("paid").await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().get("x-cascade-tier").is_none());
    assert_eq!(header(&resp, "x-cascade-chain"), "paid,cheap");
    assert_eq!(header(&resp, "x-cascade-attempts"), "2");
    assert_eq!(header(&resp, "x-cascade-retries"), "1");
    assert_eq!(header(&resp, "x-cascade-fallback"), "false");
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0");
    assert_eq!(header(&resp, "x-should-retry"), "false");
    assert!(!header(&resp, "x-request-id").is_empty());
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let (_up, gw) = gateway().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad json", "{not json".into(), "invalid_request"),
        ("no messages", json!({"model": "paid"}).to_string(), "invalid_request"),
        ("empty messages", json!({"model": "paid", "messages": []}).to_string(), "invalid_request"),
        ("stream not bool", json!({"model": "paid", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}).to_string(), "invalid_request"),
    ];
    for (name, raw, code) in cases {
        let resp = gw
            .chat()
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        assert_eq!(header(&resp, "x-should-retry"), "false");
        assert_eq!(header(&resp, "x-cascade-attempts"), "0");
        let b: Value = resp.json().await.unwrap();
        let e = &b["error"];
        assert_eq!(e["code"], code, "{name}");
        assert!(e["message"].is_string() && e.get("type").is_some() && e.get("param").is_some());
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (up, gw) = gateway_with(&[], "max_body_bytes = 1024").await;
    let big = json!({"model": "paid", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let resp = gw.chat().json(&big).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "request_too_large");
    // chunked, without a content-length
    let stream =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())]);
    let resp = gw
        .chat()
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(up.requests().len(), 0);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let (_up, gw) = gateway().await;
    let resp = gw
        .http
        .get(format!("{}/v1/nothing", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "not_found");
    let resp = gw
        .http
        .get(format!("{}/v1/chat/completions", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "method_not_allowed");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = gw
            .http
            .get(format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn gateway_keys_guard_v1() {
    let (_up, gw) = gateway_with(
        &[
            ("CASCADE_API_KEYS", "key-one, key-two"),
            ("CASCADE_ADMIN_KEY", "admin-key"),
        ],
        "",
    )
    .await;
    let resp = gw.ask("paid").await;
    assert_eq!(resp.status(), 401);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_api_key");
    let resp = gw
        .chat()
        .bearer_auth("wrong")
        .json(&body("paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = gw
        .chat()
        .bearer_auth("key-two")
        .json(&body("paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let models = format!("{}/v1/models", gw.url);
    assert_eq!(gw.http.get(&models).send().await.unwrap().status(), 401);
    assert_eq!(
        gw.http
            .get(&models)
            .bearer_auth("key-one")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // x-api-key (as Anthropic's clients send a key) on the client API too
    let with_x_api_key = |key: &'static str| {
        gw.chat()
            .header("x-api-key", key)
            .json(&body("paid"))
            .send()
    };
    assert_eq!(with_x_api_key("key-one").await.unwrap().status(), 200);
    assert_eq!(with_x_api_key("wrong").await.unwrap().status(), 401);
    let listed = gw.http.get(&models).header("x-api-key", "key-two").send();
    assert_eq!(listed.await.unwrap().status(), 200);
    // admin endpoints: 401 without a key, 403 with a chat key
    let status = format!("{}/v1/cascade/status", gw.url);
    let admin_as_x_api_key = gw.http.get(&status).header("x-api-key", "admin-key").send();
    assert_eq!(admin_as_x_api_key.await.unwrap().status(), 401);
    assert_eq!(gw.http.get(&status).send().await.unwrap().status(), 401);
    assert_eq!(
        gw.http
            .get(&status)
            .bearer_auth("key-one")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let s: Value = gw
        .http
        .get(&status)
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["tiers"][0]["name"], "cheap");
    // operational endpoints stay open
    assert_eq!(
        gw.http
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        gw.http
            .get(format!("{}/metrics", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn only_allowlisted_headers_go_upstream() {
    let (up, gw) = gateway().await;
    let resp = gw
        .chat()
        .json(&body("paid"))
        .header("authorization", "Bearer client-key")
        .header("x-api-key", "client-x-key")
        .header("cookie", "session=1")
        .header("x-cascade-max-retries", "0")
        .header("x-custom", "nope")
        .header("user-agent", "my-agent/1.0")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("openai-beta", "assistants=v2")
        .header("x-request-id", "rid-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = &up.requests()[0];
    let h = &r.headers;
    assert_eq!(
        h["authorization"],
        format!("Bearer {UP_KEY}").as_str(),
        "the provider's own auth"
    );
    assert_eq!(
        h["http-referer"], "https://cascade.test",
        "the provider's extra headers"
    );
    assert_eq!(h["user-agent"], "my-agent/1.0");
    assert_eq!(h["openai-beta"], "assistants=v2");
    assert_eq!(h["x-request-id"], "rid-7");
    assert!(h.contains_key("traceparent"));
    assert_eq!(h["content-type"], "application/json");
    for gone in ["x-api-key", "cookie", "x-cascade-max-retries", "x-custom"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(r.uri.query(), Some("api-version=2024-10-21"));
    // the body is the client's, with the upstream model name
    assert_eq!(r.body["model"], "m-paid");
    assert_eq!(r.body["messages"][0]["content"], "hello");
}

#[tokio::test]
async fn every_field_the_client_sends_is_passed_on() {
    let (up, gw) = gateway().await;
    let b = json!({
        "model": "paid",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.25,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "seed": 7,
        "vendor_extension": {"a": [1, 2]}
    });
    let resp = gw.chat().json(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut sent = up.requests()[0].body.clone();
    sent["model"] = json!("paid");
    assert_eq!(sent, b);
}

struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_upstream_secret_never_comes_back_out() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || Buf(Arc::clone(&sink)))
        .finish();
    // tracing caches each callsite's interest process-wide, computed when a
    // thread first reaches it; while a single dispatcher is registered it asks
    // only that thread's default, so a concurrent test (no subscriber) would
    // cache "never" and this test would capture nothing. A second live
    // dispatcher, made first, makes every registration ask all of them.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let (up, gw) = gateway().await;
    let echo = "Incorrect API key provided: sk-upstream-SECRET-4242";
    up.script("m-paid", vec![Step::Status(401, echo)]);
    up.script("m-cheap", vec![Step::Status(500, echo)]);
    let resp = gw.ask("paid").await;
    assert_eq!(resp.status(), 502);
    let headers = format!("{:?}", resp.headers());
    let text = resp.text().await.unwrap();
    assert!(text.contains("[redacted]"), "{text}");
    let metrics = gw.metrics().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("chat completion"),
        "the request was logged: {logs}"
    );
    for (what, s) in [
        ("body", &text),
        ("headers", &headers),
        ("metrics", &metrics),
        ("logs", &logs),
    ] {
        assert!(!s.contains(UP_KEY), "the key leaked in the {what}");
    }
}
