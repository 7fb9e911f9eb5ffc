//! SPEC 4.1 and 4.3: from names and headers to a chain.

use serde_json::Value;

use crate::common::gateway::{body, header};
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude, tier, ENV};

/// paid (m-paid, priced) -> cheap (m-cheap) -> local (m-local); task plan
/// starts at cheap; task minor_fix is minor.
async fn gateway() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = format!(
        "{}{}{}{}{}{}{}{}",
        prelude(&up, ""),
        model("m-paid", "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0"),
        model("m-cheap", "input_usd_per_mtok = 0.1"),
        model("m-local", ""),
        tier("paid", &["m-paid"], "max_retries = 2\nfallback = [\"cheap\", \"local\"]"),
        tier("cheap", &["m-cheap"], "max_retries = 2\nfallback = [\"local\"]"),
        tier("local", &["m-local"], "max_retries = 2"),
        "\n[tasks.plan]\ntier = \"cheap\"\n[tasks.minor_fix]\ntier = \"paid\"\nminor = true\n[tasks.review]\ntier = \"paid\"\nchain = [\"paid\", \"local\"]\nmax_retries = 0\n",
    );
    (up, Gateway::start(&cfg, ENV).await)
}

async fn served_by(gw: &Gateway, model: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = gw.chat().json(&body(model));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let tier = resp
        .headers()
        .get("x-cascade-tier")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let chain = resp
        .headers()
        .get("x-cascade-chain")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, tier, chain)
}

#[tokio::test]
async fn names_in_the_body_and_headers() {
    let (up, gw) = gateway().await;
    assert_eq!(served_by(&gw, "plan", &[]).await.1, "cheap");
    assert_eq!(served_by(&gw, "task:plan", &[]).await.1, "cheap");
    assert_eq!(served_by(&gw, "local", &[]).await.1, "local");
    assert_eq!(served_by(&gw, "tier:paid", &[]).await.1, "paid");
    assert_eq!(served_by(&gw, "m-local", &[]).await.1, "model:m-local");
    assert_eq!(
        served_by(&gw, "model:m-cheap", &[]).await.1,
        "model:m-cheap"
    );
    // headers win over the body, the task header over the tier header
    assert_eq!(
        served_by(&gw, "m-local", &[("x-cascade-tier", "paid")])
            .await
            .1,
        "paid"
    );
    assert_eq!(
        served_by(
            &gw,
            "m-local",
            &[("x-cascade-tier", "paid"), ("x-cascade-task", "plan")]
        )
        .await
        .1,
        "cheap"
    );
    // the upstream got its own model name
    assert!(up.requests().iter().all(|r| r.model.starts_with("m-")));
}

#[tokio::test]
async fn unknown_names_are_404_listing_what_is_valid() {
    let (_up, gw) = gateway().await;
    for (model, headers) in [
        ("gpt-4o", vec![]),
        ("tier:plan", vec![]),
        ("model:paid", vec![]),
        ("plan", vec![("x-cascade-task", "nope")]),
        ("plan", vec![("x-cascade-tier", "plan")]),
    ] {
        let mut req = gw.chat().json(&body(model));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 404, "{model} {headers:?}");
        assert_eq!(header(&resp, "x-should-retry"), "false");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"]["code"], "model_not_found");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("plan") && msg.contains("m-local") && msg.contains("cheap"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn chain_header_replaces_the_chain() {
    let (up, gw) = gateway().await;
    up.script("m-cheap", vec![Step::Status(503, "down")]);
    let (status, tier, chain) =
        served_by(&gw, "paid", &[("x-cascade-chain", "cheap, local")]).await;
    assert_eq!(
        (status, tier.as_str(), chain.as_str()),
        (200, "local", "cheap,local")
    );
    assert_eq!(up.count("m-paid"), 0);

    let resp = gw
        .chat()
        .json(&body("paid"))
        .header("x-cascade-chain", "cheap,nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_request");
    assert!(b["error"]["message"].as_str().unwrap().contains("nowhere"));
}

#[tokio::test]
async fn max_retries_header_lowers_never_raises() {
    let (up, gw) = gateway().await;
    up.script("m-paid", vec![Step::Status(503, "down")]);
    let resp = gw
        .chat()
        .json(&body("paid"))
        .header("x-cascade-max-retries", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "cheap");
    assert_eq!(up.count("m-paid"), 1);

    let resp = gw
        .chat()
        .json(&body("paid"))
        .header("x-cascade-max-retries", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-cascade-tier"), "cheap");
    assert_eq!(
        up.count("m-paid"),
        1 + 3,
        "capped at the configured 2 retries"
    );

    for bad in ["-1", "two", "1.5", ""] {
        let resp = gw
            .chat()
            .json(&body("paid"))
            .header("x-cascade-max-retries", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
        let b: Value = resp.json().await.unwrap();
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-cascade-max-retries"));
    }
}

#[tokio::test]
async fn task_chain_and_retries_override_the_tier() {
    let (up, gw) = gateway().await;
    up.script("m-paid", vec![Step::Status(503, "down")]);
    let (status, tier, chain) = served_by(&gw, "review", &[]).await;
    assert_eq!(
        (status, tier.as_str(), chain.as_str()),
        (200, "local", "paid,local")
    );
    assert_eq!(up.count("m-paid"), 1, "the task's max_retries = 0");
    assert_eq!(
        up.count("m-cheap"),
        0,
        "the task's explicit chain skips cheap"
    );
}

#[tokio::test]
async fn minor_requests_skip_paid_tiers() {
    let (up, gw) = gateway().await;
    let (_, tier, chain) = served_by(&gw, "paid", &[("x-cascade-minor", "true")]).await;
    assert_eq!((tier.as_str(), chain.as_str()), ("local", "local"));
    let (_, tier, _) = served_by(&gw, "minor_fix", &[]).await;
    assert_eq!(tier, "local");
    assert_eq!(
        up.count("m-paid") + up.count("m-cheap"),
        0,
        "never a paid call"
    );

    let resp = gw
        .chat()
        .json(&body("m-paid"))
        .header("x-cascade-minor", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "no_eligible_tier");
}

#[tokio::test]
async fn models_endpoint_lists_every_routable_name() {
    let (_up, gw) = gateway().await;
    let v: Value = gw.get_json("/v1/models").await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for name in [
        "plan",
        "minor_fix",
        "review",
        "paid",
        "cheap",
        "local",
        "m-paid",
        "m-cheap",
        "m-local",
    ] {
        assert!(ids.contains(&name), "{name} in {ids:?}");
    }
}
