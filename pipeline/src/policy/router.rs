//! Picks the model a request goes to, or refuses it: the one place that decides whether a model
//! exists for the endpoint (404), whether the key may use it (403), whether the request's data
//! may go there (451) and whether it can honour the parameters asked for (422).

use std::sync::Arc;

use isnad_schemas::{NewEvent, RefusalCode, RouteSelected};

use super::{
    Decision, Endpoint, ModelCatalog, ModelInfo, ModelKind, Refusal, RequestContext, RequestStage,
    Residency, StageError,
};

/// The model id that means "let isnad choose".
pub const AUTO_ROUTER: &str = "auto-router";
/// Route policy of a request whose data must stay inside the boundary.
pub const LOCAL_ONLY: &str = "local-only";

/// The message of a request for a model the catalogue does not have.
pub fn model_not_found(model: &str) -> String {
    format!("the model `{model}` does not exist or you do not have access to it")
}

/// Picks the model: the one asked for, or for `auto-router` the configured default (else the
/// first chat model the request may use).
pub struct Router {
    catalog: Arc<dyn ModelCatalog>,
}

impl Router {
    /// A router over `catalog`.
    pub fn new(catalog: Arc<dyn ModelCatalog>) -> Self {
        Self { catalog }
    }

    /// The model for `ctx` and the policy that chose it, or why there is none.
    fn route(&self, ctx: &RequestContext) -> Result<(ModelInfo<'_>, &'static str), Refusal> {
        let inside = |m: &ModelInfo<'_>| !ctx.local_only || m.residency == Residency::Local;
        let policy = |default: &'static str| if ctx.local_only { LOCAL_ONLY } else { default };
        let kind = match ctx.endpoint {
            Endpoint::Chat => ModelKind::Chat,
            Endpoint::Embeddings => ModelKind::Embedding,
        };
        if ctx.requested_model != AUTO_ROUTER || kind != ModelKind::Chat {
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
            if !inside(&model) {
                return Err(Refusal::new(
                    RefusalCode::SovereigntyViolation,
                    format!(
                        "model `{}` runs outside the data boundary, and this request's data must stay inside it",
                        model.id
                    ),
                ));
            }
            return Ok((model, policy("requested")));
        }
        let permitted = |m: &ModelInfo<'_>| m.kind == ModelKind::Chat && ctx.scope.permits(m.id);
        let candidates: Vec<ModelInfo<'_>> = self
            .catalog
            .default_chat()
            .into_iter()
            .chain(self.catalog.models())
            .filter(permitted)
            .collect();
        if self.catalog.default_chat().is_none() {
            // `auto-router` exists only where a default chat model is configured.
            return Err(
                Refusal::new(RefusalCode::ModelNotFound, model_not_found(AUTO_ROUTER))
                    .param("model"),
            );
        }
        match candidates.iter().find(|m| inside(m)) {
            Some(m) => Ok((*m, policy("default"))),
            None if !candidates.is_empty() => Err(Refusal::new(
                RefusalCode::SovereigntyViolation,
                "no chat model inside the data boundary is available to this request",
            )),
            None => Err(Refusal::new(
                RefusalCode::ModelNotPermitted,
                "these credentials may use no chat model",
            )),
        }
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
        let chosen = self
            .route(ctx)
            .and_then(|(model, policy)| check_capabilities(ctx, &model).map(|()| (model, policy)));
        Ok(match chosen {
            Ok((model, policy)) => Decision::Continue(vec![NewEvent::new(&RouteSelected {
                requested_model: ctx.requested_model.clone(),
                model: model.id.to_owned(),
                provider: model.provider.to_owned(),
                residency: model.residency.as_str().into(),
                policy: policy.into(),
            })?]),
            Err(refusal) => Decision::Refuse {
                events: vec![],
                refusal,
            },
        })
    }
}
