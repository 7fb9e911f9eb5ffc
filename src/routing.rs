//! The plan of a request: name -> route (which targets it runs through, in
//! order, with how many retries each; docs/api.md, routing), the budget gate,
//! and escalation. One call per request, over the chain's targets.

use crate::api::Endpoint;
use crate::chain::{Chain, Route, Step};
use crate::config::{Name, NamedKey, TaskId, TierId};
use crate::error::GatewayError;

/// The routing inputs a request carries.
#[derive(Debug, Default, Clone)]
pub struct RouteRequest<'a> {
    pub task_header: Option<&'a str>,
    pub tier_header: Option<&'a str>,
    pub model: Option<&'a str>,
    pub chain_header: Option<&'a str>,
    pub max_retries_header: Option<&'a str>,
    pub minor_header: bool,
    /// `x-cascade-escalate: true`.
    pub escalate_header: bool,
    /// The API the request came in on: chat models answer chat, embedding
    /// models of one space answer embeddings.
    pub endpoint: Endpoint,
}

/// A request refused while planning, with its route when it had one.
#[derive(Debug)]
pub struct Refused {
    pub err: GatewayError,
    pub route: Option<Box<Route>>,
}

impl From<GatewayError> for Refused {
    fn from(err: GatewayError) -> Self {
        Refused { err, route: None }
    }
}

/// Plan a request: resolve its route for `key`; refuse it when
/// `spent_rejects` says a spent budget refuses everything; start it one tier
/// up when an escalation is owed or asked for.
pub fn plan(
    chain: &Chain,
    req: &RouteRequest<'_>,
    key: Option<&NamedKey>,
    spent_rejects: impl FnOnce() -> bool,
) -> Result<Route, Refused> {
    let mut route = resolve(chain, req, key)?;
    if spent_rejects() {
        return Err(Refused {
            err: GatewayError::BudgetExceeded("the budget for this period is spent".into()),
            route: Some(Box::new(route)),
        });
    }
    if let Some((from, to)) = escalate(chain, &mut route, req.escalate_header, key) {
        let tiers = &chain.config.tiers;
        chain
            .metrics
            .escalations
            .with_label_values(&[&tiers[from].name, &tiers[to].name])
            .inc();
    }
    Ok(route)
}

pub fn resolve(
    rt: &Chain,
    req: &RouteRequest<'_>,
    key: Option<&NamedKey>,
) -> Result<Route, GatewayError> {
    let cfg = &rt.config;
    let not_found = |what: &str| {
        let mut valid: Vec<&str> = cfg.client_names().into_iter().map(|(n, _)| n).collect();
        valid.extend(cfg.aliases().into_iter().map(|(a, _)| a));
        GatewayError::ModelNotFound(format!(
            "{what} is not a task, tier or model of this gateway; valid names: {}",
            valid.join(", ")
        ))
    };

    let name = if let Some(task) = req.task_header {
        match cfg.lookup(task) {
            Some(n @ Name::Task(_)) => n,
            _ => return Err(not_found(&format!("task {task:?} (x-cascade-task)"))),
        }
    } else if let Some(tier) = req.tier_header {
        match cfg.lookup(tier) {
            Some(n @ Name::Tier(_)) => n,
            _ => return Err(not_found(&format!("tier {tier:?} (x-cascade-tier)"))),
        }
    } else {
        let Some(model) = req.model else {
            return Err(GatewayError::invalid(
                "'model' is required (or route with x-cascade-task / x-cascade-tier)",
                Some("model"),
            ));
        };
        let (prefix, bare) = match model.split_once(':') {
            Some((p @ ("task" | "tier" | "model"), rest)) => (Some(p), rest),
            _ => (None, model),
        };
        match (prefix, cfg.lookup(bare)) {
            (None, Some(n))
            | (Some("task"), Some(n @ Name::Task(_)))
            | (Some("tier"), Some(n @ Name::Tier(_)))
            | (Some("model"), Some(n @ Name::Model(_))) => n,
            // an alias is the client's whole, unprefixed string
            _ => match cfg.alias(model) {
                Some(n) if prefix.is_none() => n,
                _ => return Err(not_found(&format!("model {model:?}"))),
            },
        }
    };

    let (task, mut targets, task_retries): (Option<TaskId>, Vec<usize>, Option<u32>) = match name {
        Name::Task(t) => {
            let task = &cfg.tasks[t];
            (
                Some(t),
                task.chain
                    .iter()
                    .map(|&tier| rt.tier_target(tier))
                    .collect(),
                task.max_retries,
            )
        }
        Name::Tier(t) => (
            None,
            cfg.tiers[t]
                .chain
                .iter()
                .map(|&tier| rt.tier_target(tier))
                .collect(),
            None,
        ),
        Name::Model(m) => (None, vec![rt.model_target(m)], None),
    };

    if let Some(list) = req.chain_header {
        targets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                cfg.tier_by_name(name)
                    .map(|t| rt.tier_target(t))
                    .ok_or_else(|| {
                        GatewayError::invalid(
                            format!("x-cascade-chain names unknown tier {name:?}"),
                            None,
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        if targets.is_empty() {
            return Err(GatewayError::invalid("x-cascade-chain is empty", None));
        }
    }

    let header_retries = match req.max_retries_header {
        None => None,
        Some(v) => Some(v.trim().parse::<u32>().map_err(|_| {
            GatewayError::invalid(
                format!("x-cascade-max-retries must be a whole number from 0, got {v:?}"),
                None,
            )
        })?),
    };

    if let Some(allowed) = key.and_then(|k| k.allowed_tiers.as_ref()) {
        targets.retain(|&t| target_allowed(rt, t, allowed));
        if targets.is_empty() {
            let key = key.map(|k| k.name.as_str()).unwrap_or_default();
            return Err(GatewayError::TierNotAllowed(format!(
                "key {key:?} may not use any tier of this chain"
            )));
        }
    }

    same_kind(rt, &targets, req.endpoint)?;

    let minor = req.minor_header || task.is_some_and(|t| cfg.tasks[t].minor);
    if minor {
        targets.retain(|&t| rt.targets[t].free);
        if targets.is_empty() {
            return Err(GatewayError::NoEligibleTier(
                "a minor request skips paid tiers, and this chain has no free tier".into(),
            ));
        }
    }

    let mut route = Route {
        steps: Vec::new(),
        task,
        minor,
        escalated: false,
        task_retries,
        retries_cap: header_retries,
    };
    route.steps = targets
        .into_iter()
        .map(|target| Step {
            target,
            max_retries: route.retries_for(rt.targets[target].max_retries),
        })
        .collect();
    Ok(route)
}

/// Escalation (docs/configuration.md, `escalate`): when the chain's first tier has `escalate` and an
/// escalation is owed (or the client asks with `x-cascade-escalate: true`),
/// start at `escalate.to`, then continue with the original chain. Returns
/// the (from, to) tiers when it applied. A minor request, or a key not
/// allowed the target tier, is never escalated (and owes nothing).
pub fn escalate(
    rt: &Chain,
    route: &mut Route,
    asked: bool,
    key: Option<&NamedKey>,
) -> Option<(TierId, TierId)> {
    let first = route.steps.first()?;
    let from = rt.targets[first.target].tier?;
    let esc = rt.config.tiers[from].escalate?;
    let to_target = rt.tier_target(esc.to);
    if route.minor && !rt.targets[to_target].free {
        return None;
    }
    if let Some(allowed) = key.and_then(|k| k.allowed_tiers.as_ref()) {
        if !allowed.contains(&esc.to) {
            return None;
        }
    }
    if !asked && !rt.escalation[from].take() {
        return None;
    }
    let retries = route.retries_for(rt.targets[to_target].max_retries);
    route.steps.retain(|s| s.target != to_target);
    route.steps.insert(
        0,
        Step {
            target: to_target,
            max_retries: retries,
        },
    );
    route.escalated = true;
    Some((from, esc.to))
}

/// Every model of the chain answers in the endpoint's kind: chat models for
/// chat; for embeddings, embedding models of one space (vectors of two
/// spaces cannot be mixed). Else 400 on `model`.
fn same_kind(rt: &Chain, targets: &[usize], endpoint: Endpoint) -> Result<(), GatewayError> {
    let cfg = &rt.config;
    let mut models = targets
        .iter()
        .flat_map(|&t| rt.targets[t].models.iter())
        .map(|&m| &cfg.models[m]);
    let wrong =
        |what: &str| GatewayError::invalid(format!("this request routes to {what}"), Some("model"));
    if endpoint.chat() {
        if let Some(m) = models.find(|m| m.kind.is_embedding()) {
            return Err(wrong(&format!(
                "embedding model {:?}: send it to /v1/embeddings",
                m.name
            )));
        }
        return Ok(());
    }
    let Some(first) = models.next() else {
        return Ok(());
    };
    if !first.kind.is_embedding() {
        return Err(wrong(&format!(
            "chat model {:?}: send it to /v1/chat/completions",
            first.name
        )));
    }
    if let Some(m) = models.find(|m| !m.kind.compatible(&first.kind)) {
        return Err(GatewayError::invalid(
            format!(
                "the chain mixes {} (model {:?}) and {} (model {:?}): a fallback must return vectors of the same space",
                first.kind.describe(),
                first.name,
                m.kind.describe(),
                m.name
            ),
            Some("model"),
        ));
    }
    Ok(())
}

/// A tier target is allowed when listed; a direct model when it belongs to
/// an allowed tier.
fn target_allowed(rt: &Chain, target: usize, allowed: &[TierId]) -> bool {
    let t = &rt.targets[target];
    match t.tier {
        Some(tier) => allowed.contains(&tier),
        None => allowed.iter().any(|&tier| {
            t.models
                .iter()
                .all(|m| rt.config.tiers[tier].models.contains(m))
        }),
    }
}

#[cfg(test)]
mod tests;
