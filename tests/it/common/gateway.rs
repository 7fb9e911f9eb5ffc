//! The gateway on an ephemeral port, in-process, with its own metrics
//! registry and its own environment.

use std::sync::Arc;

use cascade::config::{Config, Env};
use cascade::metrics::Metrics;
use cascade::runtime::Runtime;
use cascade::AppState;
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Gateway {
    pub url: String,
    #[allow(dead_code)]
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("cascade-it-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Load and validate a config from TOML text.
pub fn load_config(toml: &str, env: &[(&str, &str)]) -> Config {
    let dir = temp_dir();
    let path = dir.0.join("cascade.toml");
    std::fs::write(&path, toml).unwrap();
    let env: Env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(&path, &env).unwrap_or_else(|e| panic!("config: {e}"))
}

impl Gateway {
    /// Start with a config (TOML text) and environment. `{UP}` in the text
    /// is not replaced here: build the string with format! first.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = temp_dir();
        let path = dir.0.join("cascade.toml");
        std::fs::write(&path, toml).unwrap();
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config::load_with_env(&path, &env).unwrap_or_else(|e| panic!("config: {e}"));
        let metrics = Arc::new(Metrics::new().unwrap());
        let runtime = Runtime::build(cfg, &metrics, None).unwrap();
        let state = AppState::new(runtime, metrics).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        tokio::spawn(async move {
            cascade::server::serve(listener, serve_state, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Gateway {
            url: format!("http://{addr}"),
            state,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            _dir: dir,
        }
    }

    pub fn chat(&self) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/v1/chat/completions", self.url))
    }

    /// POST a chat request for `model` with one user message.
    pub async fn ask(&self, model: &str) -> reqwest::Response {
        self.chat().json(&body(model)).send().await.unwrap()
    }

    /// GET a gateway path (no auth) and parse the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&self.http, &format!("{}{path}", self.url)).await
    }

    pub async fn metrics(&self) -> String {
        get_text(&self.http, &format!("{}/metrics", self.url)).await
    }

    /// The value of one metric series, by its full name with labels in the
    /// order the text format prints them (alphabetical).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// GET `url` (no auth) and parse the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` (no auth), the answer as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

pub fn body(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// The entry of a JSON list whose "name" is `name` (status tiers, models).
pub fn named(list: &Value, name: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list}"))
        .clone()
}

/// Bounded poll until the gateway at `url` reports `n` ledger rows flushed.
pub async fn rows_flushed(http: &reqwest::Client, url: &str, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = get_json(http, &format!("{url}/v1/cascade/status")).await;
        if s["ledger"]["rows_flushed"].as_u64().unwrap() >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger never flushed {n} rows"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One value from a ledger file.
pub fn db_value(path: &str, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}
