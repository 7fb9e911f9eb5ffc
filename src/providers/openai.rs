//! OpenAI-compatible upstreams (OpenAI, OpenRouter, Azure, Ollama, vLLM, ...):
//! the client's body goes out as sent, with the upstream model name.

use bytes::Bytes;
use http::HeaderMap;

use super::call::{
    parse_completion, parse_embeddings, Completion, EmbedRequest, Embeddings, UpstreamError,
    UpstreamRequest,
};
use super::http::{body_stream, endpoint_uri, is_sse, HttpUpstream};
use super::stream::{self, UpstreamStream};
use crate::config::Provider;

pub struct OpenAiClient {
    up: HttpUpstream,
    /// `{base_url}/embeddings`, on the same connections.
    embeddings: http::Uri,
    stream_usage: bool,
}

impl OpenAiClient {
    pub fn new(p: &Provider) -> Result<Self, String> {
        let url = format!("{}/chat/completions", p.base_url);
        Ok(Self {
            up: HttpUpstream::new(p, &url, HeaderMap::new(), p.auth)?,
            embeddings: endpoint_uri(p, &format!("{}/embeddings", p.base_url))?,
            stream_usage: p.stream_usage,
        })
    }

    pub async fn embed(&self, req: EmbedRequest<'_>) -> Result<Embeddings, UpstreamError> {
        let body = req.body.render(&req.model.upstream);
        let resp = self
            .up
            .send_to(&self.embeddings, req.forward, body, false)
            .await?;
        let body = self.up.read(resp, req.limits.max_response_bytes).await?;
        parse_embeddings(body, &req)
    }

    fn body(&self, req: &UpstreamRequest<'_>) -> Bytes {
        req.body.render(&req.model.upstream, self.stream_usage)
    }

    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let resp = self.up.send(req.forward, self.body(&req), false).await?;
        let body = self.up.read(resp, req.limits.max_response_bytes).await?;
        parse_completion(body)
    }

    pub async fn stream(&self, req: UpstreamRequest<'_>) -> Result<UpstreamStream, UpstreamError> {
        let resp = self
            .up
            .send(req.forward, self.body(&req), req.body.stream())
            .await?;
        if !is_sse(&resp) {
            // A JSON body where a stream was asked for: usually an error in a 200.
            let body = self.up.read(resp, req.limits.max_response_bytes).await?;
            return Err(match parse_completion(body) {
                Err(e) => e,
                Ok(_) => {
                    UpstreamError::BadBody("a JSON body where an event stream was asked for".into())
                }
            });
        }
        Ok(stream::from_sse(
            body_stream(resp),
            req.limits.max_event_bytes,
        ))
    }
}
