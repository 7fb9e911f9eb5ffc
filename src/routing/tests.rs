//! `resolve`, `escalate` and `plan` over a small config: names, headers,
//! keys, minor requests, the budget gate, escalation.

use super::*;
use crate::testing::chain;

/// paid -> cheap -> local (local free); task `plan` on paid with 1 retry;
/// task `tidy` is minor; cheap escalates to paid after 2 failures.
const TOML: &str = r#"
[ledger]
path = ""

[providers.p]
kind = "mock"

[models.m-paid]
provider = "p"
model = "m-paid"
input_usd_per_mtok = 3.0

[models.m-cheap]
provider = "p"
model = "m-cheap"
input_usd_per_mtok = 0.1

[models.m-local]
provider = "p"
model = "m-local"

[tiers.paid]
models = ["m-paid"]
max_retries = 2
fallback = ["cheap", "local"]

[tiers.cheap]
models = ["m-cheap"]
max_retries = 1
fallback = ["local"]
escalate = { after_consecutive_failures = 2, to = "paid" }

[tiers.local]
models = ["m-local"]
max_retries = 3

[tasks.plan]
tier = "paid"
max_retries = 1

[tasks.tidy]
tier = "cheap"
minor = true

[keys.planner]
key_env = "PLANNER_KEY"
allowed_tiers = ["cheap", "local"]

[aliases]
"gpt-4o-mini" = "cheap"
"claude-sonnet-4.5" = "plan"
"qwen2.5:7b" = "m-local"
"#;

fn labels(c: &Chain, r: &Route) -> Vec<(String, u32)> {
    r.steps
        .iter()
        .map(|s| (c.targets[s.target].label.clone(), s.max_retries))
        .collect()
}

fn named(model: &str) -> RouteRequest<'_> {
    RouteRequest {
        model: Some(model),
        ..Default::default()
    }
}

fn steps(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(l, r)| (l.to_string(), *r)).collect()
}

#[test]
fn names_resolve_to_their_chains() {
    let c = chain(TOML, &[("PLANNER_KEY", "pk-planner")]);
    let r = resolve(&c, &named("paid"), None).unwrap();
    assert_eq!(
        labels(&c, &r),
        steps(&[("paid", 2), ("cheap", 1), ("local", 3)])
    );
    // a task: its tier's chain with its own retries
    let r = resolve(&c, &named("plan"), None).unwrap();
    assert_eq!(
        labels(&c, &r),
        steps(&[("paid", 1), ("cheap", 1), ("local", 1)])
    );
    assert!(r.task.is_some());
    // a model: that model alone, with the policy's retries
    let r = resolve(&c, &named("m-cheap"), None).unwrap();
    assert_eq!(labels(&c, &r), steps(&[("model:m-cheap", 2)]));
    // prefixes say which kind of name; the wrong kind is not found
    assert!(resolve(&c, &named("tier:cheap"), None).is_ok());
    assert!(resolve(&c, &named("model:m-local"), None).is_ok());
    assert!(resolve(&c, &named("task:plan"), None).is_ok());
    assert!(matches!(
        resolve(&c, &named("task:cheap"), None),
        Err(GatewayError::ModelNotFound(_))
    ));
    // an unknown name lists the valid ones
    let Err(GatewayError::ModelNotFound(m)) = resolve(&c, &named("gpt-9"), None) else {
        panic!("an unknown name is not found")
    };
    assert!(
        m.contains("m-paid") && m.contains("plan") && m.contains("local"),
        "{m}"
    );
    // no name at all
    assert!(matches!(
        resolve(&c, &RouteRequest::default(), None),
        Err(GatewayError::InvalidRequest { .. })
    ));
}

#[test]
fn headers_choose_replace_and_cap() {
    let c = chain(TOML, &[("PLANNER_KEY", "pk-planner")]);
    // the task header wins over the body's model, the tier header over both
    let r = resolve(
        &c,
        &RouteRequest {
            task_header: Some("plan"),
            ..named("local")
        },
        None,
    )
    .unwrap();
    assert_eq!(labels(&c, &r)[0].0, "paid");
    let r = resolve(
        &c,
        &RouteRequest {
            tier_header: Some("local"),
            ..named("paid")
        },
        None,
    )
    .unwrap();
    assert_eq!(labels(&c, &r), steps(&[("local", 3)]));
    assert!(resolve(
        &c,
        &RouteRequest {
            tier_header: Some("plan"),
            ..named("paid")
        },
        None
    )
    .is_err());
    // x-cascade-chain replaces the chain
    let r = resolve(
        &c,
        &RouteRequest {
            chain_header: Some(" local , cheap "),
            ..named("paid")
        },
        None,
    )
    .unwrap();
    assert_eq!(labels(&c, &r), steps(&[("local", 3), ("cheap", 1)]));
    for bad in ["nope", " , "] {
        let req = RouteRequest {
            chain_header: Some(bad),
            ..named("paid")
        };
        assert!(
            matches!(
                resolve(&c, &req, None),
                Err(GatewayError::InvalidRequest { .. })
            ),
            "{bad}"
        );
    }
    // x-cascade-max-retries lowers, never raises
    let r = resolve(
        &c,
        &RouteRequest {
            max_retries_header: Some("1"),
            ..named("paid")
        },
        None,
    )
    .unwrap();
    assert_eq!(
        labels(&c, &r),
        steps(&[("paid", 1), ("cheap", 1), ("local", 1)])
    );
    let r = resolve(
        &c,
        &RouteRequest {
            max_retries_header: Some("9"),
            ..named("paid")
        },
        None,
    )
    .unwrap();
    assert_eq!(
        labels(&c, &r),
        steps(&[("paid", 2), ("cheap", 1), ("local", 3)])
    );
    assert!(resolve(
        &c,
        &RouteRequest {
            max_retries_header: Some("-1"),
            ..named("paid")
        },
        None
    )
    .is_err());
}

#[test]
fn keys_and_minor_requests_narrow_the_chain() {
    let c = chain(TOML, &[("PLANNER_KEY", "pk-planner")]);
    let key = &c.config.keys[0];
    let r = resolve(&c, &named("paid"), Some(key)).unwrap();
    assert_eq!(labels(&c, &r), steps(&[("cheap", 1), ("local", 3)]));
    // a model of an allowed tier is fine; of none, refused
    assert!(resolve(&c, &named("m-cheap"), Some(key)).is_ok());
    assert!(matches!(
        resolve(&c, &named("m-paid"), Some(key)),
        Err(GatewayError::TierNotAllowed(_))
    ));
    // a minor request keeps free tiers only
    let r = resolve(&c, &named("tidy"), None).unwrap();
    assert!(r.minor);
    assert_eq!(labels(&c, &r), steps(&[("local", 3)]));
    let minor_paid = RouteRequest {
        minor_header: true,
        ..named("m-paid")
    };
    assert!(matches!(
        resolve(&c, &minor_paid, None),
        Err(GatewayError::NoEligibleTier(_))
    ));
}

#[test]
fn plan_gates_on_the_budget_and_escalates_when_owed() {
    let c = chain(TOML, &[("PLANNER_KEY", "pk-planner")]);
    let req = named("cheap");
    // nothing owed: the chain as configured
    let r = plan(&c, &req, None, || false).unwrap();
    assert!(!r.escalated);
    assert_eq!(labels(&c, &r)[0].0, "cheap");
    // a spent budget that rejects: refused, with the route
    let Err(refused) = plan(&c, &req, None, || true) else {
        panic!("a spent budget refuses")
    };
    assert!(matches!(refused.err, GatewayError::BudgetExceeded(_)));
    assert!(refused.route.is_some());
    // two failures owe one escalation: paid first, then the original chain
    let cheap = c.config.tier_by_name("cheap").unwrap();
    c.escalation[cheap].failure(2);
    c.escalation[cheap].failure(2);
    let r = plan(&c, &req, None, || false).unwrap();
    assert!(r.escalated);
    assert_eq!(
        labels(&c, &r),
        steps(&[("paid", 2), ("cheap", 1), ("local", 3)])
    );
    assert_eq!(
        c.metrics
            .escalations
            .with_label_values(&["cheap", "paid"])
            .get(),
        1
    );
    // taken: the next request is not escalated
    assert!(!plan(&c, &req, None, || false).unwrap().escalated);
    // asked for by the client; never for a key not allowed the tier, nor a minor request
    let asked = RouteRequest {
        escalate_header: true,
        ..named("cheap")
    };
    assert!(plan(&c, &asked, None, || false).unwrap().escalated);
    assert!(
        !plan(&c, &asked, Some(&c.config.keys[0]), || false)
            .unwrap()
            .escalated
    );
    let asked_minor = RouteRequest {
        minor_header: true,
        ..asked
    };
    assert!(!plan(&c, &asked_minor, None, || false).unwrap().escalated);
}

#[test]
fn aliases_stand_for_names_in_the_body_model_only() {
    let c = chain(TOML, &[("PLANNER_KEY", "pk-planner")]);
    let r = resolve(&c, &named("gpt-4o-mini"), None).unwrap();
    assert_eq!(labels(&c, &r)[0].0, "cheap");
    // dots and colons are fine: an alias is the client's exact string
    let r = resolve(&c, &named("claude-sonnet-4.5"), None).unwrap();
    assert!(r.task.is_some());
    let r = resolve(&c, &named("qwen2.5:7b"), None).unwrap();
    assert_eq!(labels(&c, &r), steps(&[("model:m-local", 2)]));
    // exact and case-sensitive; never behind a prefix or in a header
    for not_alias in ["GPT-4o-mini", "tier:gpt-4o-mini", "model:qwen2.5:7b"] {
        assert!(
            matches!(
                resolve(&c, &named(not_alias), None),
                Err(GatewayError::ModelNotFound(_))
            ),
            "{not_alias}"
        );
    }
    let header = RouteRequest {
        tier_header: Some("gpt-4o-mini"),
        ..named("cheap")
    };
    assert!(resolve(&c, &header, None).is_err());
    // the 404 lists them with the names
    let Err(GatewayError::ModelNotFound(m)) = resolve(&c, &named("nope"), None) else {
        panic!("not found")
    };
    assert!(m.contains("gpt-4o-mini"), "{m}");
    // a key's allowed tiers apply through an alias as through the name
    let key = &c.config.keys[0];
    assert!(matches!(
        resolve(&c, &named("claude-sonnet-4.5"), Some(key)),
        Ok(r) if labels(&c, &r)[0].0 == "cheap"
    ));
}
