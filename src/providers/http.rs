//! What the HTTP providers share: one pooled client per provider, the
//! provider's own headers and auth resolved at load, the allowlist of client
//! headers, and the mapping of transport failures and non-2xx answers to
//! `UpstreamError`. Bodies are read up to a limit: an answer up to
//! `policy.max_response_bytes`, an error body up to `ERROR_BODY_MAX`. What an
//! upstream says is scrubbed of credentials by the chain, not here.
//!
//! A plain-HTTP upstream is reached over HTTP/1.1 connections that the
//! request's own task drives (`pool`); an `https://` one through hyper-util's
//! pooled client (HTTP/1.1, and HTTP/2 where TLS negotiates it) with rustls
//! and the webpki roots. It was reqwest: reqwest's own layer parsed the URL
//! twice and ran its redirect policy on every call; without it a request
//! takes 25% fewer instructions (docs/benchmarks-notes.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::call::{Forward, UpstreamError};
use super::egress::{proxy_authorization, tls_config, Connector};
use super::failure::{read_prefix, status_error, transport, ERROR_BODY_MAX};
use super::pool::{Failure, Pool, UpBody};
use crate::config::{Auth, Provider};
use crate::header_names as names;

/// An upstream's answer: status and headers known, body still to read.
pub type Response = http::Response<UpBody>;

/// The client headers that may reach an upstream (docs/api.md). Names built at
/// compile time: a lookup by `&str` parses the name on every call.
pub static FORWARDED_HEADERS: [HeaderName; 7] = [
    http::header::CONTENT_TYPE,
    http::header::ACCEPT,
    http::header::USER_AGENT,
    names::REQUEST_ID,
    names::TRACEPARENT,
    names::TRACESTATE,
    names::OPENAI_BETA,
];

/// Copy the allowlisted headers of `from` into `into`: the first value of
/// each, as a lookup by name gives. Walks the caller's few headers rather than
/// looking each allowed name up.
pub fn copy_forwarded(from: &HeaderMap, into: &mut HeaderMap) {
    for (name, v) in from {
        if FORWARDED_HEADERS.contains(name) && !into.contains_key(name) {
            into.insert(name.clone(), v.clone());
        }
    }
}

/// How long an idle upstream connection stays in the pool: below the
/// keep-alive of common servers and load balancers (nginx 75 s, AWS ALB 60 s),
/// so the gateway, not the upstream, usually closes an idle connection first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub struct HttpUpstream {
    client: Clients,
    uri: Uri,
    /// The kind's own headers, then the provider's `headers`, then auth.
    headers: HeaderMap,
}

/// How requests leave: per worker (`worker::current`), so a worker's upstream
/// connections are driven by its own thread.
enum Clients {
    /// `http://`: HTTP/1.1 on connections the request drives; `host` is the
    /// `Host` header, `absolute`: requests go to a proxy in absolute form.
    Direct {
        pool: Arc<Pool>,
        host: HeaderValue,
        absolute: bool,
    },
    /// `https://`: one hyper-util client per worker.
    Pooled(Vec<Client<HttpsConnector<Connector>, Full<Bytes>>>),
}

/// The `Host` header for `uri`: its host, and its port when not the scheme's
/// default.
fn host_header(uri: &Uri) -> Result<HeaderValue, String> {
    let host = uri.host().ok_or("no host in the URL")?;
    let value = match uri.port_u16() {
        Some(port) if port != 80 => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&value).map_err(|e| e.to_string())
}

/// An endpoint's URI: `url` with the provider's `query` added.
pub fn endpoint_uri(p: &Provider, url: &str) -> Result<Uri, String> {
    let mut url =
        url::Url::parse(url).map_err(|e| format!("providers.{}.base_url: {e}", p.name))?;
    if !p.query.is_empty() {
        url.query_pairs_mut().extend_pairs(p.query.iter());
    }
    url.as_str()
        .parse()
        .map_err(|e| format!("providers.{}.base_url: {e}", p.name))
}

impl HttpUpstream {
    /// `url`: the endpoint (the provider's `query` is added to it);
    /// `defaults`: headers of the provider kind, which the provider's own
    /// `headers` may override; `auth`: how the key is sent.
    pub fn new(p: &Provider, url: &str, defaults: HeaderMap, auth: Auth) -> Result<Self, String> {
        Self::with_pool_idle(p, url, defaults, auth, POOL_IDLE_TIMEOUT)
    }

    /// `new`, with how long an idle connection stays in the pool.
    fn with_pool_idle(
        p: &Provider,
        url: &str,
        defaults: HeaderMap,
        auth: Auth,
        pool_idle: Duration,
    ) -> Result<Self, String> {
        let uri = endpoint_uri(p, url)?;
        let mut headers = defaults;
        for (k, v) in &p.headers {
            headers.insert(k.clone(), v.clone());
        }
        if let Some(key) = &p.key {
            let header = match auth {
                Auth::Bearer => Some(("authorization", format!("Bearer {}", key.expose()))),
                Auth::ApiKey => Some(("api-key", key.expose().to_string())),
                Auth::XApiKey => Some(("x-api-key", key.expose().to_string())),
                Auth::None => None,
            };
            if let Some((name, value)) = header {
                let mut v = HeaderValue::from_str(&value).map_err(|_| {
                    format!("providers.{}: the key is not a valid header value", p.name)
                })?;
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(p.connect_timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            // plain HTTP through a proxy: each request tells the proxy who may pass
            if let Some(auth) = p.proxy.as_ref().and_then(proxy_authorization) {
                headers.insert(http::header::PROXY_AUTHORIZATION, auth);
            }
            let client = Clients::Direct {
                pool: Pool::new(Connector::new(p, tcp)?, pool_idle),
                host: host_header(&uri)
                    .map_err(|e| format!("providers.{}.base_url: {e}", p.name))?,
                absolute: p.proxy.is_some(),
            };
            return Ok(Self {
                client,
                uri,
                headers,
            });
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(p)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(Connector::new(p, tcp)?);
        // The pool's idle timeout only takes effect with a timer (hyper-util
        // has none by default): without it a connection the upstream closed
        // after its own keep-alive would sit in the pool until reused.
        let clients = (0..crate::worker::workers())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(pool_idle)
                    .pool_max_idle_per_host(256)
                    .build(https.clone())
            })
            .collect();
        Ok(Self {
            client: Clients::Pooled(clients),
            uri,
            headers,
        })
    }

    /// POST a JSON body to the endpoint. Resolves once the status is known:
    /// a non-2xx answer (its body read) is an `UpstreamError::Status`.
    pub async fn send(
        &self,
        forward: Forward<'_>,
        body: Bytes,
        stream: bool,
    ) -> Result<Response, UpstreamError> {
        self.send_to(&self.uri, forward, body, stream).await
    }

    /// `send`, to another endpoint of the same provider (same pool, headers
    /// and auth).
    pub async fn send_to(
        &self,
        uri: &Uri,
        forward: Forward<'_>,
        body: Bytes,
        stream: bool,
    ) -> Result<Response, UpstreamError> {
        self.send_with(uri, forward, body, stream, None).await
    }

    /// `send`, with one more client header passed on (Anthropic's
    /// `anthropic-beta`, to anthropic providers only).
    pub async fn send_extra(
        &self,
        forward: Forward<'_>,
        body: Bytes,
        stream: bool,
        extra: Option<(&HeaderName, &HeaderValue)>,
    ) -> Result<Response, UpstreamError> {
        self.send_with(&self.uri, forward, body, stream, extra)
            .await
    }

    async fn send_with(
        &self,
        uri: &Uri,
        forward: Forward<'_>,
        body: Bytes,
        stream: bool,
        extra: Option<(&HeaderName, &HeaderValue)>,
    ) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + self.headers.len());
        // only the allowlisted client headers, and the gateway's request id
        copy_forwarded(forward.headers, &mut headers);
        if let Some((name, value)) = extra {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(id) = forward.request_id {
            headers.insert(names::REQUEST_ID, id.clone());
        }
        if let Some((trace, number)) = forward.trace {
            headers.insert(names::TRACEPARENT, trace.traceparent(number));
            // a new trace (the client sent none, or an invalid one): the
            // client's tracestate belongs to no trace of ours
            if trace.parent.is_none() {
                headers.remove(names::TRACESTATE);
            }
        }
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if stream {
            headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = headers;
        let resp = match &self.client {
            Clients::Direct {
                pool,
                host,
                absolute,
            } => {
                *req.uri_mut() = match uri.path_and_query() {
                    Some(origin) if !absolute => Uri::from(origin.clone()),
                    _ => uri.clone(),
                };
                if !req.headers().contains_key(http::header::HOST) {
                    req.headers_mut().insert(http::header::HOST, host.clone());
                }
                match pool.send(uri, req).await {
                    Ok(resp) => resp,
                    Err(Failure::Connect(e)) => return Err(transport(e.as_ref())),
                    Err(Failure::Http(e)) => return Err(transport(&e)),
                }
            }
            Clients::Pooled(clients) => {
                *req.uri_mut() = uri.clone();
                let http = &clients[crate::worker::current() % clients.len()];
                let resp = http.request(req).await.map_err(|e| transport(&e))?;
                resp.map(UpBody::new)
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = read_prefix(resp.into_body(), ERROR_BODY_MAX).await;
            return Err(status_error(status.as_u16(), &headers, body));
        }
        Ok(resp)
    }

    /// The whole body of a response, up to `max` bytes: a larger one is a
    /// failed attempt, and no more of it is read.
    pub async fn read(&self, resp: Response, max: usize) -> Result<Bytes, UpstreamError> {
        let too_large = || {
            UpstreamError::BadBody(format!(
                "the answer is larger than policy.max_response_bytes ({max} bytes)"
            ))
        };
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(resp.into_body(), max)
            .collect()
            .await
        {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(transport(e.as_ref())),
        }
    }
}

/// Whether a response is an event stream.
pub fn is_sse(resp: &Response) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A response body as it arrives, chunk by chunk.
pub fn body_stream(resp: Response) -> impl Stream<Item = Result<Bytes, hyper::Error>> {
    BodyDataStream::new(resp.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn provider() -> Provider {
        Provider {
            name: "up".into(),
            kind: crate::config::ProviderKind::OpenAi,
            base_url: String::new(),
            host: None,
            key: None,
            auth: Auth::None,
            query: Vec::new(),
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            stream_usage: true,
            enabled: true,
            proxy: None,
            ca_file: None,
        }
    }

    /// Reads one request from `sock` (head and a content-length body) and
    /// answers it with `{}`; returns the head.
    async fn serve_one(sock: &mut tokio::net::TcpStream) -> Option<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = sock.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&seen[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while seen.len() < head_end + len {
            let n = sock.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        sock.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .ok()?;
        Some(head)
    }

    fn no_forward() -> Forward<'static> {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        Forward {
            headers: EMPTY.get_or_init(HeaderMap::new),
            request_id: None,
            trace: None,
        }
    }

    /// A loopback listener standing for an upstream, and the gateway's
    /// client of it at `path`, idle connections kept for `idle`.
    async fn upstream(path: &str, idle: Duration) -> (tokio::net::TcpListener, HttpUpstream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let up =
            HttpUpstream::with_pool_idle(&provider(), &url, HeaderMap::new(), Auth::None, idle)
                .unwrap();
        (listener, up)
    }

    async fn call(up: &HttpUpstream) -> Result<Bytes, UpstreamError> {
        let resp = up
            .send(no_forward(), Bytes::from_static(b"{}"), false)
            .await?;
        up.read(resp, 1024).await
    }

    /// Requests to a plain-HTTP upstream go one after another over one
    /// connection, in origin form with a `Host` header.
    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (listener, up) = upstream("/v1/chat/completions?x=1", POOL_IDLE_TIMEOUT).await;
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            while let Some(head) = serve_one(&mut sock).await {
                heads.push(head);
            }
            heads
        });
        for _ in 0..3 {
            assert_eq!(&call(&up).await.unwrap()[..], b"{}");
        }
        drop(up); // closes the pooled connection: the server's loop ends
        let heads = server.await.unwrap();
        assert_eq!(heads.len(), 3, "one connection for the three requests");
        for head in heads {
            assert!(
                head.starts_with("post /v1/chat/completions?x=1 http/1.1\r\n"),
                "{head}"
            );
            assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        }
    }

    /// An idle connection the upstream closed is not used: the next request
    /// goes out on a new one and succeeds.
    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_replaced() {
        let (listener, up) = upstream("/v1/chat/completions", POOL_IDLE_TIMEOUT).await;
        let answer = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            serve_one(&mut sock).await.unwrap();
            (listener, sock)
        });
        assert_eq!(&call(&up).await.unwrap()[..], b"{}");
        let (listener, sock) = answer.await.unwrap();
        drop(sock); // the upstream ends the kept-alive connection
                    // the runtime's thread blocked: it cannot learn of the close by
                    // itself, so it is the pool's check of a connection idle for over a
                    // second that finds it
        std::thread::sleep(super::super::pool::PEEK_AFTER + Duration::from_millis(50));
        let second = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            serve_one(&mut sock).await.is_some()
        });
        assert_eq!(&call(&up).await.unwrap()[..], b"{}");
        assert!(
            second.await.unwrap(),
            "the second request came on a new connection"
        );
    }

    /// An upstream that closes a kept-alive connection right after its
    /// answer: the next request, sent at once, goes out on a new connection
    /// and does not wait on the closed one.
    #[tokio::test]
    async fn a_request_queued_on_a_connection_that_closes_is_sent_again() {
        let (listener, up) = upstream("/v1/chat/completions", POOL_IDLE_TIMEOUT).await;
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            serve_one(&mut sock).await.unwrap();
            drop(sock);
            let (mut sock, _) = listener.accept().await.unwrap();
            serve_one(&mut sock).await.is_some()
        });
        assert_eq!(&call(&up).await.unwrap()[..], b"{}");
        // the first connection is closed by now; the second request must not
        // wait on it (a deadline here only turns a hang into a failure)
        let second = tokio::time::timeout(Duration::from_secs(10), call(&up)).await;
        assert_eq!(&second.expect("the request hung").unwrap()[..], b"{}");
        assert!(
            server.await.unwrap(),
            "the second request came on a new connection"
        );
    }

    /// The pool closes a connection left idle (hyper-util applies its idle
    /// timeout only when the pool has a timer; the direct pool sweeps).
    #[tokio::test]
    async fn idle_pooled_connections_are_closed() {
        let (listener, up) = upstream("/v1/chat/completions", Duration::from_millis(200)).await;
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"\r\n\r\n{}") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request was cut");
                seen.extend_from_slice(&buf[..n]);
            }
            sock.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
            // kept alive by both sides; then the gateway's pool lets it go
            tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await
        });
        assert_eq!(&call(&up).await.unwrap()[..], b"{}");
        let closed = server.await.unwrap();
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the idle connection was not closed: {closed:?}"
        );
        drop(up);
    }
}
