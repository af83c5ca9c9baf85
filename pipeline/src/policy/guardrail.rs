//! The guardrail: scans what a request would send a model, and applies its team's action for
//! each entity type found (`allow`, `redact`, `local_only`, `block`).
//!
//! - `block` refuses the request (451 `pii_detected`) with `guardrail.violation`;
//! - `local_only` keeps the request inside the boundary (the router refuses or reroutes a
//!   request for an external model, as the policy's `residency` says);
//! - `redact` replaces each value by a typed placeholder before any model sees it; the
//!   request's [`Vault`] restores the placeholders in the answer;
//! - `allow` lets the value through.
//!
//! `guardrail.evaluated` records the action and the types and counts found, and the hash of
//! the policy that decided; never a value. The stage also tells the router the prompt's
//! language and the types found, which its conditions read.

use std::collections::BTreeMap;
use std::sync::Arc;

use isnad_guard::{detect_language, EntityType, Finding, Scanner};
use isnad_schemas::{GuardrailEvaluated, GuardrailViolation, NewEvent, RefusalCode};

use super::{
    Action, Decision, Effect, LivePolicy, Refusal, RequestContext, RequestStage, StageError, Vault,
};

/// What the guardrail made of one request, before any action is taken.
#[derive(Debug)]
pub struct Scan {
    /// The findings of each prompt part, in part order.
    pub parts: Vec<Vec<Finding>>,
    /// The action for each type found, with how many times it was found.
    pub actions: BTreeMap<EntityType, (Action, u32)>,
}

impl Scan {
    /// The strictest action any finding calls for (`allow` when nothing was found).
    pub fn action(&self) -> Action {
        self.actions
            .values()
            .map(|(a, _)| *a)
            .max()
            .unwrap_or(Action::Allow)
    }

    /// The types whose action is `a`.
    pub fn with_action(&self, a: Action) -> Vec<EntityType> {
        self.actions
            .iter()
            .filter(|(_, (action, _))| *action == a)
            .map(|(e, _)| *e)
            .collect()
    }
}

/// The guardrail stage.
pub struct Guardrail {
    scanner: Arc<Scanner>,
    policy: LivePolicy,
}

impl Guardrail {
    /// A guardrail that scans with `scanner` and acts as the live `policy` says.
    pub fn new(scanner: Arc<Scanner>, policy: LivePolicy) -> Self {
        Self { scanner, policy }
    }

    /// Scans `prompt` and looks up each type's action for `team` in the policy in force.
    pub fn scan(&self, team: Option<&str>, prompt: &[String]) -> (Scan, Arc<super::RoutingPolicy>) {
        let policy = self.policy.current();
        let parts: Vec<Vec<Finding>> = prompt.iter().map(|p| self.scanner.scan(p)).collect();
        let mut actions: BTreeMap<EntityType, (Action, u32)> = BTreeMap::new();
        for f in parts.iter().flatten() {
            actions
                .entry(f.entity)
                .or_insert_with(|| (policy.action(team, f.entity), 0))
                .1 += 1;
        }
        (Scan { parts, actions }, policy)
    }
}

/// The language of a prompt: its parts read as one text.
pub fn prompt_language(prompt: &[String]) -> isnad_guard::Language {
    match prompt {
        [one] => detect_language(one),
        parts => detect_language(&parts.join("\n")),
    }
}

fn names(types: &[EntityType]) -> Vec<String> {
    types.iter().map(|e| e.as_str().to_owned()).collect()
}

impl RequestStage for Guardrail {
    fn name(&self) -> &str {
        "guardrail"
    }

    fn evaluate(
        &self,
        ctx: &RequestContext,
        _earlier: &[NewEvent],
    ) -> Result<Decision, StageError> {
        let (scan, policy) = self.scan(ctx.team.as_deref(), &ctx.prompt);
        let action = scan.action();
        let evaluated = NewEvent::new(&GuardrailEvaluated {
            action: action.as_str().into(),
            findings: scan
                .actions
                .iter()
                .map(|(e, (_, count))| isnad_schemas::Finding {
                    kind: e.as_str().into(),
                    count: *count,
                })
                .collect(),
            policy: policy.hash().into(),
        })?;
        let blocked = scan.with_action(Action::Block);
        if !blocked.is_empty() {
            let violation = NewEvent::new(&GuardrailViolation {
                violation_type: "pii_detected".into(),
                entities: names(&blocked),
                action_taken: "request_blocked".into(),
            })?;
            return Ok(Decision::Refuse {
                events: vec![evaluated, violation],
                refusal: Refusal::new(
                    RefusalCode::PiiDetected,
                    format!(
                        "this request carries data that its policy blocks: {}",
                        names(&blocked).join(", ")
                    ),
                ),
            });
        }
        let mut effects = vec![Effect::Analysed {
            language: prompt_language(&ctx.prompt),
            pii: scan.actions.keys().copied().collect(),
        }];
        if action == Action::LocalOnly {
            effects.push(Effect::LocalOnly);
        }
        let redact: Vec<EntityType> = scan.with_action(Action::Redact);
        if !redact.is_empty() {
            let mut vault = Vault::new();
            let prompt: Vec<String> = ctx
                .prompt
                .iter()
                .zip(&scan.parts)
                .map(|(text, found)| vault.redact(text, found, |e| redact.contains(&e)))
                .collect();
            effects.push(Effect::Redacted {
                prompt: prompt.into(),
                vault,
            });
        }
        Ok(Decision::Apply {
            events: vec![evaluated],
            effects,
        })
    }
}
