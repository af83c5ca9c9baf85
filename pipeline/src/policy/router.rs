//! Picks the model a request goes to, or refuses it: the one place that decides whether a model
//! exists for the endpoint (404), whether the key may use it (403), whether the request's data
//! may go there (451) and whether it can honour the parameters asked for (422).
//!
//! For `auto-router` the routing policy's routes are tried in order (first match wins; a route
//! whose model this request may not use is passed over), then the policy's `default`, then the
//! configured default chat model; a client's profile (`cost`, `performance`, `balanced`) chooses
//! among every model the request may use instead. A route applies to a request that names its
//! model only if the route's condition reads `model`. A request whose data must stay inside the
//! boundary (the guardrail's `local_only`, the key's scope, `X-Route-Policy: local-only`, or a
//! condition that failed at run time: the router fails closed) goes only to local models: one
//! that names an external model is refused with 451 (`residency: enforce`) or sent to a local
//! model (`residency: reroute`).

use std::sync::Arc;

use isnad_guard::Language;
use isnad_schemas::{openai::Profile, NewEvent, RefusalCode, RouteSelected};
use parking_lot::RwLock;

use super::{
    guardrail::prompt_language, Decision, Effect, Endpoint, Facts, LivePolicy, ModelCatalog,
    ModelInfo, ModelKind, Refusal, RequestContext, RequestStage, Residency, ResidencyMode,
    RouteOptions, StageError,
};

/// The model id that means "let isnad choose".
pub const AUTO_ROUTER: &str = "auto-router";
/// Route policy of a request whose data must stay inside the boundary.
pub const LOCAL_ONLY: &str = "local-only";

/// Tokens a message costs beyond its text (role and framing), in the estimate.
pub const PER_MESSAGE_TOKENS: u64 = 8;

/// The prompt's tokens, estimated before a model (and so a tokenizer) is chosen: each part's
/// UTF-8 bytes divided by 4, rounded up, plus [`PER_MESSAGE_TOKENS`] per part. Byte-based, so
/// Arabic (2 bytes a letter) counts about one token per two letters, close to what BPE
/// tokenizers trained on Arabic give; English about one per four characters.
pub fn estimate_prompt_tokens(prompt: &[String]) -> u64 {
    prompt
        .iter()
        .map(|p| (p.len() as u64).div_ceil(4) + PER_MESSAGE_TOKENS)
        .sum()
}

/// The message of a request for a model the catalogue does not have.
pub fn model_not_found(model: &str) -> String {
    format!("the model `{model}` does not exist or you do not have access to it")
}

/// Each model's measured mean latency in microseconds, for the `performance` profile (the
/// server plugs in the journal's model statistics once they run).
#[derive(Clone, Default)]
pub struct Latencies(Arc<RwLock<Option<LatencyFn>>>);

type LatencyFn = Arc<dyn Fn(&str) -> Option<f64> + Send + Sync>;

impl Latencies {
    /// Reads latencies from `f` from now on.
    pub fn set(&self, f: impl Fn(&str) -> Option<f64> + Send + Sync + 'static) {
        *self.0.write() = Some(Arc::new(f));
    }

    fn of(&self, id: &str) -> Option<f64> {
        let f = self.0.read().clone();
        f.and_then(|f| f(id))
    }
}

/// The router stage.
pub struct Router {
    catalog: Arc<dyn ModelCatalog>,
    policy: LivePolicy,
    latencies: Latencies,
}

/// What the router chose.
struct Chosen<'a> {
    model: ModelInfo<'a>,
    policy: String,
    options: RouteOptions,
    local_only: bool,
}

impl Router {
    /// A router over `catalog`, reading the live `policy`.
    pub fn new(catalog: Arc<dyn ModelCatalog>, policy: LivePolicy) -> Self {
        Self::with_latencies(catalog, policy, Latencies::default())
    }

    /// The same, reading measured latencies from `latencies`.
    pub fn with_latencies(
        catalog: Arc<dyn ModelCatalog>,
        policy: LivePolicy,
        latencies: Latencies,
    ) -> Self {
        Self {
            catalog,
            policy,
            latencies,
        }
    }

    /// What a condition sees of `ctx`.
    pub fn facts(ctx: &RequestContext) -> Facts {
        let (language, pii) = match &ctx.analysis {
            Some(a) => (
                a.language,
                a.pii.iter().map(|e| e.as_str().into()).collect(),
            ),
            None => (prompt_language(&ctx.prompt), vec![]),
        };
        let hour = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            / 3600
            % 24) as u32;
        Facts {
            language: Language::as_str(language).into(),
            prompt_tokens: estimate_prompt_tokens(&ctx.prompt),
            pii,
            team: ctx.team.clone().unwrap_or_default(),
            key: ctx.key.clone().unwrap_or_default(),
            profile: ctx
                .profile
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            model: ctx.requested_model.clone(),
            hour,
        }
    }

    /// The model for `ctx`, or why there is none.
    fn route(&self, ctx: &RequestContext, facts: &Facts) -> Result<Chosen<'_>, Refusal> {
        let policy = self.policy.current();
        let kind = match ctx.endpoint {
            Endpoint::Chat => ModelKind::Chat,
            Endpoint::Embeddings => ModelKind::Embedding,
        };
        let auto = ctx.requested_model == AUTO_ROUTER && kind == ModelKind::Chat;
        let mut local_only = ctx.local_only || ctx.scope.local_only;
        // The routes, for `auto-router` and for chat requests whose route reads `model`.
        if kind == ModelKind::Chat {
            for matched in policy.matches(facts) {
                let route = match matched {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "a route's condition failed: the request stays inside the boundary");
                        local_only = true;
                        continue;
                    }
                };
                if !auto && !route.reads_model() {
                    continue;
                }
                let eligible = self
                    .catalog
                    .model(&route.model)
                    .filter(|m| m.kind == kind && ctx.scope.permits(m.id))
                    .filter(|m| !local_only || m.residency == Residency::Local);
                if let Some(model) = eligible {
                    return Ok(Chosen {
                        model,
                        policy: route.name.clone(),
                        options: RouteOptions {
                            fallbacks: route.fallbacks.clone(),
                            output_scan: route.output_scan,
                        },
                        local_only,
                    });
                }
            }
        }
        let name = |default: &str| {
            if local_only {
                LOCAL_ONLY.to_owned()
            } else {
                default.to_owned()
            }
        };
        let chosen = |model, policy| Chosen {
            model,
            policy,
            options: RouteOptions::default(),
            local_only,
        };
        if !auto {
            let model = self
                .catalog
                .model(&ctx.requested_model)
                .filter(|m| m.kind == kind)
                .ok_or_else(|| {
                    Refusal::new(
                        RefusalCode::ModelNotFound,
                        model_not_found(&ctx.requested_model),
                    )
                    .param("model")
                })?;
            if !ctx.scope.permits(model.id) {
                return Err(Refusal::new(
                    RefusalCode::ModelNotPermitted,
                    format!("these credentials may not use the model `{}`", model.id),
                ));
            }
            if !local_only || model.residency == Residency::Local {
                return Ok(chosen(model, name("requested")));
            }
            let outside = Refusal::new(
                RefusalCode::SovereigntyViolation,
                format!(
                    "model `{}` runs outside the data boundary, and this request's data must stay inside it",
                    model.id
                ),
            );
            // Embeddings are not rerouted: another model's vectors are not comparable.
            if policy.residency() == ResidencyMode::Enforce || kind != ModelKind::Chat {
                return Err(outside);
            }
            let local = self.eligible(ctx, kind, true);
            return match self.pick(ctx.profile, &local) {
                Some(m) => Ok(chosen(m, "reroute".into())),
                None => Err(outside),
            };
        }
        let has_default = policy.default_model().is_some() || self.catalog.default_chat().is_some();
        if !has_default && policy.routes().is_empty() {
            // `auto-router` exists only where a default chat model or a route is configured.
            return Err(
                Refusal::new(RefusalCode::ModelNotFound, model_not_found(AUTO_ROUTER))
                    .param("model"),
            );
        }
        let eligible = self.eligible(ctx, kind, local_only);
        if ctx.profile.is_some() {
            if let Some(m) = self.pick(ctx.profile, &eligible) {
                let profile = ctx.profile.map_or("", Profile::as_str);
                return Ok(chosen(m, name(&format!("profile:{profile}"))));
            }
        }
        let defaults = policy
            .default_model()
            .and_then(|d| self.catalog.model(d))
            .into_iter()
            .chain(self.catalog.default_chat());
        for d in defaults {
            if eligible.iter().any(|m| m.id == d.id) {
                return Ok(chosen(d, name("default")));
            }
        }
        match eligible.first() {
            Some(m) => Ok(chosen(*m, name("default"))),
            None if !self.eligible(ctx, kind, false).is_empty() => Err(Refusal::new(
                RefusalCode::SovereigntyViolation,
                "no chat model inside the data boundary is available to this request",
            )),
            None => Err(Refusal::new(
                RefusalCode::ModelNotPermitted,
                "these credentials may use no chat model",
            )),
        }
    }

    /// The models of `kind` the request may use (only local ones if `local_only`), in
    /// configuration order.
    fn eligible(
        &self,
        ctx: &RequestContext,
        kind: ModelKind,
        local_only: bool,
    ) -> Vec<ModelInfo<'_>> {
        self.catalog
            .models()
            .into_iter()
            .filter(|m| m.kind == kind && ctx.scope.permits(m.id))
            .filter(|m| !local_only || m.residency == Residency::Local)
            .collect()
    }

    /// The model `profile` prefers among `models` (the first for no profile): `cost` the
    /// cheapest (prompt plus completion price), `performance` the lowest measured latency
    /// (unmeasured models last), `balanced` the lowest sum of the two, each scaled to the
    /// candidates' largest. Ties keep configuration order.
    fn pick<'a>(
        &self,
        profile: Option<Profile>,
        models: &[ModelInfo<'a>],
    ) -> Option<ModelInfo<'a>> {
        let price =
            |m: &ModelInfo<'_>| (m.price_in_micros_per_1k + m.price_out_micros_per_1k) as f64;
        let latencies: Vec<Option<f64>> = models.iter().map(|m| self.latencies.of(m.id)).collect();
        let max_price = models.iter().map(price).fold(0.0, f64::max).max(1.0);
        let max_latency = latencies
            .iter()
            .flatten()
            .copied()
            .fold(0.0, f64::max)
            .max(1.0);
        // Unmeasured: as slow as the slowest measured one, and a little slower.
        let latency = |i: usize| latencies[i].map_or(1.01, |l| l / max_latency);
        let score = |i: usize, m: &ModelInfo<'_>| match profile {
            None => 0.0,
            Some(Profile::Cost) => price(m) / max_price,
            Some(Profile::Performance) => latency(i),
            Some(Profile::Balanced) => price(m) / max_price + latency(i),
        };
        models
            .iter()
            .enumerate()
            .min_by(|(i, a), (j, b)| score(*i, a).total_cmp(&score(*j, b)).then(i.cmp(j)))
            .map(|(_, m)| *m)
    }
}

/// 422 when the chosen model cannot honour a parameter, rather than silently dropping it.
fn check_capabilities(ctx: &RequestContext, model: &ModelInfo<'_>) -> Result<(), Refusal> {
    if let Some(p) = ctx.uses_tools.filter(|_| !model.supports_tools) {
        return Err(Refusal::new(
            RefusalCode::UnsupportedParameter,
            format!("model `{}` does not support `{p}`", model.id),
        )
        .param(p));
    }
    if ctx.uses_dimensions && model.kind == ModelKind::Embedding && !model.variable_dimensions {
        return Err(Refusal::new(
            RefusalCode::UnsupportedParameter,
            format!("model `{}` has a fixed number of dimensions", model.id),
        )
        .param("dimensions"));
    }
    Ok(())
}

impl RequestStage for Router {
    fn name(&self) -> &str {
        "router"
    }

    fn evaluate(
        &self,
        ctx: &RequestContext,
        _earlier: &[NewEvent],
    ) -> Result<Decision, StageError> {
        let facts = Self::facts(ctx);
        let chosen = self
            .route(ctx, &facts)
            .and_then(|c| check_capabilities(ctx, &c.model).map(|()| c));
        Ok(match chosen {
            Ok(c) => {
                let mut effects = vec![Effect::Route(c.options)];
                if c.local_only {
                    effects.push(Effect::LocalOnly);
                }
                Decision::Apply {
                    events: vec![NewEvent::new(&RouteSelected {
                        requested_model: ctx.requested_model.clone(),
                        model: c.model.id.to_owned(),
                        provider: c.model.provider.to_owned(),
                        residency: c.model.residency.as_str().into(),
                        policy: c.policy,
                    })?],
                    effects,
                }
            }
            Err(refusal) => Decision::Refuse {
                events: vec![],
                refusal,
            },
        })
    }
}
