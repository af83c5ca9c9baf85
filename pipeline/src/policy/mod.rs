//! The request path's policy stages: each a [`RequestStage`] that looks at a request's typed
//! [`RequestContext`] and returns a [`Decision`]: go on (with events to journal), reroute (tighten
//! where the request may go), or refuse with a [`RefusalCode`]. They run in the request's own
//! task, in the order the configuration gives ([`PolicyConfig`], built by [`build`]); their events
//! join the request's group in the journal (`request.received`, each step's event, then the model
//! call or `request.rejected`).
//!
//! Stages reach models only through a [`ModelCatalog`], so this crate never depends on the
//! engines (the inference registry implements the trait). A stage never mentions HTTP: the API
//! maps each [`RefusalCode`] to a status in one place.

mod catalog;
mod guardrail;
mod live;
mod router;
mod rules;
mod stats;
mod vault;

use std::sync::Arc;

use isnad_guard::{EntityType, Language, Scanner};
use isnad_schemas::{openai::Profile, NewEvent, RefusalCode};
use serde::{Deserialize, Serialize};

pub use catalog::{ModelCatalog, ModelInfo, ModelKind, Residency};
pub use guardrail::{prompt_language, Guardrail, Scan};
pub use live::LivePolicy;
pub use router::{
    estimate_prompt_tokens, model_not_found, Latencies, Router, AUTO_ROUTER, LOCAL_ONLY,
    PER_MESSAGE_TOKENS,
};
pub use rules::{
    parse_actions, Action, Actions, Facts, PolicyError, ResidencyMode, Route, RoutingPolicy,
    RuleError, VARIABLES,
};
pub use stats::{ModelStat, ModelStats};
pub use vault::{Restorer, Vault};

/// Which OpenAI endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// Path under the upstream's `/v1/`.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }

    /// The public path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }
}

/// What a client may use, from its credentials: the router and the fallback chain keep to it.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Model ids the client may use; `None` allows every model.
    pub models: Option<Arc<[String]>>,
    /// The client's data must stay inside the boundary: an external model is routed around or
    /// refused with 451, never called.
    pub local_only: bool,
}

impl Scope {
    /// Whether the client may use the model `id` (`auto-router` is always allowed: it routes
    /// within the scope).
    pub fn permits(&self, id: &str) -> bool {
        id == AUTO_ROUTER
            || self
                .models
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == id))
    }
}

/// What the policy stages know of a request. It lives in RAM for the request's life and is
/// never journaled: events carry hashes and counts, not `prompt`.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The text the request would send a model, one item per message content part or input.
    pub prompt: Arc<[String]>,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The model the client asked for.
    pub requested_model: String,
    /// The principal's team, if it has one.
    pub team: Option<String>,
    /// The principal's key id, if it has one.
    pub key: Option<String>,
    /// What the principal may use.
    pub scope: Scope,
    /// The first of `tools`, `tool_choice`, `response_format` the client set, if any: the model
    /// must support tools.
    pub uses_tools: Option<&'static str>,
    /// The client chose `dimensions`.
    pub uses_dimensions: bool,
    /// The routing profile the client asked for.
    pub profile: Option<Profile>,
    /// The request's data must stay inside the boundary: from the scope, the client's
    /// `X-Route-Policy: local-only`, or a stage rerouted it.
    pub local_only: bool,
    /// The prompt's language and the entity types in it, once the guardrail has looked.
    pub analysis: Option<Analysis>,
    /// Placeholders the guardrail put in `prompt`, and their values (RAM only).
    pub vault: Vault,
    /// What the route the router chose adds: its own fallbacks and whether to scan the output.
    pub route: RouteOptions,
}

impl RequestContext {
    /// A context for `prompt` to `endpoint`, asking for `model`, with nothing else known yet.
    pub fn new(prompt: Vec<String>, endpoint: Endpoint, model: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            endpoint,
            requested_model: model.into(),
            team: None,
            key: None,
            scope: Scope::default(),
            uses_tools: None,
            uses_dimensions: false,
            profile: None,
            local_only: false,
            analysis: None,
            vault: Vault::new(),
            route: RouteOptions::default(),
        }
    }
}

/// What the guardrail found in a prompt, for the stages after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// The prompt's language.
    pub language: Language,
    /// The entity types found, each once.
    pub pii: Vec<EntityType>,
}

/// What the chosen route adds to the model call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// Models to try, in order, if the chosen one fails (before the model's own fallbacks).
    pub fallbacks: Vec<String>,
    /// Scan the completion and end it before it reveals a type the policy blocks.
    pub output_scan: bool,
}

/// A change a stage makes to the request's context, for the stages after it and the call.
#[derive(Debug)]
pub enum Effect {
    /// The request must stay inside the boundary.
    LocalOnly,
    /// The prompt's language and entity types.
    Analysed {
        /// The language.
        language: Language,
        /// The types found.
        pii: Vec<EntityType>,
    },
    /// The prompt with values replaced by placeholders, and the vault to restore them.
    Redacted {
        /// The redacted prompt, part for part.
        prompt: Arc<[String]>,
        /// Placeholder to value.
        vault: Vault,
    },
    /// What the chosen route adds.
    Route(RouteOptions),
}

/// Why a stage refuses a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reason, from the closed set.
    pub code: RefusalCode,
    /// What the client reads.
    pub message: String,
    /// The parameter at fault, if one is.
    pub param: Option<String>,
}

impl Refusal {
    /// A refusal with no parameter named.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// The same, naming the parameter at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

/// Where a rerouted request may still go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// Only to models inside the boundary.
    LocalOnly,
}

/// What a stage decided.
#[derive(Debug)]
pub enum Decision {
    /// Go on; the events join the request's group.
    Continue(Vec<NewEvent>),
    /// Go on under a tighter constraint (the stages after this one see it in the context).
    Reroute {
        /// Events for the group.
        events: Vec<NewEvent>,
        /// The constraint.
        to: Constraint,
    },
    /// Go on, with changes to the context.
    Apply {
        /// Events for the group.
        events: Vec<NewEvent>,
        /// The changes, applied in order.
        effects: Vec<Effect>,
    },
    /// Refuse: the events, then `request.rejected` with the refusal, end the group.
    Refuse {
        /// Events for the group, before the refusal.
        events: Vec<NewEvent>,
        /// Why.
        refusal: Refusal,
    },
}

/// A stage could not decide (a bug or a broken dependency, not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An event could not be encoded.
    #[error(transparent)]
    Encode(#[from] isnad_schemas::Error),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A policy step on the request path.
pub trait RequestStage: Send + Sync + 'static {
    /// Stable name; output event ids are derived from it.
    fn name(&self) -> &str;

    /// Decides on the request, seeing the events of the stages before it.
    fn evaluate(&self, ctx: &RequestContext, earlier: &[NewEvent]) -> Result<Decision, StageError>;
}

/// What running the stages on a request gave.
#[derive(Debug)]
pub struct Evaluated {
    /// The stages' events, in order, with ids derived from the request.
    pub events: Vec<NewEvent>,
    /// The refusal, if a stage refused, and the stage's name.
    pub refusal: Option<(String, Refusal)>,
}

/// Runs `stages` in order on `request` (the `request.received` event, not included in the
/// result). Stops at the first refusal. A reroute tightens `ctx` for the stages after it.
pub fn evaluate(
    stages: &[Arc<dyn RequestStage>],
    request: &NewEvent,
    ctx: &mut RequestContext,
) -> Result<Evaluated, crate::Error> {
    let mut events: Vec<NewEvent> = Vec::new();
    for stage in stages {
        let failed = |e: StageError| crate::Error::RequestStage {
            stage: stage.name().to_owned(),
            reason: e.to_string(),
        };
        let decision = stage.evaluate(ctx, &events).map_err(failed)?;
        let (mine, refusal) = match decision {
            Decision::Continue(events) => (events, None),
            Decision::Reroute { events, to } => {
                match to {
                    Constraint::LocalOnly => ctx.local_only = true,
                }
                (events, None)
            }
            Decision::Apply { events, effects } => {
                for effect in effects {
                    ctx.apply(effect);
                }
                (events, None)
            }
            Decision::Refuse { events, refusal } => (events, Some(refusal)),
        };
        let base = events.len();
        events.extend(
            mine.into_iter()
                .enumerate()
                .map(|(i, ev)| crate::derive_output_of_event(stage.name(), request, base + i, ev)),
        );
        if let Some(refusal) = refusal {
            return Ok(Evaluated {
                events,
                refusal: Some((stage.name().to_owned(), refusal)),
            });
        }
    }
    Ok(Evaluated {
        events,
        refusal: None,
    })
}

impl RequestContext {
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::LocalOnly => self.local_only = true,
            Effect::Analysed { language, pii } => self.analysis = Some(Analysis { language, pii }),
            Effect::Redacted { prompt, vault } => {
                self.prompt = prompt;
                self.vault = vault;
            }
            Effect::Route(options) => self.route = options,
        }
    }
}

/// `[pipeline]`: which request stages run, in order.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Stage names, in order; the router comes last (it picks the model).
    pub request_stages: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            request_stages: vec!["guardrail".into(), "router".into()],
        }
    }
}

/// The request stages this build knows.
pub const STAGES: &[&str] = &["guardrail", "router"];

/// A `[pipeline]` section that cannot be built: the key path and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct PolicyConfigError {
    /// Key path, e.g. `pipeline.request_stages[2]`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl PolicyConfig {
    /// Checks the section without building anything.
    pub fn check(&self) -> Result<(), PolicyConfigError> {
        let key = |i: usize| format!("pipeline.request_stages[{i}]");
        for (i, name) in self.request_stages.iter().enumerate() {
            if !STAGES.contains(&name.as_str()) {
                return Err(PolicyConfigError {
                    key: key(i),
                    reason: format!("unknown stage `{name}` (known: {})", STAGES.join(", ")),
                });
            }
            if self.request_stages[..i].contains(name) {
                return Err(PolicyConfigError {
                    key: key(i),
                    reason: format!("stage `{name}` is listed twice"),
                });
            }
        }
        if self.request_stages.last().map(String::as_str) != Some("router") {
            return Err(PolicyConfigError {
                key: "pipeline.request_stages".into(),
                reason: "the last stage must be `router` (it picks the model)".into(),
            });
        }
        Ok(())
    }
}

/// What the request stages read besides the catalogue.
#[derive(Clone)]
pub struct StageInputs {
    /// The routing and guardrail policy in force.
    pub policy: LivePolicy,
    /// The guardrail's scanner.
    pub scanner: Arc<Scanner>,
    /// Measured model latencies, for the `performance` profile.
    pub latencies: Latencies,
}

/// Builds the request stages `config` lists, over `catalog`, reading `inputs`.
pub fn build(
    config: &PolicyConfig,
    catalog: Arc<dyn ModelCatalog>,
    inputs: &StageInputs,
) -> Result<Vec<Arc<dyn RequestStage>>, PolicyConfigError> {
    config.check()?;
    Ok(config
        .request_stages
        .iter()
        .map(|name| -> Arc<dyn RequestStage> {
            match name.as_str() {
                "guardrail" => Arc::new(Guardrail::new(
                    inputs.scanner.clone(),
                    inputs.policy.clone(),
                )),
                // `check` admits only the names in `STAGES`; the router is the rest.
                _ => Arc::new(Router::with_latencies(
                    catalog.clone(),
                    inputs.policy.clone(),
                    inputs.latencies.clone(),
                )),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests;
