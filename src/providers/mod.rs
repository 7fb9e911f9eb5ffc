//! Upstream calls. One client per provider, built once at load: the
//! OpenAI-compatible HTTP client, the Anthropic Messages client (translating
//! both ways), and the in-process mock. Providers know nothing of chains or
//! servers: they send one request and say what happened.

mod anthropic;
mod call;
pub mod egress;
mod failure;
mod http;
mod mock;
mod openai;
mod pool;
mod scan;
pub mod sse;
pub mod stream;

use bytes::Bytes;

use crate::config::{Provider, ProviderKind};

pub use anthropic::RawRequest;
pub use call::{
    is_context_length, parse_completion, Completion, EmbedRequest, Embeddings, Forward,
    UpstreamError, UpstreamRequest, MESSAGE_MAX,
};
pub use http::{copy_forwarded, FORWARDED_HEADERS};
pub use stream::{Chunk, ChunkKind, UpstreamStream};

pub enum Client {
    OpenAi(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
    Mock(mock::MockClient),
}

impl Client {
    pub fn new(provider: &Provider) -> Result<Client, String> {
        Ok(match &provider.kind {
            ProviderKind::OpenAi => Client::OpenAi(openai::OpenAiClient::new(provider)?),
            ProviderKind::Anthropic => {
                Client::Anthropic(anthropic::AnthropicClient::new(provider)?)
            }
            ProviderKind::Mock(settings) => Client::Mock(mock::MockClient::new(settings.clone())),
        })
    }

    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        match self {
            Client::OpenAi(c) => c.complete(req).await,
            Client::Anthropic(c) => c.complete(req).await,
            Client::Mock(c) => c.complete(req).await,
        }
    }

    /// The request's top-level fields this provider cannot take and leaves
    /// out (only the Anthropic translation drops any).
    pub fn dropped(&self, body: &crate::api::ChatBody) -> Vec<String> {
        match self {
            Client::Anthropic(_) => anthropic::dropped(&body.to_value()),
            Client::OpenAi(_) | Client::Mock(_) => Vec::new(),
        }
    }

    /// One embeddings call. Anthropic has no embeddings API (the config
    /// refuses such a model; this answers 404 should one get here).
    pub async fn embed(&self, req: EmbedRequest<'_>) -> Result<Embeddings, UpstreamError> {
        match self {
            Client::OpenAi(c) => c.embed(req).await,
            Client::Mock(c) => c.embed(req).await,
            Client::Anthropic(_) => Err(UpstreamError::Status {
                status: 404,
                message: "anthropic providers have no embeddings API".into(),
                retry_after: None,
                context_length: false,
                body: Bytes::new(),
            }),
        }
    }

    /// Whether a Messages request passes through as it is (an `anthropic`
    /// provider) rather than translated to Chat Completions.
    pub fn speaks_messages(&self) -> bool {
        matches!(self, Client::Anthropic(_))
    }

    /// A Messages request passed through (`anthropic` providers only).
    pub async fn messages(
        &self,
        req: RawRequest<'_>,
        stream: bool,
    ) -> Result<Passed, UpstreamError> {
        match self {
            Client::Anthropic(c) if stream => c.messages_stream(req).await.map(Passed::Stream),
            Client::Anthropic(c) => c.messages(req).await.map(Passed::Complete),
            _ => Err(UpstreamError::BadBody(
                "only anthropic providers take the Messages API as it is".into(),
            )),
        }
    }

    /// Open a stream: resolves once the upstream accepted the request (its
    /// status is known); chunks follow on the returned stream.
    pub async fn stream(&self, req: UpstreamRequest<'_>) -> Result<UpstreamStream, UpstreamError> {
        match self {
            Client::OpenAi(c) => c.stream(req).await,
            Client::Anthropic(c) => c.stream(req).await,
            Client::Mock(c) => c.stream(req).await,
        }
    }
}

/// What a passed-through Messages call gave.
pub enum Passed {
    Complete(Completion),
    Stream(UpstreamStream),
}
