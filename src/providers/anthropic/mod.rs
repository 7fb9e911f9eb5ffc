//! Anthropic's Messages API behind the OpenAI shape: requests are translated
//! to `POST {base_url}/v1/messages`, answers, streams and errors back to
//! OpenAI chat completions. The mapping is documented in docs/providers.md.

#[cfg(test)]
mod props;
mod request;
pub use request::dropped;
mod passthrough;
pub use passthrough::RawRequest;
mod response;
mod stream;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::call::{Completion, UpstreamError, UpstreamRequest};
use super::http::{body_stream, is_sse, HttpUpstream};
use super::stream::UpstreamStream;
use crate::config::{Auth, Provider};

/// The API version sent as `anthropic-version` (a provider `headers` entry
/// may override it).
pub const API_VERSION: &str = "2023-06-01";

pub struct AnthropicClient {
    up: HttpUpstream,
}

impl AnthropicClient {
    pub fn new(p: &Provider) -> Result<Self, String> {
        let mut defaults = HeaderMap::new();
        defaults.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        // Anthropic authenticates with x-api-key, whatever `auth` defaulted to
        let auth = if p.auth == Auth::None {
            Auth::None
        } else {
            Auth::XApiKey
        };
        let url = format!("{}/v1/messages", p.base_url);
        Ok(Self {
            up: HttpUpstream::new(p, &url, defaults, auth)?,
        })
    }

    fn translate(&self, req: &UpstreamRequest<'_>) -> (Bytes, Option<String>) {
        let t = request::translate(
            &req.body.to_value(),
            &req.model.upstream,
            req.model.max_output_tokens,
        );
        (Bytes::from(t.body.to_string()), t.json_tool)
    }

    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let (body, json_tool) = self.translate(&req);
        let resp = self
            .up
            .send(req.forward, body, false)
            .await
            .map_err(|e| self.error(e))?;
        let body = self.up.read(resp, req.limits.max_response_bytes).await?;
        let (completion, usage) = response::completion(&body, json_tool.as_deref())?;
        Ok(Completion {
            body: Bytes::from(completion.to_string()),
            usage,
        })
    }

    pub async fn stream(&self, req: UpstreamRequest<'_>) -> Result<UpstreamStream, UpstreamError> {
        let (body, json_tool) = self.translate(&req);
        let resp = self
            .up
            .send(req.forward, body, true)
            .await
            .map_err(|e| self.error(e))?;
        if !is_sse(&resp) {
            // A JSON body where a stream was asked for: usually an error in a 200.
            let body = self.up.read(resp, req.limits.max_response_bytes).await?;
            return Err(match response::completion(&body, None) {
                Err(e) => e,
                Ok(_) => {
                    UpstreamError::BadBody("a JSON body where an event stream was asked for".into())
                }
            });
        }
        let translator = stream::Translator::new(json_tool);
        Ok(stream::from_sse(
            body_stream(resp),
            translator,
            req.limits.max_event_bytes,
        ))
    }

    /// An error status keeps its classification; its Anthropic body (given
    /// back as is to a client whose request was wrong) takes the OpenAI shape.
    fn error(&self, e: UpstreamError) -> UpstreamError {
        match e {
            UpstreamError::Status {
                status,
                message,
                retry_after,
                context_length,
                body,
            } => {
                let translated = serde_json::from_slice(&body)
                    .ok()
                    .and_then(|v| response::openai_error_body(&v, context_length))
                    .map(|v| Bytes::from(v.to_string()));
                UpstreamError::Status {
                    status,
                    message,
                    retry_after,
                    context_length,
                    body: translated.unwrap_or(body),
                }
            }
            other => other,
        }
    }
}

// The Messages API passed through (POST /v1/messages): see `passthrough`.
static BETA: HeaderName = HeaderName::from_static("anthropic-beta");

impl AnthropicClient {
    /// One Messages call: the upstream's answer as it is, and its usage.
    pub async fn messages(&self, req: RawRequest<'_>) -> Result<Completion, UpstreamError> {
        let beta = req.beta.map(|v| (&BETA, v));
        let resp = self
            .up
            .send_extra(req.forward, req.body, false, beta)
            .await?;
        let body = self.up.read(resp, req.limits.max_response_bytes).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::BadBody(format!("not JSON: {e}")))?;
        if let Some(msg) = response::error_message(&v) {
            return Err(UpstreamError::ErrorInBody(msg));
        }
        if !v.get("content").is_some_and(Value::is_array) {
            return Err(UpstreamError::BadBody(
                "no 'content' in the response".into(),
            ));
        }
        let mut usage = response::AnthropicUsage::default();
        usage.update(v.get("usage"));
        Ok(Completion {
            body,
            usage: usage.valid(),
        })
    }

    /// One streamed Messages call: its events as sent, classified.
    pub async fn messages_stream(
        &self,
        req: RawRequest<'_>,
    ) -> Result<UpstreamStream, UpstreamError> {
        let beta = req.beta.map(|v| (&BETA, v));
        let resp = self
            .up
            .send_extra(req.forward, req.body, true, beta)
            .await?;
        if !is_sse(&resp) {
            let body = self.up.read(resp, req.limits.max_response_bytes).await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(match response::error_message(&v) {
                Some(msg) => UpstreamError::ErrorInBody(msg),
                None => {
                    UpstreamError::BadBody("a JSON body where an event stream was asked for".into())
                }
            });
        }
        Ok(passthrough::raw_events(
            body_stream(resp),
            req.limits.max_event_bytes,
        ))
    }
}
