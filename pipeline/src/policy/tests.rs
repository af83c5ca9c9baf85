#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use isnad_schemas::{RequestReceived, RouteSelected};

use super::*;

/// `abroad` (external, the default chat model), `home` and `home2` (local), `embed` (local
/// embeddings, fixed dimensions), `plain` (local chat without tools).
struct Catalog(Vec<(&'static str, ModelKind, Residency, bool)>);

impl ModelCatalog for Catalog {
    fn model(&self, id: &str) -> Option<ModelInfo<'_>> {
        self.models().into_iter().find(|m| m.id == id)
    }
    fn default_chat(&self) -> Option<ModelInfo<'_>> {
        self.model("abroad")
    }
    fn models(&self) -> Vec<ModelInfo<'_>> {
        self.0
            .iter()
            .map(|&(id, kind, residency, supports_tools)| ModelInfo {
                id,
                provider: "up",
                kind,
                residency,
                supports_tools,
                variable_dimensions: false,
                price_in_micros_per_1k: 0,
                price_out_micros_per_1k: 0,
            })
            .collect()
    }
}

fn catalog() -> Arc<dyn ModelCatalog> {
    use ModelKind::*;
    use Residency::*;
    Arc::new(Catalog(vec![
        ("abroad", Chat, External, true),
        ("home", Chat, Local, true),
        ("home2", Chat, Local, true),
        ("plain", Chat, Local, false),
        ("embed", Embedding, Local, false),
    ]))
}

/// A guardrail that sends every request inside the boundary.
struct KeepInside;

impl RequestStage for KeepInside {
    fn name(&self) -> &str {
        "keep-inside"
    }
    fn evaluate(&self, _: &RequestContext, _: &[NewEvent]) -> Result<Decision, StageError> {
        Ok(Decision::Reroute {
            events: vec![],
            to: Constraint::LocalOnly,
        })
    }
}

fn ctx(model: &str, scope: Scope) -> RequestContext {
    RequestContext {
        prompt: Arc::from(vec!["hi".to_owned()]),
        endpoint: Endpoint::Chat,
        requested_model: model.into(),
        team: None,
        local_only: scope.local_only,
        scope,
        uses_tools: None,
        uses_dimensions: false,
        profile: None,
    }
}

fn request() -> NewEvent {
    NewEvent::new(&RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "m".into(),
        prompt_hash: "sha256:00".into(),
        stream: false,
        client_ip: None,
    })
    .unwrap()
}

/// Runs the default stages (guardrail, router), optionally after a rerouting stage.
fn run(mut c: RequestContext, reroute: bool) -> Result<(String, String, String), Refusal> {
    let mut stages = build(&PolicyConfig::default(), catalog()).unwrap();
    if reroute {
        stages.insert(0, Arc::new(KeepInside));
    }
    let out = evaluate(&stages, &request(), &mut c).unwrap();
    if let Some((stage, refusal)) = out.refusal {
        assert_eq!(stage, "router");
        return Err(refusal);
    }
    let route: RouteSelected = out.events.last().unwrap().payload_as().unwrap();
    Ok((route.model, route.residency, route.policy))
}

fn owned(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

fn code(r: Result<(String, String, String), Refusal>) -> RefusalCode {
    r.unwrap_err().code
}

fn local_only() -> Scope {
    Scope {
        models: None,
        local_only: true,
    }
}

fn only(ids: &[&str]) -> Scope {
    Scope {
        models: Some(ids.iter().map(|s| (*s).to_owned()).collect()),
        local_only: false,
    }
}

#[test]
fn an_unrestricted_client_gets_what_it_asks_for() {
    let got = run(ctx("abroad", Scope::default()), false).unwrap();
    assert_eq!(got, owned("abroad", "external", "requested"));
    let got = run(ctx(AUTO_ROUTER, Scope::default()), false).unwrap();
    assert_eq!(got, owned("abroad", "external", "default"));
}

#[test]
fn local_only_data_is_refused_an_external_model_and_rerouted_by_auto_router() {
    assert_eq!(
        code(run(ctx("abroad", local_only()), false)),
        RefusalCode::SovereigntyViolation
    );
    assert_eq!(
        code(run(ctx("abroad", Scope::default()), true)),
        RefusalCode::SovereigntyViolation
    );
    let got = run(ctx(AUTO_ROUTER, local_only()), false).unwrap();
    assert_eq!(got, owned("home", "local", LOCAL_ONLY));
    let got = run(ctx("home2", Scope::default()), true).unwrap();
    assert_eq!(got, owned("home2", "local", LOCAL_ONLY));
}

#[test]
fn an_unknown_model_or_one_of_another_kind_is_not_found_naming_the_parameter() {
    for model in ["nope", "embed"] {
        let r = run(ctx(model, Scope::default()), false).unwrap_err();
        assert_eq!(r.code, RefusalCode::ModelNotFound);
        assert_eq!(r.message, model_not_found(model));
        assert_eq!(r.param.as_deref(), Some("model"));
    }
    let mut c = ctx("home", Scope::default());
    c.endpoint = Endpoint::Embeddings;
    assert_eq!(code(run(c, false)), RefusalCode::ModelNotFound);
    let mut c = ctx(AUTO_ROUTER, Scope::default());
    c.endpoint = Endpoint::Embeddings;
    assert_eq!(code(run(c, false)), RefusalCode::ModelNotFound);
}

#[test]
fn a_scoped_client_is_held_to_its_models() {
    assert_eq!(
        code(run(ctx("home", only(&["home2"])), false)),
        RefusalCode::ModelNotPermitted
    );
    let got = run(ctx(AUTO_ROUTER, only(&["home2"])), false).unwrap();
    assert_eq!(got, owned("home2", "local", "default"));
    // Permitted, but only outside the boundary: the data decides, 451.
    let scope = Scope {
        local_only: true,
        ..only(&["abroad"])
    };
    assert_eq!(
        code(run(ctx(AUTO_ROUTER, scope), false)),
        RefusalCode::SovereigntyViolation
    );
    assert_eq!(
        code(run(ctx(AUTO_ROUTER, only(&[])), false)),
        RefusalCode::ModelNotPermitted
    );
}

#[test]
fn a_model_that_cannot_honour_a_parameter_is_refused_422() {
    let mut c = ctx("plain", Scope::default());
    c.uses_tools = Some("response_format");
    let r = run(c, false).unwrap_err();
    assert_eq!(r.code, RefusalCode::UnsupportedParameter);
    assert_eq!(r.param.as_deref(), Some("response_format"));
    let mut c = ctx("embed", Scope::default());
    c.endpoint = Endpoint::Embeddings;
    c.uses_dimensions = true;
    let r = run(c, false).unwrap_err();
    assert_eq!(
        (r.code, r.param.as_deref()),
        (RefusalCode::UnsupportedParameter, Some("dimensions"))
    );
}

#[test]
fn the_stage_list_is_checked_with_its_key_path() {
    let bad = |stages: &[&str]| {
        PolicyConfig {
            request_stages: stages.iter().map(|s| (*s).to_owned()).collect(),
        }
        .check()
        .unwrap_err()
    };
    let e = bad(&["guardrail", "nope", "router"]);
    assert_eq!(e.key, "pipeline.request_stages[1]");
    assert!(e.reason.contains("unknown stage `nope`"), "{e}");
    assert_eq!(bad(&["router", "guardrail"]).key, "pipeline.request_stages");
    assert_eq!(bad(&["router", "router"]).key, "pipeline.request_stages[1]");
    assert!(PolicyConfig {
        request_stages: vec!["router".into()]
    }
    .check()
    .is_ok());
}

#[test]
fn stage_events_get_ids_derived_from_the_request() {
    let stages = build(&PolicyConfig::default(), catalog()).unwrap();
    let req = request();
    let a = evaluate(&stages, &req, &mut ctx("home", Scope::default())).unwrap();
    let b = evaluate(&stages, &req, &mut ctx("home", Scope::default())).unwrap();
    let ids = |e: &Evaluated| e.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.events.len(), 2);
    assert_ne!(a.events[0].id, a.events[1].id);
}
