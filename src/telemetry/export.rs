//! Export: a finished request's spans, handed over through a bounded queue
//! (full: dropped and counted, never waited for) to a background task that
//! batches them and POSTs OTLP/HTTP protobuf to `.../v1/traces`. A failed
//! export is dropped and counted too, with one warning per outage.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use prost::Message;
use tokio::sync::mpsc;

/// Requests waiting for export; past this, spans are dropped (counted).
const QUEUE: usize = 2048;
/// Requests per POST at most ...
const BATCH: usize = 256;
/// ... and the longest a span waits for its batch.
const BATCH_WAIT: Duration = Duration::from_millis(500);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// A span, ready to encode (built off the request path, in the export task).
pub struct SpanOut {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    /// Server (the request) or client (an attempt).
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub error: Option<String>,
    pub attributes: Vec<(&'static str, Attr)>,
}

pub enum Attr {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// What the export task turns into spans: `build`, run off the request
/// path, makes `count` of them.
pub struct Job {
    pub count: usize,
    pub build: Box<dyn FnOnce() -> Vec<SpanOut> + Send>,
}

/// After a failed export, how long batches are dropped without being built.
const RETRY_AFTER: Duration = Duration::from_secs(1);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Exporter {
    tx: mpsc::Sender<Job>,
    /// Taken by the first `submit` (inside the runtime), which starts the task.
    pending: Mutex<Option<(mpsc::Receiver<Job>, Uploader)>>,
    started: Once,
    dropped: IntCounter,
}

struct Uploader {
    url: http::Uri,
    headers: http::HeaderMap,
    client: Client<Https, Full<Bytes>>,
    service: String,
    dropped: IntCounter,
}

impl Exporter {
    pub fn new(
        (url, headers): (&url::Url, &[(String, crate::secret::Secret)]),
        service: &str,
        tls: rustls::ClientConfig,
        dropped: IntCounter,
    ) -> Result<Exporter, String> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: {k:?} is not a header name"))?;
            let mut value = http::HeaderValue::from_str(v.expose()).map_err(|_| {
                format!("OTEL_EXPORTER_OTLP_HEADERS: the value of {k:?} is not valid")
            })?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_secs(2)));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // a silently dead HTTP/2 connection is found and replaced
            .http2_keep_alive_interval(Some(Duration::from_secs(20)))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .build(https);
        let (tx, rx) = mpsc::channel(QUEUE);
        let up = Uploader {
            url: uri,
            headers: map,
            client,
            service: service.to_string(),
            dropped: dropped.clone(),
        };
        Ok(Exporter {
            tx,
            pending: Mutex::new(Some((rx, up))),
            started: Once::new(),
            dropped,
        })
    }

    /// Hand a request's spans (built later by `job`) to the export task;
    /// when its queue is full they are dropped and counted.
    pub fn submit(&self, job: Job) {
        self.started.call_once(|| {
            let taken = self.pending.lock().ok().and_then(|mut p| p.take());
            if let Some((rx, up)) = taken {
                tokio::spawn(up.run(rx));
            }
        });
        if let Err(e) = self.tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            self.dropped.inc_by(job.count as u64);
        }
    }
}

impl Uploader {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut failing = false;
        // after a failed export, batches are dropped unbuilt until then
        let mut resume_at = tokio::time::Instant::now();
        let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
        while let Some(first) = rx.recv().await {
            jobs.push(first);
            let until = tokio::time::Instant::now() + BATCH_WAIT;
            while jobs.len() < BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(j)) => jobs.push(j),
                    _ => break,
                }
            }
            if failing && tokio::time::Instant::now() < resume_at {
                let n: usize = jobs.iter().map(|j| j.count).sum();
                jobs.clear();
                self.dropped.inc_by(n as u64);
                continue;
            }
            // a panic building one request's spans loses them, not the task
            let spans: Vec<SpanOut> =
                jobs.drain(..)
                    .flat_map(|j| {
                        let count = j.count as u64;
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(j.build))
                            .unwrap_or_else(|_| {
                                self.dropped.inc_by(count);
                                tracing::error!("telemetry: building a request's spans panicked");
                                Vec::new()
                            })
                    })
                    .collect();
            let n = spans.len() as u64;
            match self.post(spans).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("telemetry: exporting spans again");
                    }
                    failing = false;
                }
                Err(e) => {
                    self.dropped.inc_by(n);
                    resume_at = tokio::time::Instant::now() + RETRY_AFTER;
                    if !failing {
                        tracing::warn!(error = %e, endpoint = %self.url, "telemetry: spans could not be exported; dropping them until the collector answers");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn post(&self, spans: Vec<SpanOut>) -> Result<(), String> {
        let body = encode(&self.service, spans);
        let mut req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = tokio::time::timeout(POST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // read the answer so the connection goes back to the pool
        let _ = tokio::time::timeout(POST_TIMEOUT, resp.into_body().collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One ExportTraceServiceRequest for a batch, protobuf-encoded.
pub fn encode(service: &str, spans: Vec<SpanOut>) -> Vec<u8> {
    let spans = spans
        .into_iter()
        .map(|s| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: if s.server {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: unix_nanos(s.start),
            end_time_unix_nano: unix_nanos(s.end),
            attributes: s
                .attributes
                .into_iter()
                .map(|(k, v)| {
                    kv(
                        k,
                        match v {
                            Attr::Str(s) => any_value::Value::StringValue(s),
                            Attr::Int(i) => any_value::Value::IntValue(i),
                            Attr::Float(f) => any_value::Value::DoubleValue(f),
                            Attr::Bool(b) => any_value::Value::BoolValue(b),
                        },
                    )
                })
                .collect(),
            status: Some(match s.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status {
                    message: String::new(),
                    code: status::StatusCode::Unset as i32,
                },
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(
                        "service.name",
                        any_value::Value::StringValue(service.to_string()),
                    ),
                    kv(
                        "service.version",
                        any_value::Value::StringValue(env!("CARGO_PKG_VERSION").into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "cascade".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

/// A shared handle (the runtime owns it; a reload builds a new one).
pub type Shared = Arc<Exporter>;
