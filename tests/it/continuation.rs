//! SPEC 9.2 `mid_stream = "continue"`: a committed stream that breaks is
//! continued by the next model that takes a prefill, in the same stream.

use serde_json::{json, Value};

use crate::common::gateway::header;
use crate::common::{Gateway, Step, StreamScript, Upstream};
use crate::streaming::{closing_comment, content, read_all, stream_body};
use crate::{model, prelude, tier, ENV};

/// first (m1, `mid_stream = "continue"`) -> second (m2, prefill as given).
async fn continuing_gateway(prefill: bool) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let cfg = [
        prelude(&up, ""),
        model("m1", "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0"),
        model(
            "m2",
            &format!("prefill = {prefill}\ninput_usd_per_mtok = 2.0\noutput_usd_per_mtok = 2.0"),
        ),
        tier(
            "first",
            &["m1"],
            "max_retries = 0\nmid_stream = \"continue\"\ntimeout_ms = 2000\nfallback = [\"second\"]",
        ),
        tier("second", &["m2"], "max_retries = 0"),
    ]
    .concat();
    (up, Gateway::start(&cfg, ENV).await)
}

/// 60 one-word tokens, `t0 ` .. `t59 `.
fn tokens() -> Vec<&'static str> {
    (0..60)
        .map(|i| &*Box::leak(format!("t{i} ").into_boxed_str()))
        .collect()
}

#[tokio::test]
async fn a_cut_stream_is_continued_by_the_next_prefill_model() {
    let (up, gw) = continuing_gateway(true).await;
    let all = tokens();
    let mut cut = StreamScript::text(&all[..40]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    let mut rest = StreamScript::text(&all[40..]);
    rest.usage = Some((100, 20));
    up.script("m2", vec![Step::Stream(rest)]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "first");
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert_eq!(content(&events), all.concat(), "{text}");
    assert!(!text.contains("stream_interrupted"), "{text}");
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    // one stream: every chunk carries the first attempt's id and model
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let ids: std::collections::BTreeSet<String> =
        chunks.iter().map(|c| c["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "{text}");
    assert!(chunks.iter().all(|c| c["model"] == chunks[0]["model"]));
    // no second role chunk
    let roles = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1, "{text}");
    let report = closing_comment(&events);
    assert_eq!(report["served_by"], "first/m1", "{text}");
    assert_eq!(report["continued_by"], "second/m2", "{text}");
    // both attempts are cost: the continuation's 100 + 20 tokens at $2/Mtok
    // and the first's 40 tokens (estimated) at $1/Mtok
    let cost = report["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.000_24, "{text}");
    // the continuation was asked with the partial answer as a final
    // assistant message, in the way vLLM continues it
    let asked = &up.requests_for("m2")[0].body;
    let messages = asked["messages"].as_array().unwrap();
    assert_eq!(
        messages.last().unwrap(),
        &json!({"role": "assistant", "content": all[..40].concat()})
    );
    assert_eq!(asked["continue_final_message"], true);
    assert_eq!(asked["add_generation_prompt"], false);
    // the cut attempt failed; the continuation succeeded
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m1",outcome="success",tier="first"}"#)
            .await,
        0.0
    );
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m2",outcome="success",tier="second"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_a_prefill_model_the_client_gets_stream_interrupted() {
    let (up, gw) = continuing_gateway(false).await;
    let all = tokens();
    let mut cut = StreamScript::text(&all[..40]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert!(text.contains("stream_interrupted"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // nobody was asked
    assert_eq!(up.count("m2"), 0);
}

#[tokio::test]
async fn a_continuation_that_fails_leaves_the_original_error() {
    let (up, gw) = continuing_gateway(true).await;
    let all = tokens();
    let mut cut = StreamScript::text(&all[..40]);
    cut.cut = true;
    up.script("m1", vec![Step::Stream(cut)]);
    // a model that rejects the prefill
    up.script(
        "m2",
        vec![Step::Status(400, "final assistant message not supported")],
    );
    let resp = gw
        .chat()
        .json(&stream_body("first", false))
        .send()
        .await
        .unwrap();
    let events = read_all(resp).await;
    let text = events.join("\n");
    assert!(text.contains("stream_interrupted"), "{text}");
    assert!(!text.contains("final assistant message"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(content(&events), all[..40].concat());
    assert_eq!(up.count("m2"), 1);
    assert!(closing_comment(&events)["continued_by"].is_null());
}
