//! The guardrail's place on the request path.

use isnad_schemas::{GuardrailEvaluated, NewEvent};

use super::{Decision, RequestContext, RequestStage, StageError};

/// The guardrail until the guardrail issue fills it: it records that the request was looked at
/// and lets it through.
pub struct PassThroughGuardrail;

impl RequestStage for PassThroughGuardrail {
    fn name(&self) -> &str {
        "guardrail"
    }

    fn evaluate(
        &self,
        _ctx: &RequestContext,
        _earlier: &[NewEvent],
    ) -> Result<Decision, StageError> {
        let ev = GuardrailEvaluated {
            action: "allow".into(),
            findings: vec![],
            policy: "pass-through".into(),
        };
        Ok(Decision::Continue(vec![NewEvent::new(&ev)?]))
    }
}
