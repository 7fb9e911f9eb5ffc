//! A scripted upstream: a real HTTP server on 127.0.0.1:0 speaking both the
//! OpenAI Chat Completions API (`/v1/chat/completions`) and Anthropic's
//! Messages API (`/v1/messages`, answers shaped like Anthropic's docs).
//! Each upstream model name has a script of steps, consumed in order (the
//! last one repeats). Every request is recorded, headers included.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub enum Step {
    /// A completion echoing "ok from MODEL".
    Ok,
    /// A completion with this text and usage (prompt, completion).
    Text(&'static str, u64, u64),
    /// An error status with an OpenAI-shaped body holding this message.
    Status(u16, &'static str),
    /// 429 with these headers, e.g. [("retry-after", "2")].
    RateLimited(Vec<(&'static str, &'static str)>),
    /// Never answers.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 whose body is an error object.
    ErrorIn200,
    /// Headers, then the connection is cut.
    Reset,
    /// 400 context_length_exceeded.
    ContextLength,
    /// Wait, then do the inner step.
    Delay(u64, Box<Step>),
    Stream(StreamScript),
    /// 200 with this JSON body, verbatim.
    Json(Value),
    /// 200 with these SSE events, verbatim: (event name or "", data).
    Events(Vec<(&'static str, Value)>),
    /// This status, content type and body, verbatim.
    Raw(u16, &'static str, String),
    /// This status and content type; `head`, then `repeat` up to `times`
    /// times or until the client goes away (bytes sent: `flood_bytes`).
    Flood(Flood),
}

#[derive(Clone, Debug)]
pub struct Flood {
    pub status: u16,
    pub content_type: &'static str,
    pub head: Bytes,
    pub repeat: Bytes,
    pub times: usize,
}

#[derive(Clone, Debug)]
pub struct StreamScript {
    /// Send a role-only chunk at once.
    pub role_first: bool,
    /// (delay in ms before the chunk, text)
    pub chunks: Vec<(u64, &'static str)>,
    /// Cut the connection after the chunks instead of finishing.
    pub cut: bool,
    /// Send a usage chunk (prompt, completion) before [DONE].
    pub usage: Option<(u64, u64)>,
    /// SSE comments sent at once, before anything else.
    pub comments: usize,
}

impl StreamScript {
    pub fn text(chunks: &[&'static str]) -> Self {
        StreamScript {
            role_first: true,
            chunks: chunks.iter().map(|c| (0, *c)).collect(),
            cut: false,
            usage: Some((11, 7)),
            comments: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub model: String,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct Inner {
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    requests: Mutex<Vec<Recorded>>,
    streams_closed_early: AtomicUsize,
    delays_cut: AtomicUsize,
    flood_bytes: AtomicUsize,
}

#[derive(Clone)]
pub struct Upstream {
    pub base_url: String,
    inner: Arc<Inner>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let inner = Arc::new(Inner::default());
        let app = router(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            base_url: format!("http://{addr}/v1"),
            inner,
        }
    }

    /// The same upstream over TLS with this certificate chain and key, at
    /// `https://localhost:PORT/v1`.
    pub async fn start_tls(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Upstream {
        use tower::ServiceExt;
        let inner = Arc::new(Inner::default());
        let app = router(Arc::clone(&inner));
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // a client that refuses the certificate ends here
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: axum::http::Request<hyper::body::Incoming>| {
                            app.clone().oneshot(req.map(Body::new))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        Upstream {
            base_url: format!("https://localhost:{}/v1", addr.port()),
            inner,
        }
    }

    /// The server's root, for providers (Anthropic) that add `/v1` themselves.
    pub fn root(&self) -> String {
        self.base_url.trim_end_matches("/v1").to_string()
    }

    /// Script the answers for an upstream model name.
    pub fn script(&self, model: &str, steps: Vec<Step>) {
        self.inner
            .scripts
            .lock()
            .unwrap()
            .insert(model.to_string(), steps.into());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, model: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.model == model)
            .collect()
    }

    pub fn count(&self, model: &str) -> usize {
        self.requests_for(model).len()
    }

    /// Bytes sent by `Step::Flood` answers so far.
    pub fn flood_bytes(&self) -> usize {
        self.inner.flood_bytes.load(Ordering::SeqCst)
    }

    /// `Step::Delay` answers whose client (the gateway) went away while
    /// they waited.
    pub fn delays_cut(&self) -> usize {
        self.inner.delays_cut.load(Ordering::SeqCst)
    }

    /// Streams whose client (the gateway) went away before the end.
    pub fn streams_closed_early(&self) -> usize {
        self.inner.streams_closed_early.load(Ordering::SeqCst)
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handle))
        .route("/v1/messages", post(handle_messages))
        .route("/v1/embeddings", post(handle_embeddings))
        .with_state(inner)
}

fn next_step(inner: &Inner, model: &str) -> Step {
    let mut scripts = inner.scripts.lock().unwrap();
    match scripts.get_mut(model) {
        Some(q) if q.len() > 1 => q.pop_front().unwrap(),
        Some(q) => q.front().cloned().unwrap_or(Step::Ok),
        None => Step::Ok,
    }
}

/// Record the request; its model's next step.
fn record(inner: &Inner, uri: Uri, headers: HeaderMap, body: &Bytes) -> (String, Step) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_string();
    inner.requests.lock().unwrap().push(Recorded {
        model: model.clone(),
        uri,
        headers,
        body,
        at: Instant::now(),
    });
    let step = next_step(inner, &model);
    (model, step)
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, step) = record(&inner, uri, headers, &body);
    respond(inner, &model, step).await
}

async fn handle_messages(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, step) = record(&inner, uri, headers, &body);
    super::messages::respond(inner, &model, step).await
}

/// `Step::Ok`: one vector of `EMBEDDING_DIMS` floats per input (base64 when
/// asked), 3 prompt tokens an input; other steps as for chat.
async fn handle_embeddings(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (model, step) = record(&inner, uri, headers, &body);
    if !matches!(step, Step::Ok) {
        return respond(inner, &model, step).await;
    }
    let n = match &request["input"] {
        Value::Array(items) if !items.iter().all(Value::is_u64) => items.len(),
        _ => 1,
    };
    let base64 = request["encoding_format"] == "base64";
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let v: Vec<f32> = (0..EMBEDDING_DIMS).map(|j| (i + j) as f32).collect();
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = 3 * n;
    axum::Json(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// The length of the scripted upstream's vectors.
pub const EMBEDDING_DIMS: usize = 4;

fn completion(model: &str, text: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
}

fn error_json(message: &str, code: &str) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}).to_string()
}

pub async fn respond(inner: Arc<Inner>, model: &str, step: Step) -> Response {
    match step {
        Step::Ok => axum::Json(completion(model, &format!("ok from {model}"), 10, 5)).into_response(),
        Step::Text(t, p, c) => axum::Json(completion(model, t, p, c)).into_response(),
        Step::Status(code, msg) => (
            StatusCode::from_u16(code).unwrap(),
            [("content-type", "application/json")],
            error_json(msg, "upstream_says_no"),
        )
            .into_response(),
        Step::RateLimited(headers) => {
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, error_json("slow down", "rate_limit_exceeded")).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        Step::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Step::Garbage => (StatusCode::OK, "<html>definitely not json").into_response(),
        Step::ErrorIn200 => (
            StatusCode::OK,
            [("content-type", "application/json")],
            error_json("the model is overloaded", "overloaded"),
        )
            .into_response(),
        Step::Reset => {
            let s = futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"{\"id\":")),
                Err(std::io::Error::other("reset")),
            ]);
            (StatusCode::OK, Body::from_stream(s)).into_response()
        }
        Step::ContextLength => (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            error_json(
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                "context_length_exceeded",
            ),
        )
            .into_response(),
        Step::Delay(ms, inner_step) => {
            // dropped with the handler when the gateway closes the connection
            struct Cut(Arc<Inner>, bool);
            impl Drop for Cut {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.delays_cut.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            let mut cut = Cut(Arc::clone(&inner), false);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            cut.1 = true;
            Box::pin(respond(inner, model, *inner_step)).await
        }
        Step::Stream(script) => stream_response(inner, model, script),
        Step::Json(v) => axum::Json(v).into_response(),
        Step::Events(events) => {
            let frames: Vec<Bytes> = events
                .iter()
                .map(|(name, data)| sse_frame(name, data))
                .collect();
            let last = frames.last().cloned().unwrap_or_default();
            sse_response(inner, futures_util::stream::iter(frames.into_iter().map(Ok::<Bytes, std::io::Error>)), last)
        }
        Step::Raw(status, content_type, body) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", content_type)],
            body,
        )
            .into_response(),
        Step::Flood(f) => flood(inner, f),
    }
}

fn flood(inner: Arc<Inner>, f: Flood) -> Response {
    let status = StatusCode::from_u16(f.status).unwrap();
    let content_type = f.content_type;
    let counter = Arc::clone(&inner);
    let s = async_stream(move |tx| async move {
        let send = |b: Bytes| {
            counter.flood_bytes.fetch_add(b.len(), Ordering::SeqCst);
            tx.send(Ok(b))
        };
        if send(f.head.clone()).await.is_err() {
            return;
        }
        for _ in 0..f.times {
            if send(f.repeat.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut guard = CloseGuard {
        inner,
        finished: false,
    };
    let mut left = f.times.saturating_add(1);
    let s = s.map(move |item| {
        let g: &mut CloseGuard = &mut guard;
        left -= 1;
        g.finished = left == 0;
        item
    });
    (
        status,
        [("content-type", content_type)],
        Body::from_stream(s),
    )
        .into_response()
}

/// One SSE event: `event: NAME` (when given), then `data: JSON`.
pub fn sse_frame(name: &str, data: &Value) -> Bytes {
    if name.is_empty() {
        Bytes::from(format!("data: {data}\n\n"))
    } else {
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    }
}

struct CloseGuard {
    inner: Arc<Inner>,
    finished: bool,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.inner
                .streams_closed_early
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn chunk(model: &str, delta: Value, finish: Value) -> Bytes {
    let v = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(inner: Arc<Inner>, model: &str, script: StreamScript) -> Response {
    let model = model.to_string();
    let s = async_stream(move |tx| async move {
        for _ in 0..script.comments {
            tx.send(Ok(Bytes::from_static(b": processing\n\n")))
                .await
                .ok();
        }
        if script.role_first {
            tx.send(Ok(chunk(
                &model,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )))
            .await
            .ok();
        }
        for (delay, text) in &script.chunks {
            if *delay > 0 {
                tokio::time::sleep(Duration::from_millis(*delay)).await;
            }
            if tx
                .send(Ok(chunk(&model, json!({"content": text}), Value::Null)))
                .await
                .is_err()
            {
                return;
            }
        }
        if script.cut {
            tx.send(Err(std::io::Error::other("cut"))).await.ok();
            return;
        }
        tx.send(Ok(chunk(&model, json!({}), json!("stop"))))
            .await
            .ok();
        if let Some((p, c)) = script.usage {
            let u = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
            tx.send(Ok(Bytes::from(format!("data: {u}\n\n"))))
                .await
                .ok();
        }
        tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await
            .ok();
    });
    sse_response(inner, s, Bytes::from_static(b"data: [DONE]\n\n"))
}

/// An event-stream response; a stream dropped before `last` was sent
/// counts as closed early.
pub fn sse_response(
    inner: Arc<Inner>,
    s: impl futures_util::Stream<Item = Item> + Send + 'static,
    last: Bytes,
) -> Response {
    let mut guard = CloseGuard {
        inner,
        finished: false,
    };
    let s = s.map(move |item| {
        // capture the whole guard: it must live, and drop, with the body
        let g: &mut CloseGuard = &mut guard;
        if let Ok(b) = &item {
            if *b == last {
                g.finished = true;
            }
        }
        item
    });
    (
        StatusCode::OK,
        [("content-type", "text/event-stream")],
        Body::from_stream(s),
    )
        .into_response()
}

pub type Item = Result<Bytes, std::io::Error>;

/// A stream fed by a task through a channel of one slot, so the producer
/// waits for the consumer (the connection) and notices when it is gone.
pub fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Item> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Item>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(1);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
