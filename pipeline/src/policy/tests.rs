#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use isnad_schemas::{openai::Profile, RequestReceived, RouteSelected};

use super::*;

/// `abroad` (external, the default chat model), `home` and `home2` (local), `embed` (local
/// embeddings, fixed dimensions), `plain` (local chat without tools); `home2` is the cheapest
/// chat model, `plain` the dearest.
struct Catalog(Vec<(&'static str, ModelKind, Residency, bool, u64)>);

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
            .map(|&(id, kind, residency, supports_tools, price)| ModelInfo {
                id,
                provider: "up",
                kind,
                residency,
                supports_tools,
                variable_dimensions: false,
                price_in_micros_per_1k: price,
                price_out_micros_per_1k: price,
            })
            .collect()
    }
}

fn catalog() -> Arc<dyn ModelCatalog> {
    use ModelKind::*;
    use Residency::*;
    Arc::new(Catalog(vec![
        ("abroad", Chat, External, true, 30),
        ("home", Chat, Local, true, 20),
        ("home2", Chat, Local, true, 10),
        ("plain", Chat, Local, false, 40),
        ("embed", Embedding, Local, false, 0),
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
    prompt_ctx(model, scope, "hi")
}

fn prompt_ctx(model: &str, scope: Scope, prompt: &str) -> RequestContext {
    let mut c = RequestContext::new(vec![prompt.to_owned()], Endpoint::Chat, model);
    c.local_only = scope.local_only;
    c.scope = scope;
    c
}

fn inputs(policy: &str) -> StageInputs {
    StageInputs {
        policy: LivePolicy::new(RoutingPolicy::parse(policy, "routing.yaml").unwrap()),
        scanner: Arc::new(Scanner::new().unwrap()),
        latencies: Latencies::default(),
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
fn run(c: RequestContext, reroute: bool) -> Result<(String, String, String), Refusal> {
    run_with(&inputs(""), c, reroute).map(|(route, _)| route)
}

/// Runs the default stages under `inputs`; gives the route and the context after the stages.
/// Runs an `auto-router` request with `prompt` and no key restrictions; it must not be refused.
fn auto(inputs: &StageInputs, prompt: &str) -> ((String, String, String), RequestContext) {
    run_with(
        inputs,
        prompt_ctx(AUTO_ROUTER, Scope::default(), prompt),
        false,
    )
    .unwrap()
}

fn run_with(
    inputs: &StageInputs,
    mut c: RequestContext,
    reroute: bool,
) -> Result<((String, String, String), RequestContext), Refusal> {
    let mut stages = build(&PolicyConfig::default(), catalog(), inputs).unwrap();
    if reroute {
        stages.insert(0, Arc::new(KeepInside));
    }
    let out = evaluate(&stages, &request(), &mut c).unwrap();
    if let Some((_, refusal)) = out.refusal {
        return Err(refusal);
    }
    let route: RouteSelected = out.events.last().unwrap().payload_as().unwrap();
    Ok(((route.model, route.residency, route.policy), c))
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
    let stages = build(&PolicyConfig::default(), catalog(), &inputs("")).unwrap();
    let req = request();
    let a = evaluate(&stages, &req, &mut ctx("home", Scope::default())).unwrap();
    let b = evaluate(&stages, &req, &mut ctx("home", Scope::default())).unwrap();
    let ids = |e: &Evaluated| e.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.events.len(), 2);
    assert_ne!(a.events[0].id, a.events[1].id);
}

const IBAN: &str = "حوّل المبلغ إلى الآيبان SA03 8000 0000 6080 1016 7519 من فضلك";

#[test]
fn an_iban_keeps_a_request_inside_by_default() {
    let i = inputs("");
    let r = run_with(&i, prompt_ctx("abroad", Scope::default(), IBAN), false).unwrap_err();
    assert_eq!(r.code, RefusalCode::SovereigntyViolation);
    let (got, c) = auto(&i, IBAN);
    assert_eq!(got, owned("home", "local", LOCAL_ONLY));
    let a = c.analysis.unwrap();
    assert_eq!(a.language, isnad_guard::Language::Ar);
    assert_eq!(a.pii, vec![isnad_guard::EntityType::Iban]);
    // Without the IBAN the same request goes where it asked.
    let (got, _) = run_with(
        &i,
        prompt_ctx("abroad", Scope::default(), "حوّل المبلغ"),
        false,
    )
    .unwrap();
    assert_eq!(got, owned("abroad", "external", "requested"));
}

#[test]
fn reroute_mode_sends_a_request_for_an_external_model_to_a_local_one() {
    let i = inputs("residency: reroute\n");
    let (got, c) = run_with(&i, prompt_ctx("abroad", Scope::default(), IBAN), false).unwrap();
    assert_eq!(got, owned("home", "local", "reroute"));
    assert!(c.local_only);
    let mut cost = prompt_ctx("abroad", Scope::default(), IBAN);
    cost.profile = Some(Profile::Cost);
    assert_eq!(
        run_with(&i, cost, false).unwrap().0,
        owned("home2", "local", "reroute")
    );
    // Embeddings are never rerouted: another model's vectors do not compare.
    let mut e = prompt_ctx("embed", Scope::default(), IBAN);
    e.endpoint = Endpoint::Embeddings;
    assert!(run_with(&i, e, false).is_ok());
}

#[test]
fn block_refuses_with_pii_detected_and_journals_the_violation() {
    let i = inputs("guardrail:\n  default: {iban: block}\n");
    let mut stages = build(&PolicyConfig::default(), catalog(), &i).unwrap();
    stages.truncate(1);
    let out = evaluate(
        &stages,
        &request(),
        &mut prompt_ctx("home", Scope::default(), IBAN),
    )
    .unwrap();
    let (stage, refusal) = out.refusal.unwrap();
    assert_eq!(
        (stage.as_str(), refusal.code),
        ("guardrail", RefusalCode::PiiDetected)
    );
    let kinds: Vec<&str> = out.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["guardrail.evaluated", "guardrail.violation"]);
    let v: isnad_schemas::GuardrailViolation = out.events[1].payload_as().unwrap();
    assert_eq!(v.entities, ["iban"]);
    // Types and counts only: the value is nowhere in the events.
    for e in &out.events {
        let text = String::from_utf8_lossy(&e.payload).to_string();
        assert!(!text.contains("8000") && !text.contains("SA03"), "{text}");
    }
}

#[test]
fn redact_replaces_values_with_placeholders_the_vault_restores() {
    let i = inputs("guardrail:\n  default: {email: redact, iban: redact}\n");
    let text = "write to sara@example.com and ali@example.org, again sara@example.com";
    let (got, c) = run_with(&i, prompt_ctx("abroad", Scope::default(), text), false).unwrap();
    assert_eq!(got, owned("abroad", "external", "requested"));
    assert_eq!(
        &*c.prompt,
        ["write to [EMAIL_1] and [EMAIL_2], again [EMAIL_1]".to_owned()]
    );
    assert_eq!(
        c.vault.restore("Sent to [EMAIL_2]."),
        "Sent to ali@example.org."
    );
}

#[test]
fn team_actions_override_the_node_default() {
    let i = inputs("guardrail:\n  teams:\n    finance: {iban: allow}\n");
    let mut c = prompt_ctx("abroad", Scope::default(), IBAN);
    c.team = Some("finance".into());
    assert_eq!(
        run_with(&i, c, false).unwrap().0,
        owned("abroad", "external", "requested")
    );
    let mut c = prompt_ctx("abroad", Scope::default(), IBAN);
    c.team = Some("ops".into());
    assert!(run_with(&i, c, false).is_err());
}

const SEED: &str = r#"routes:
  - name: "arabic-native"
    condition: "language == 'ar'"
    model: "home"
  - name: "fast-path"
    condition: "prompt_tokens < 100"
    model: "home2"
"#;

#[test]
fn the_seed_policy_routes_by_language_then_size() {
    let i = inputs(SEED);
    let route = |prompt: &str| auto(&i, prompt).0;
    assert_eq!(
        route("مرحبا، كيف حالك اليوم؟"),
        owned("home", "local", "arabic-native")
    );
    assert_eq!(route("hello there"), owned("home2", "local", "fast-path"));
    assert_eq!(
        route(&"long english text ".repeat(40)),
        owned("abroad", "external", "default")
    );
    // A request naming its model is not rerouted by routes that do not read `model`.
    let got = run_with(&i, prompt_ctx("abroad", Scope::default(), "مرحبا"), false)
        .unwrap()
        .0;
    assert_eq!(got, owned("abroad", "external", "requested"));
}

#[test]
fn routes_pass_over_models_the_request_may_not_use_and_carry_their_options() {
    let src = r#"routes:
  - {name: out, condition: "true", model: abroad, fallbacks: [home]}
  - {name: in, condition: "'iban' in pii", model: home2, fallbacks: [home], output_scan: true}
  - {name: named, condition: "model == 'plain' && team == 'ops'", model: home}
"#;
    let i = inputs(src);
    let (got, c) = auto(&i, "hello");
    assert_eq!(got, owned("abroad", "external", "out"));
    assert_eq!(c.route.fallbacks, ["home"]);
    assert!(!c.route.output_scan);
    let (got, c) = auto(&i, IBAN);
    assert_eq!(got, owned("home2", "local", "in"));
    assert!(c.route.output_scan);
    let got = run_with(
        &i,
        prompt_ctx(AUTO_ROUTER, only(&["home", "home2"]), "hello"),
        false,
    )
    .unwrap()
    .0;
    assert_eq!(got, owned("home", "local", "default"));
    let mut c = prompt_ctx("plain", Scope::default(), "hello");
    c.team = Some("ops".into());
    assert_eq!(
        run_with(&i, c, false).unwrap().0,
        owned("home", "local", "named")
    );
}

#[test]
fn a_condition_failing_at_run_time_fails_closed() {
    let src = "routes:\n  - {name: first-pii, condition: \"pii[0] == 'email'\", model: abroad}\n";
    let i = inputs(src);
    // No PII: `pii[0]` fails; the request is kept inside the boundary.
    let (got, c) = auto(&i, "hello");
    assert_eq!(got, owned("home", "local", LOCAL_ONLY));
    assert!(c.local_only);
}

#[test]
fn profiles_choose_by_price_and_by_measured_latency() {
    let i = inputs("");
    let pick = |profile| {
        let mut c = ctx(AUTO_ROUTER, local_only());
        c.profile = Some(profile);
        run_with(&i, c, false).unwrap().0 .0
    };
    assert_eq!(pick(Profile::Cost), "home2");
    // Nothing measured yet: every model ties on latency, configuration order decides.
    assert_eq!(pick(Profile::Performance), "home");
    i.latencies.set(|id| match id {
        "home" => Some(900.0),
        "home2" => Some(100.0),
        "plain" => Some(50.0),
        _ => None,
    });
    assert_eq!(pick(Profile::Performance), "plain");
    // Balanced: home2 is cheapest and nearly fastest.
    assert_eq!(pick(Profile::Balanced), "home2");
    let mut c = ctx(AUTO_ROUTER, Scope::default());
    c.profile = Some(Profile::Cost);
    assert_eq!(
        run_with(&i, c, false).unwrap().0,
        owned("home2", "local", "profile:cost")
    );
}

#[test]
fn the_prompt_token_estimate_is_bytes_over_four_plus_framing() {
    assert_eq!(estimate_prompt_tokens(&[]), 0);
    assert_eq!(
        estimate_prompt_tokens(&["abcd".into(), "abcde".into()]),
        1 + 8 + 2 + 8
    );
    // Arabic letters are two bytes: about one token per two letters.
    assert_eq!(estimate_prompt_tokens(&["مرحبا".into()]), 3 + 8);
}
