//! What the HTTP providers share: one pooled client per provider, the
//! provider's own headers and auth resolved at load, the allowlist of client
//! headers, and the mapping of transport failures and non-2xx answers to
//! `UpstreamError`, with the provider's key scrubbed from anything echoed.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::{truncate, UpstreamError};
use crate::config::{Auth, Provider};
use crate::secret::Secret;

/// The client headers that may reach an upstream (SPEC 4.1).
pub const FORWARDED_HEADERS: [&str; 7] = [
    "content-type",
    "accept",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
    "openai-beta",
];

pub struct HttpUpstream {
    http: reqwest::Client,
    url: Url,
    /// The kind's own headers, then the provider's `headers`, then auth.
    headers: HeaderMap,
    key: Option<Secret>,
}

impl HttpUpstream {
    /// `url`: the endpoint (the provider's `query` is added to it);
    /// `defaults`: headers of the provider kind, which the provider's own
    /// `headers` may override; `auth`: how the key is sent.
    pub fn new(p: &Provider, url: &str, defaults: HeaderMap, auth: Auth) -> Result<Self, String> {
        let mut url = Url::parse(url).map_err(|e| format!("providers.{}.base_url: {e}", p.name))?;
        if !p.query.is_empty() {
            url.query_pairs_mut().extend_pairs(p.query.iter());
        }
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
        let http = reqwest::Client::builder()
            .connect_timeout(p.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("providers.{}: cannot build the HTTP client: {e}", p.name))?;
        Ok(Self {
            http,
            url,
            headers,
            key: p.key.clone(),
        })
    }

    /// POST a JSON body. Resolves once the status is known: a non-2xx answer
    /// (its body read) is an `UpstreamError::Status`.
    pub async fn send(
        &self,
        client_headers: &HeaderMap,
        body: Bytes,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + self.headers.len());
        // only the allowlisted client headers, whatever the caller passed
        for name in FORWARDED_HEADERS {
            if let Some(v) = client_headers.get(name) {
                headers.insert(name, v.clone());
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
        let resp = self
            .http
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = self.read(resp).await?;
            return Err(self.status_error(status.as_u16(), &headers, body));
        }
        Ok(resp)
    }

    /// The whole body of a response.
    pub async fn read(&self, resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        resp.bytes().await.map_err(|e| self.transport(e))
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return UpstreamError::Timeout;
        }
        // reqwest's Display never includes headers; drop the URL's query anyway
        let msg = self.scrub(error_chain(&e.without_url()));
        UpstreamError::Connect(truncate(msg))
    }

    fn status_error(&self, status: u16, headers: &HeaderMap, body: Bytes) -> UpstreamError {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let message = parsed
            .as_ref()
            .and_then(crate::api::upstream_error_message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        let message = truncate(self.scrub(message));
        UpstreamError::Status {
            status,
            context_length: (status == 400 || status == 413) && super::is_context_length(&message),
            retry_after: retry_after(headers),
            message,
            body: if parsed.is_some() { body } else { Bytes::new() },
        }
    }

    /// Scrub the key from the messages of errors found in a 200 body.
    pub fn scrub_err(&self, e: UpstreamError) -> UpstreamError {
        match e {
            UpstreamError::ErrorInBody(m) => UpstreamError::ErrorInBody(self.scrub(m)),
            other => other,
        }
    }

    /// Remove the provider's own key from anything the upstream echoes back.
    pub fn scrub(&self, s: String) -> String {
        match &self.key {
            Some(k) if s.contains(k.expose()) => s.replace(k.expose(), "[redacted]"),
            _ => s,
        }
    }
}

/// Whether a response is an event stream.
pub fn is_sse(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds) from a response.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_micros((ms * 1000.0) as u64));
        }
    }
    let secs = get("retry-after")?.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_millis((secs * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retry_after_in_both_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        h.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }
}
