//! Issue "Embeddings": /v1/embeddings down chains of one vector space,
//! priced per input token, in the ledger and the report by endpoint.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::gateway::{body, header, temp_dir};
use crate::common::upstream::EMBEDDING_DIMS;
use crate::common::{Gateway, Step, Upstream};
use crate::{model, prelude, tier, ENV};

/// te (paid) falls back to te-backup (the same space at "another provider");
/// a chat model beside them.
fn config(up: &Upstream, ledger: &str, extra: &str) -> String {
    let embedding = |price: &str| {
        format!("kind = \"embedding\"\ndimensions = {EMBEDDING_DIMS}\nembedding_space = \"te\"\n{price}")
    };
    [
        crate::with_ledger(prelude(up, "default_max_retries = 0"), ledger, ""),
        model("te", &embedding("input_usd_per_mtok = 1.0")),
        model("te-backup", &embedding("")),
        model("chat-m", ""),
        tier("emb", &["te"], "fallback = [\"emb-backup\"]"),
        tier("emb-backup", &["te-backup"], ""),
        tier("chat", &["chat-m"], ""),
        extra.to_string(),
    ]
    .concat()
}

fn embed(input: Value) -> Value {
    json!({"model": "emb", "input": input})
}

async fn post(gw: &Gateway, body: &Value) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/embeddings", gw.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn embeddings_are_routed_priced_recorded_and_reported() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("ledger.db").display().to_string();
    let gw = Gateway::start(&config(&up, &db, "\n[budget]\ndaily_usd = 1.0\n"), ENV).await;

    let resp = post(&gw, &embed(json!(["a", "b"]))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "emb");
    assert_eq!(header(&resp, "x-cascade-model"), "te");
    // 6 prompt tokens at $1 per million
    assert_eq!(header(&resp, "x-cascade-cost-usd"), "0.000006");
    assert_eq!(header(&resp, "x-cascade-budget-remaining-usd"), "0.999994");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    assert_eq!(up.requests_for("te")[0].uri.path(), "/v1/embeddings");

    // a 500: the same space at the other provider
    up.script("te", vec![Step::Status(500, "down")]);
    let resp = post(&gw, &embed(json!("c"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "emb-backup");
    assert_eq!(header(&resp, "x-cascade-fallback"), "true");
    // a vector of the wrong length: a failed attempt, the same fallback
    up.script(
        "te",
        vec![Step::Json(json!({"data": [{"embedding": [0.5, 0.5]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}))],
    );
    let resp = post(&gw, &embed(json!("d"))).await;
    assert_eq!(header(&resp, "x-cascade-tier"), "emb-backup");
    let failed = gw
        .metric(r#"cascade_attempts_total{model="te",outcome="upstream_error",tier="emb"}"#)
        .await;
    assert_eq!(failed, 2.0);

    // one chat request beside them; then the ledger and the report by endpoint
    gw.chat().json(&body("chat")).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.get_json("/v1/cascade/status").await;
        if s["ledger"]["rows_flushed"].as_u64().unwrap() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the ledger never flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM requests WHERE endpoint = 'embeddings'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 3);
    let report = gw.get_json("/v1/cascade/costs").await;
    assert_eq!(report["by_endpoint"]["embeddings"]["requests"], 3);
    assert_eq!(report["by_endpoint"]["chat"]["requests"], 1);
    assert_eq!(report["by_endpoint"]["embeddings"]["cost_usd"], 0.000006);
}

#[tokio::test]
async fn a_ledger_from_before_endpoints_reads_as_chat() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let db = dir.0.join("old.db").display().to_string();
    {
        // the first schema, with one row
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE requests (id TEXT NOT NULL, ts_ms INTEGER NOT NULL, task TEXT, key TEXT, session TEXT,
                chain TEXT NOT NULL, first_tier TEXT, tier TEXT, model TEXT, free INTEGER NOT NULL, fallback INTEGER NOT NULL,
                escalated INTEGER NOT NULL, status INTEGER NOT NULL, stream INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, savings_nanos INTEGER NOT NULL,
                wasted_nanos INTEGER NOT NULL, latency_ms INTEGER NOT NULL);
             CREATE INDEX requests_ts ON requests (ts_ms);
             CREATE TABLE attempts (request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, tier TEXT NOT NULL, model TEXT NOT NULL,
                attempt INTEGER NOT NULL, outcome TEXT NOT NULL, status INTEGER, elapsed_ms INTEGER NOT NULL);
             CREATE INDEX attempts_ts ON attempts (ts_ms);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        conn.execute(
            "INSERT INTO requests VALUES ('old', ?1, NULL, NULL, NULL, 'chat', 'chat', 'chat', 'chat-m', 1, 0, 0, 200, 0, 1, 1, 5, 0, 0, 1)",
            [now],
        )
        .unwrap();
    }
    // `cascade report` reads it as it is (read-only, not migrated)
    let cfg = config(&up, &db, "");
    let cfg_path = dir.0.join("cascade.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["report", "--config"])
        .arg(&cfg_path)
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("requests               1"), "{table}");
    // the gateway migrates it; the old row is chat
    let gw = Gateway::start(&cfg, ENV).await;
    let report = gw.get_json("/v1/cascade/costs").await;
    assert_eq!(report["by_endpoint"]["chat"]["requests"], 1, "{report}");
}

#[tokio::test]
async fn chat_and_embeddings_never_cross() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&up, "", ""), ENV).await;
    let bad = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 400);
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"]["code"], "invalid_request");
        assert_eq!(b["error"]["param"], "model");
        b["error"]["message"].as_str().unwrap().to_string()
    };
    // chat to an embeddings tier, embeddings to a chat tier
    let m = bad(gw.chat().json(&body("emb")).send().await.unwrap()).await;
    assert!(m.contains("/v1/embeddings"), "{m}");
    let m = bad(post(&gw, &json!({"model": "chat", "input": "x"})).await).await;
    assert!(m.contains("/v1/chat/completions"), "{m}");
    // a chain header that would mix the two
    let resp = gw
        .http
        .post(format!("{}/v1/embeddings", gw.url))
        .header("x-cascade-chain", "emb,chat")
        .json(&embed(json!("x")))
        .send()
        .await
        .unwrap();
    bad(resp).await;
    // bad input names its field
    let resp = post(&gw, &json!({"model": "emb", "input": []})).await;
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["param"], "input");
    assert_eq!(up.requests().len(), 0, "nothing may go upstream");
}

#[test]
fn check_refuses_chains_that_mix_spaces_or_kinds() {
    let dir = temp_dir();
    let base = "[ledger]\npath = \"\"\n[providers.p]\nkind = \"mock\"\n[providers.a]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:1\"\nauth = \"none\"\n\
        [models.e1]\nprovider = \"p\"\nmodel = \"e1\"\nkind = \"embedding\"\nembedding_space = \"one\"\n\
        [models.e2]\nprovider = \"p\"\nmodel = \"e2\"\nkind = \"embedding\"\nembedding_space = \"two\"\n\
        [models.c]\nprovider = \"p\"\nmodel = \"c\"\n";
    let cases = [
        ("[tiers.t1]\nmodels = [\"e1\"]\nfallback = [\"t2\"]\n[tiers.t2]\nmodels = [\"e2\"]\n", "tiers.t1", "space"),
        ("[tiers.t1]\nmodels = [\"e1\", \"c\"]\n", "tiers.t1", "chat"),
        ("[tiers.t1]\nmodels = [\"c\"]\n[tiers.t2]\nmodels = [\"e1\"]\n[tasks.x]\ntier = \"t1\"\nchain = [\"t1\", \"t2\"]\n", "tasks.x", "mixes"),
        ("[models.ea]\nprovider = \"a\"\nmodel = \"ea\"\nkind = \"embedding\"\n", "models.ea.kind", "anthropic"),
        ("[models.cd]\nprovider = \"p\"\nmodel = \"cd\"\ndimensions = 8\n", "models.cd.dimensions", "embedding"),
        ("[tiers.t1]\nmodels = [\"e1\"]\nescalate = { after_consecutive_failures = 2, to = \"t2\" }\n[tiers.t2]\nmodels = [\"c\"]\n", "tiers.t1.escalate.to", "chat"),
        ("[models.e3]\nprovider = \"p\"\nmodel = \"e3\"\nkind = \"embedding\"\nembedding_space = \"one\"\ndimensions = 8\n[models.e4]\nprovider = \"p\"\nmodel = \"e4\"\nkind = \"embedding\"\nembedding_space = \"one\"\ndimensions = 16\n", "dimensions", "length"),
    ];
    for (i, (extra, key, word)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("c{i}.toml"));
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(key) && err.contains(word), "case {i}: {err}");
    }
}
