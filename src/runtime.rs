//! Everything a request needs, resolved once at load (and swapped whole on
//! reload): the validated config, one HTTP client per provider, the chain's
//! targets and health, and the metric handles of the request path.

use std::sync::Arc;

use http::HeaderValue;
use prometheus::{Counter, Histogram};

use crate::chain::Chain;
use crate::config::Config;
use crate::metrics::{LazyCounters, Metrics};
use crate::outcome::RequestOutcome;
use crate::providers::{
    Client, Completion, EmbedRequest, Embeddings, UpstreamError, UpstreamRequest, UpstreamStream,
};
use crate::secret::Scrubber;

pub struct Runtime {
    pub config: Arc<Config>,
    /// One per provider.
    pub clients: Vec<Arc<Client>>,
    /// Targets, health, escalation state.
    pub chain: Chain,
    pub metrics: Arc<Metrics>,
    /// One per model: its name and its provider's, as header values.
    pub model_headers: Vec<ModelHeaders>,
    /// cascade_requests_total{tier="none", outcome}, by `RequestOutcome as usize`.
    pub unserved: LazyCounters,
    /// cascade_request_duration_seconds{tier="none"}.
    pub unserved_duration: Histogram,
    /// cascade_key_cost_usd_total, one per named key (same index as `config.keys`).
    pub key_cost: Vec<Counter>,
    /// Every credential of this config, to clean what upstreams say.
    pub scrubber: Arc<Scrubber>,
    /// The span exporter, when `[telemetry]` is on.
    pub traces: Option<Arc<crate::telemetry::Exporter>>,
}

/// The x-cascade-model and x-cascade-provider values of one model.
pub struct ModelHeaders {
    pub model: Option<HeaderValue>,
    pub provider: Option<HeaderValue>,
}

impl Runtime {
    /// Resolve a config. With `previous` (a reload), provider clients, model
    /// health and escalation counters are kept where nothing they depend on
    /// changed, so pools stay warm and open circuits stay open.
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let clients = config
            .providers
            .iter()
            .map(|p| {
                let kept = previous.and_then(|old| {
                    let i = old.config.providers.iter().position(|op| op == p)?;
                    Some(Arc::clone(&old.clients[i]))
                });
                match kept {
                    Some(c) => Ok(c),
                    None => Client::new(p).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = Arc::new(config);
        let chain = Chain::build(&config, metrics, previous.map(|p| &p.chain));
        let model_headers = (0..config.models.len())
            .map(|m| ModelHeaders {
                model: HeaderValue::from_str(&config.models[m].name).ok(),
                provider: HeaderValue::from_str(&config.model_provider(m).name).ok(),
            })
            .collect();
        let key_cost = config
            .keys
            .iter()
            .map(|k| metrics.key_cost.with_label_values(&[&k.name]))
            .collect();
        let scrubber = Arc::new(Scrubber::new(config.credentials()));
        let t = &config.telemetry;
        let traces = match &t.traces_url {
            // kept across a reload that changes nothing of it (its queue too)
            Some(url) => match previous.and_then(|p| {
                (p.config.telemetry == *t)
                    .then_some(p.traces.clone())
                    .flatten()
            }) {
                Some(kept) => Some(kept),
                None => Some(Arc::new(crate::telemetry::Exporter::new(
                    (url, &t.headers),
                    &t.service_name,
                    crate::providers::egress::default_tls()?,
                    metrics.spans_dropped.clone(),
                )?)),
            },
            None => None,
        };
        Ok(Runtime {
            traces,
            scrubber,
            unserved: LazyCounters::new(RequestOutcome::COUNT),
            unserved_duration: metrics.request_duration.with_label_values(&["none"]),
            key_cost,
            model_headers,
            chain,
            config,
            clients,
            metrics: Arc::clone(metrics),
        })
    }

    /// One non-streaming upstream call; what the upstream said in an error
    /// is scrubbed of every credential before anything else sees it.
    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let client = &self.clients[req.model.provider];
        client
            .complete(req)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))
    }

    /// One embeddings call; its errors scrubbed.
    pub async fn embed(&self, req: EmbedRequest<'_>) -> Result<Embeddings, UpstreamError> {
        let client = &self.clients[req.model.provider];
        client
            .embed(req)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))
    }

    /// A Messages request passed through to an `anthropic` provider; its
    /// errors, now and (on a stream) later, scrubbed.
    pub async fn messages(
        &self,
        provider: crate::config::ProviderId,
        req: crate::providers::RawRequest<'_>,
        stream: bool,
    ) -> Result<crate::providers::Passed, UpstreamError> {
        use crate::providers::Passed;
        use futures_util::StreamExt;
        let passed = self.clients[provider]
            .messages(req, stream)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))?;
        Ok(match passed {
            Passed::Stream(s) => {
                let scrubber = Arc::clone(&self.scrubber);
                Passed::Stream(Box::pin(
                    s.map(move |r| r.map_err(|e| e.scrubbed(&scrubber))),
                ))
            }
            complete => complete,
        })
    }

    /// Open an upstream stream; its errors, now and later, are scrubbed.
    pub async fn open_stream(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<UpstreamStream, UpstreamError> {
        use futures_util::StreamExt;
        let client = &self.clients[req.model.provider];
        let stream = client
            .stream(req)
            .await
            .map_err(|e| e.scrubbed(&self.scrubber))?;
        let scrubber = Arc::clone(&self.scrubber);
        Ok(Box::pin(
            stream.map(move |r| r.map_err(|e| e.scrubbed(&scrubber))),
        ))
    }
}
