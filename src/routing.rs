//! Name -> chain (SPEC 4.1, 4.3): which targets a request runs through, in
//! order, with how many retries each. A pure lookup over the runtime config.

use crate::config::{Name, NamedKey, TaskId, TierId};
use crate::error::GatewayError;
use crate::runtime::Runtime;

/// The routing inputs a request carries.
#[derive(Debug, Default, Clone)]
pub struct RouteRequest<'a> {
    pub task_header: Option<&'a str>,
    pub tier_header: Option<&'a str>,
    pub model: Option<&'a str>,
    pub chain_header: Option<&'a str>,
    pub max_retries_header: Option<&'a str>,
    pub minor_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Index into `Runtime::targets`.
    pub target: usize,
    pub max_retries: u32,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub steps: Vec<Step>,
    pub task: Option<TaskId>,
    pub minor: bool,
    /// Started at the first tier's `escalate.to` (SPEC 4.4).
    pub escalated: bool,
    /// The task's retries per tier, if it sets them.
    pub task_retries: Option<u32>,
    /// `x-cascade-max-retries`, if sent.
    pub retries_cap: Option<u32>,
}

impl Route {
    /// Retries for a target of this request: the task's or the tier's, capped
    /// by the header.
    pub fn retries_for(&self, configured: u32) -> u32 {
        let r = self.task_retries.unwrap_or(configured);
        self.retries_cap.map_or(r, |cap| cap.min(r))
    }
}

pub fn resolve(
    rt: &Runtime,
    req: &RouteRequest<'_>,
    key: Option<&NamedKey>,
) -> Result<Route, GatewayError> {
    let cfg = &rt.config;
    let not_found = |what: &str| {
        let valid: Vec<&str> = cfg.client_names().into_iter().map(|(n, _)| n).collect();
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
            _ => return Err(not_found(&format!("model {model:?}"))),
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

/// Escalation (SPEC 4.4): when the chain's first tier has `escalate` and an
/// escalation is owed (or the client asks with `x-cascade-escalate: true`),
/// start at `escalate.to`, then continue with the original chain. Returns
/// the (from, to) tiers when it applied. A minor request, or a key not
/// allowed the target tier, is never escalated (and owes nothing).
pub fn escalate(
    rt: &Runtime,
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

/// A tier target is allowed when listed; a direct model when it belongs to
/// an allowed tier.
fn target_allowed(rt: &Runtime, target: usize, allowed: &[TierId]) -> bool {
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
