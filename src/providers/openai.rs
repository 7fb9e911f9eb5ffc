//! OpenAI-compatible upstreams (OpenAI, OpenRouter, Azure, Ollama, vLLM, ...).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::{
    parse_completion, stream, truncate, Completion, UpstreamError, UpstreamRequest, UpstreamStream,
};
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

pub struct OpenAiClient {
    http: reqwest::Client,
    url: Url,
    /// Provider headers and auth, resolved at load.
    headers: HeaderMap,
    stream_usage: bool,
    key: Option<Secret>,
}

impl OpenAiClient {
    pub fn new(p: &Provider) -> Result<Self, String> {
        let mut url = Url::parse(&format!("{}/chat/completions", p.base_url))
            .map_err(|e| format!("providers.{}.base_url: {e}", p.name))?;
        if !p.query.is_empty() {
            url.query_pairs_mut().extend_pairs(p.query.iter());
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &p.headers {
            headers.insert(k.clone(), v.clone());
        }
        if let Some(key) = &p.key {
            let (name, value) = match p.auth {
                Auth::Bearer => ("authorization", format!("Bearer {}", key.expose())),
                Auth::ApiKey => ("api-key", key.expose().to_string()),
                Auth::XApiKey => ("x-api-key", key.expose().to_string()),
                Auth::None => ("", String::new()),
            };
            if !name.is_empty() {
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
            stream_usage: p.stream_usage,
            key: p.key.clone(),
        })
    }

    fn request(&self, req: &UpstreamRequest<'_>) -> reqwest::RequestBuilder {
        let body = req.body.render(&req.model.upstream, self.stream_usage);
        let mut headers = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + self.headers.len());
        // only the allowlisted client headers, whatever the caller passed
        for name in FORWARDED_HEADERS {
            if let Some(v) = req.headers.get(name) {
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
        if req.body.stream() {
            headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        self.http.post(self.url.clone()).headers(headers).body(body)
    }

    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let resp = self
            .request(&req)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(self.status_error(status.as_u16(), &headers, body));
        }
        parse_completion(body).map_err(|e| self.scrub_err(e))
    }

    pub async fn stream(&self, req: UpstreamRequest<'_>) -> Result<UpstreamStream, UpstreamError> {
        let resp = self
            .request(&req)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| self.transport(e))?;
            return Err(self.status_error(status.as_u16(), &headers, body));
        }
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A JSON body where a stream was asked for: usually an error in a 200.
            let body = resp.bytes().await.map_err(|e| self.transport(e))?;
            return Err(match parse_completion(body) {
                Err(e) => self.scrub_err(e),
                Ok(_) => {
                    UpstreamError::BadBody("a JSON body where an event stream was asked for".into())
                }
            });
        }
        Ok(stream::from_sse(resp.bytes_stream()))
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

    fn scrub_err(&self, e: UpstreamError) -> UpstreamError {
        match e {
            UpstreamError::ErrorInBody(m) => UpstreamError::ErrorInBody(self.scrub(m)),
            other => other,
        }
    }

    /// Remove the provider's own key from anything the upstream echoes back.
    fn scrub(&self, s: String) -> String {
        match &self.key {
            Some(k) if s.contains(k.expose()) => s.replace(k.expose(), "[redacted]"),
            _ => s,
        }
    }
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
