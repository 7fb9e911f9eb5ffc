//! `[models.NAME]`: prices, windows, and what a model does (chat, or
//! embeddings of one vector space), and the chains that must not mix them.

use std::collections::HashMap;

use super::checker::Checker;
use crate::config::raw::RawModel;
use crate::config::types::*;
use crate::cost::Prices;

/// One model, checked.
pub(super) fn model(
    c: &mut Checker,
    (name, m): (&String, &RawModel),
    provider_ids: &HashMap<&str, ProviderId>,
    providers: &[Provider],
) -> Model {
    let key = format!("models.{name}");
    c.name(&key, name);
    let provider = match provider_ids.get(m.provider.as_str()) {
        Some(&id) => id,
        None => {
            c.err(
                format!("{key}.provider"),
                format!("provider {:?} is not defined", m.provider),
            );
            0
        }
    };
    let input = c.price(&format!("{key}.input_usd_per_mtok"), m.input_usd_per_mtok);
    let prices = Prices {
        input,
        output: c.price(&format!("{key}.output_usd_per_mtok"), m.output_usd_per_mtok),
        cache_read: m
            .cache_read_usd_per_mtok
            .map(|v| c.price(&format!("{key}.cache_read_usd_per_mtok"), v))
            .unwrap_or(input),
        cache_write: m
            .cache_write_usd_per_mtok
            .map(|v| c.price(&format!("{key}.cache_write_usd_per_mtok"), v))
            .unwrap_or(input),
        per_request: c.price(&format!("{key}.usd_per_request"), m.usd_per_request),
    };
    let positive = |c: &mut Checker, field: &str, v: Option<i64>| -> Option<u64> {
        let v = v?;
        if v <= 0 {
            c.err(
                format!("{key}.{field}"),
                format!("must be positive (got {v})"),
            );
            return None;
        }
        Some(v as u64)
    };
    if m.model.trim().is_empty() {
        c.err(format!("{key}.model"), "the upstream model name is empty");
    }
    let kind = match m.kind.as_deref() {
        None | Some("chat") => {
            for (field, set) in [
                ("dimensions", m.dimensions.is_some()),
                ("embedding_space", m.embedding_space.is_some()),
            ] {
                if set {
                    c.err(
                        format!("{key}.{field}"),
                        "only embedding models (kind = \"embedding\") take it",
                    );
                }
            }
            ModelKind::Chat
        }
        Some("embedding") => {
            if providers
                .get(provider)
                .is_some_and(|p| matches!(p.kind, ProviderKind::Anthropic))
            {
                c.err(
                    format!("{key}.kind"),
                    "anthropic providers have no embeddings API",
                );
            }
            let space = m
                .embedding_space
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or(name)
                .to_string();
            ModelKind::Embedding {
                dimensions: positive(c, "dimensions", m.dimensions)
                    .map(|d| d.min(u64::from(u32::MAX)) as u32),
                space,
            }
        }
        Some(other) => {
            c.err(
                format!("{key}.kind"),
                format!("unknown kind {other:?} (chat | embedding)"),
            );
            ModelKind::Chat
        }
    };
    Model {
        name: name.clone(),
        provider,
        upstream: m.model.clone(),
        prices,
        context_window: positive(c, "context_window", m.context_window),
        max_output_tokens: positive(c, "max_output_tokens", m.max_output_tokens),
        max_concurrency: c.count(&format!("{key}.max_concurrency"), m.max_concurrency),
        enabled: m.enabled && providers.get(provider).is_some_and(|p| p.enabled),
        kind,
        prefill: m.prefill,
    }
}

/// The models of one embedding space share one vector length.
pub(super) fn spaces(c: &mut Checker, models: &[Model]) {
    for (i, a) in models.iter().enumerate() {
        if let ModelKind::Embedding {
            dimensions: Some(da),
            space: sa,
        } = &a.kind
        {
            let clash = models[..i].iter().find(|b| {
                matches!(&b.kind, ModelKind::Embedding { dimensions: Some(db), space: sb } if sb == sa && db != da)
            });
            if let Some(b) = clash {
                c.err(
                    format!("models.{}.dimensions", a.name),
                    format!(
                        "embedding space {sa:?} has vectors of {da} here and of another length in models.{}",
                        b.name
                    ),
                );
            }
        }
    }
}

/// A chain (a tier's, a task's) runs over models of one kind, and embeddings
/// over one space; escalation stays within it too.
pub(super) fn kinds(c: &mut Checker, models: &[Model], tiers: &[Tier], tasks: &[Task]) {
    let chains = tiers
        .iter()
        .map(|t| (format!("tiers.{}", t.name), t.chain.clone()))
        .chain(
            tasks
                .iter()
                .map(|t| (format!("tasks.{}", t.name), t.chain.clone())),
        );
    let models_ref = models;
    for (key, chain) in chains {
        let mut kinds = chain
            .iter()
            .filter_map(|&t| tiers.get(t))
            .flat_map(|t| t.models.iter().map(move |&m| (t, &models_ref[m])));
        if let Some((first_tier, first)) = kinds.next() {
            if let Some((tier, other)) = kinds.find(|(_, m)| !m.kind.compatible(&first.kind)) {
                c.err(
                    key,
                    format!(
                        "the chain mixes {} (models.{} in tiers.{}) and {} (models.{} in tiers.{}): a fallback must answer in the same kind{}",
                        first.kind.describe(),
                        first.name,
                        first_tier.name,
                        other.kind.describe(),
                        other.name,
                        tier.name,
                        if first.kind.is_embedding() && other.kind.is_embedding() {
                            ", and vectors of different spaces cannot be mixed"
                        } else {
                            ""
                        },
                    ),
                );
            }
        }
    }

    // escalation stays within the kind and the space, too
    for t in tiers {
        let Some(esc) = t.escalate else { continue };
        let (Some(&from), Some(to)) = (t.models.first(), tiers.get(esc.to)) else {
            continue;
        };
        if let Some(&m) = to
            .models
            .iter()
            .find(|&&m| !models[m].kind.compatible(&models[from].kind))
        {
            c.err(
                format!("tiers.{}.escalate.to", t.name),
                format!(
                    "tiers.{} holds {} (models.{}) where this tier holds {}",
                    to.name,
                    models[m].kind.describe(),
                    models[m].name,
                    models[from].kind.describe()
                ),
            );
        }
    }
}
