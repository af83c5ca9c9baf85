//! The routing policy: a YAML file whose route conditions are CEL, plus the guardrail's action
//! for each entity type, node-wide and per team.
//!
//! ```yaml
//! residency: enforce          # or `reroute`: send a request with sensitive data to a local model
//! default: general-small      # what `auto-router` picks when no route matches
//! guardrail:
//!   default: { email: redact, iban: block }
//!   teams:
//!     radiology: { person_name: redact }
//! routes:
//!   - name: arabic-native
//!     condition: "language == 'ar'"
//!     model: arabic-large
//!     fallbacks: [general-small]
//!     output_scan: true
//! ```
//!
//! A condition reads [`VARIABLES`]: `language` (`ar`, `en`, `mixed`, `other`), `prompt_tokens`
//! (int, estimated before a model is chosen), `pii` (list of entity type names), `team` and
//! `key` (`""` when the caller has none), `profile` (`cost`, `performance`, `balanced` or `""`),
//! `model` (what the client asked for) and `hour` (0–23, UTC). Loading rejects unknown keys,
//! unknown variables, entity types and actions, and dry-runs every condition against a typed
//! sample: it must give a bool. Each error names the file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};
use isnad_guard::EntityType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The variables a condition may read.
pub const VARIABLES: &[&str] = &[
    "language",
    "prompt_tokens",
    "pii",
    "team",
    "key",
    "profile",
    "model",
    "hour",
];

/// What the guardrail does with an entity type found in a prompt, from the mildest to the
/// strictest (a prompt with several types gets the strictest of their actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let the value through.
    Allow,
    /// Replace the value by a typed placeholder before a model sees it; restore it in the answer.
    Redact,
    /// Keep the request inside the boundary.
    LocalOnly,
    /// Refuse the request (451 `pii_detected`).
    Block,
}

impl Action {
    /// Every action, mildest first.
    pub const ALL: [Action; 4] = [Self::Allow, Self::Redact, Self::LocalOnly, Self::Block];

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Redact => "redact",
            Self::LocalOnly => "local_only",
            Self::Block => "block",
        }
    }

    /// The action named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The action of `entity` with no policy file: identifiers, bank and card numbers and
    /// credentials stay inside the boundary; the rest is allowed.
    pub const fn builtin(entity: EntityType) -> Self {
        match entity {
            EntityType::SaNationalId
            | EntityType::EmiratesId
            | EntityType::KwCivilId
            | EntityType::EgNationalId
            | EntityType::Iban
            | EntityType::Card
            | EntityType::Credential => Self::LocalOnly,
            _ => Self::Allow,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a request for an external model whose data must stay inside the boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidencyMode {
    /// Refuse it: 451 `sovereignty_violation`.
    #[default]
    Enforce,
    /// Send it to a local model instead.
    Reroute,
}

impl ResidencyMode {
    /// `enforce` or `reroute`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Reroute => "reroute",
        }
    }
}

/// What a condition sees of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// `ar`, `en`, `mixed` or `other`.
    pub language: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Entity types found, by name.
    pub pii: Vec<String>,
    /// The caller's team, `""` if none.
    pub team: String,
    /// The caller's key id, `""` if none.
    pub key: String,
    /// The routing profile asked for, `""` if none.
    pub profile: String,
    /// The model asked for.
    pub model: String,
    /// Hour of the day, UTC.
    pub hour: u32,
}

impl Facts {
    /// The typed sample every condition is dry-run against at load.
    pub fn sample() -> Self {
        Self {
            language: "ar".into(),
            prompt_tokens: 100,
            pii: vec!["iban".into()],
            team: "team".into(),
            key: "key".into(),
            profile: "balanced".into(),
            model: "auto-router".into(),
            hour: 12,
        }
    }

    fn context(&self, env: &Arc<Env>) -> Context<'static, 'static> {
        let s = |v: &str| Value::String(Arc::new(v.to_owned()));
        let mut ctx = Context::with_env(env.clone());
        ctx.add_variable_from_value("language", s(&self.language));
        ctx.add_variable_from_value("prompt_tokens", Value::Int(self.prompt_tokens as i64));
        ctx.add_variable_from_value(
            "pii",
            Value::List(Arc::new(self.pii.iter().map(|p| s(p)).collect())),
        );
        ctx.add_variable_from_value("team", s(&self.team));
        ctx.add_variable_from_value("key", s(&self.key));
        ctx.add_variable_from_value("profile", s(&self.profile));
        ctx.add_variable_from_value("model", s(&self.model));
        ctx.add_variable_from_value("hour", Value::Int(i64::from(self.hour)));
        ctx
    }
}

/// One route: when its condition holds, requests go to its model.
#[derive(Debug)]
pub struct Route {
    /// The name `route.selected` records.
    pub name: String,
    /// The CEL condition, as written.
    pub condition: String,
    program: Program,
    /// The model.
    pub model: String,
    /// Models to try, in order, if the model fails.
    pub fallbacks: Vec<String>,
    /// Scan the completion for blocked types.
    pub output_scan: bool,
}

/// Why a condition could not be evaluated on a request (the router fails closed on it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route `{route}`: {reason}")]
pub struct RuleError {
    /// The route.
    pub route: String,
    /// What went wrong.
    pub reason: String,
}

impl Route {
    /// Whether the condition holds for `facts`.
    pub fn matches(&self, env: &Arc<Env>, facts: &Facts) -> Result<bool, RuleError> {
        self.run(&facts.context(env))
    }

    /// Whether the condition reads `model` (only such a route applies to a request that names
    /// its model; the others route `auto-router`).
    pub fn reads_model(&self) -> bool {
        self.program.references().has_variable("model")
    }

    fn run(&self, ctx: &Context<'_, '_>) -> Result<bool, RuleError> {
        match self.program.execute(ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(RuleError {
                route: self.name.clone(),
                reason: format!("the condition gave {:?}, not a bool", other.type_of()),
            }),
            Err(e) => Err(RuleError {
                route: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// A policy that cannot load: where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}:{column}: {key}: {reason}")]
pub struct PolicyError {
    /// The file (or `<api>` for a policy put through the admin API).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key path at fault, e.g. `routes[1].condition`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    residency: ResidencyMode,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    guardrail: GuardrailShape,
    #[serde(default)]
    routes: Vec<RouteShape>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailShape {
    #[serde(default)]
    default: BTreeMap<String, String>,
    #[serde(default)]
    teams: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteShape {
    name: String,
    condition: String,
    model: String,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    output_scan: bool,
}

/// Entity type to action.
pub type Actions = BTreeMap<EntityType, Action>;

/// The routing and guardrail policy.
pub struct RoutingPolicy {
    source: String,
    file: String,
    hash: String,
    residency: ResidencyMode,
    default: Option<String>,
    guardrail: Actions,
    teams: BTreeMap<String, Actions>,
    /// Team actions set through the API, over the file's.
    overlays: BTreeMap<String, Actions>,
    routes: Vec<Route>,
    env: Arc<Env>,
}

impl fmt::Debug for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingPolicy")
            .field("file", &self.file)
            .field("hash", &self.hash)
            .field("residency", &self.residency)
            .field("default", &self.default)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Where `needle` first appears in `source` at or after byte `from`: (line, column), 1-based.
fn locate(source: &str, needle: &str, from: usize) -> Option<(usize, usize, usize)> {
    let at = from + source.get(from..)?.find(needle)?;
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column, at))
}

fn actions_of(
    map: &BTreeMap<String, String>,
    err: &dyn Fn(&str, &str, String) -> PolicyError,
    path: &str,
) -> Result<Actions, PolicyError> {
    let mut out = Actions::new();
    for (entity, action) in map {
        let key = format!("{path}.{entity}");
        let e = EntityType::from_name(entity).ok_or_else(|| {
            let known: Vec<&str> = EntityType::ALL.iter().map(|e| e.as_str()).collect();
            err(
                &key,
                entity,
                format!(
                    "unknown entity type `{entity}` (known: {})",
                    known.join(", ")
                ),
            )
        })?;
        let a = Action::from_name(action).ok_or_else(|| {
            err(
                &key,
                entity,
                format!("unknown action `{action}` (known: allow, redact, local_only, block)"),
            )
        })?;
        out.insert(e, a);
    }
    Ok(out)
}

/// Parses team actions given as `{type: action}` names (the admin API's body).
pub fn parse_actions(map: &BTreeMap<String, String>) -> Result<Actions, String> {
    let err = |_: &str, _: &str, reason: String| PolicyError {
        file: String::new(),
        line: 0,
        column: 0,
        key: String::new(),
        reason,
    };
    actions_of(map, &err, "guardrail").map_err(|e| e.reason)
}

impl RoutingPolicy {
    /// The policy with no file: the built-in actions, no routes, `residency: enforce`.
    pub fn builtin() -> Self {
        // An empty document is a valid policy.
        Self::parse("", "<builtin>").unwrap_or_else(|_| unreachable!("the empty policy parses"))
    }

    /// Parses and checks `source`, read from `file` (named in errors).
    pub fn parse(source: &str, file: &str) -> Result<Self, PolicyError> {
        let at = |key: &str, line: usize, column: usize, reason: String| PolicyError {
            file: file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            reason,
        };
        let shape: FileShape = if source.trim().is_empty() {
            FileShape {
                residency: ResidencyMode::Enforce,
                default: None,
                guardrail: GuardrailShape::default(),
                routes: vec![],
            }
        } else {
            serde_norway::from_str(source).map_err(|e| {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                at("", line, column, e.to_string())
            })?
        };
        let near = |key: &str, word: &str, reason: String| {
            let (line, column, _) = locate(source, word, 0).unwrap_or((1, 1, 0));
            at(key, line, column, reason)
        };
        let guardrail = actions_of(&shape.guardrail.default, &near, "guardrail.default")?;
        let mut teams = BTreeMap::new();
        for (team, map) in &shape.guardrail.teams {
            let actions = actions_of(map, &near, &format!("guardrail.teams.{team}"))?;
            teams.insert(team.clone(), actions);
        }
        let env = Arc::new(Env::stdlib());
        let sample = Facts::sample().context(&env);
        let mut routes: Vec<Route> = Vec::with_capacity(shape.routes.len());
        let mut from = 0;
        for (i, r) in shape.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let (line, column, off) = locate(source, &r.condition, from)
                .or_else(|| locate(source, &r.name, from))
                .unwrap_or((1, 1, from));
            from = off;
            if routes.iter().any(|x| x.name == r.name) {
                return Err(at(
                    &format!("{key}.name"),
                    line,
                    column,
                    format!("route `{}` is named twice", r.name),
                ));
            }
            let program = Program::compile(&r.condition).map_err(|e| {
                let (l, c) = e.errors.first().map_or((1, 1), |p| (p.pos.0, p.pos.1));
                let msg = e
                    .errors
                    .iter()
                    .map(|p| p.msg.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                let l = usize::try_from(l).unwrap_or(1).max(1);
                let c = usize::try_from(c).unwrap_or(1).max(1);
                let column = if l == 1 { column + c - 1 } else { c };
                at(&format!("{key}.condition"), line + l - 1, column, msg)
            })?;
            let route = Route {
                name: r.name,
                condition: r.condition,
                program,
                model: r.model,
                fallbacks: r.fallbacks,
                output_scan: r.output_scan,
            };
            let unknown: Vec<String> = route
                .program
                .references()
                .variables()
                .into_iter()
                .filter(|v| !VARIABLES.contains(v))
                .map(str::to_owned)
                .collect();
            if let Err(e) = route.run(&sample) {
                let reason = if unknown.is_empty() {
                    e.reason
                } else {
                    format!(
                        "unknown variable `{}` (known: {})",
                        unknown.join("`, `"),
                        VARIABLES.join(", ")
                    )
                };
                return Err(at(&format!("{key}.condition"), line, column, reason));
            }
            if route.fallbacks.contains(&route.model) {
                return Err(at(
                    &format!("{key}.fallbacks"),
                    line,
                    column,
                    format!("`{}` falls back to itself", route.model),
                ));
            }
            routes.push(route);
        }
        let mut policy = Self {
            source: source.to_owned(),
            file: file.to_owned(),
            hash: String::new(),
            residency: shape.residency,
            default: shape.default,
            guardrail,
            teams,
            overlays: BTreeMap::new(),
            routes,
            env,
        };
        policy.rehash();
        Ok(policy)
    }

    fn rehash(&mut self) {
        let mut h = Sha256::new();
        h.update(self.source.as_bytes());
        if !self.overlays.is_empty() {
            h.update(b"\n# team actions set through the API\n");
            h.update(self.overlays_json().as_bytes());
        }
        self.hash = format!("sha256:{}", hex::encode(h.finalize()));
    }

    /// The team actions set through the API, as JSON (what is persisted beside the file).
    pub fn overlays_json(&self) -> String {
        let named: BTreeMap<&str, BTreeMap<&str, &str>> = self
            .overlays
            .iter()
            .map(|(t, a)| {
                (
                    t.as_str(),
                    a.iter().map(|(e, a)| (e.as_str(), a.as_str())).collect(),
                )
            })
            .collect();
        serde_json::to_string(&named).unwrap_or_else(|_| "{}".into())
    }

    /// Reads team actions persisted by [`overlays_json`](Self::overlays_json).
    pub fn with_overlays_json(self, json: &str) -> Result<Self, String> {
        let named: BTreeMap<String, BTreeMap<String, String>> =
            serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut policy = self;
        for (team, map) in named {
            policy = policy.with_team_actions(&team, parse_actions(&map)?);
        }
        Ok(policy)
    }

    /// The policy text, as loaded.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where it was loaded from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `sha256:` and the hex digest of the text (and of the team actions set through the API).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// `enforce` or `reroute`.
    pub fn residency(&self) -> ResidencyMode {
        self.residency
    }

    /// The model `auto-router` picks when no route matches.
    pub fn default_model(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first model name the policy uses that `exists` does not know, as an error.
    pub fn check_models(&self, exists: &dyn Fn(&str) -> bool) -> Result<(), PolicyError> {
        let missing = |key: String, model: &str| {
            let (line, column, _) = locate(&self.source, model, 0).unwrap_or((1, 1, 0));
            PolicyError {
                file: self.file.clone(),
                line,
                column,
                key,
                reason: format!("no model `{model}` is configured"),
            }
        };
        if let Some(d) = self.default.as_deref().filter(|d| !exists(d)) {
            return Err(missing("default".into(), d));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !exists(&r.model) {
                return Err(missing(format!("routes[{i}].model"), &r.model));
            }
            if let Some(f) = r.fallbacks.iter().find(|f| !exists(f)) {
                return Err(missing(format!("routes[{i}].fallbacks"), f));
            }
        }
        Ok(())
    }

    /// The routes whose condition holds for `facts`, in order, each with its result: a route
    /// whose condition fails at run time comes out as an error (the router fails closed).
    pub fn matches<'a>(
        &'a self,
        facts: &Facts,
    ) -> impl Iterator<Item = Result<&'a Route, RuleError>> + 'a {
        let ctx = facts.context(&self.env);
        self.routes.iter().filter_map(move |r| match r.run(&ctx) {
            Ok(true) => Some(Ok(r)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// The first route that matches `facts`, if any.
    pub fn first_match(&self, facts: &Facts) -> Option<Result<&Route, RuleError>> {
        self.matches(facts).next()
    }

    /// The guardrail's action on `entity` for `team`: the team's actions set through the API,
    /// else the file's for the team, else the file's default, else [`Action::builtin`].
    pub fn action(&self, team: Option<&str>, entity: EntityType) -> Action {
        let of_team = |m: &BTreeMap<String, Actions>| {
            team.and_then(|t| m.get(t))
                .and_then(|a| a.get(&entity))
                .copied()
        };
        of_team(&self.overlays)
            .or_else(|| of_team(&self.teams))
            .or_else(|| self.guardrail.get(&entity).copied())
            .unwrap_or(Action::builtin(entity))
    }

    /// Every type's action for `team`.
    pub fn team_actions(&self, team: &str) -> Actions {
        EntityType::ALL
            .into_iter()
            .map(|e| (e, self.action(Some(team), e)))
            .collect()
    }

    /// The team actions set through the API for `team` (empty if none).
    pub fn team_overlay(&self, team: &str) -> Actions {
        self.overlays.get(team).cloned().unwrap_or_default()
    }

    /// The same policy with `team`'s API-set actions replaced by `actions` (an empty set
    /// removes them).
    pub fn with_team_actions(&self, team: &str, actions: Actions) -> Self {
        let mut overlays = self.overlays.clone();
        if actions.is_empty() {
            overlays.remove(team);
        } else {
            overlays.insert(team.to_owned(), actions);
        }
        // Reparsing a text that parsed once cannot fail; keep the routes' compiled programs.
        let mut policy = Self {
            source: self.source.clone(),
            file: self.file.clone(),
            hash: String::new(),
            residency: self.residency,
            default: self.default.clone(),
            guardrail: self.guardrail.clone(),
            teams: self.teams.clone(),
            overlays,
            routes: self
                .routes
                .iter()
                .map(|r| Route {
                    name: r.name.clone(),
                    condition: r.condition.clone(),
                    program: Program::compile(&r.condition)
                        .unwrap_or_else(|_| unreachable!("the condition compiled once")),
                    model: r.model.clone(),
                    fallbacks: r.fallbacks.clone(),
                    output_scan: r.output_scan,
                })
                .collect(),
            env: self.env.clone(),
        };
        policy.rehash();
        policy
    }

    /// The same routes and actions with the team actions of `other` (a reload keeps what the
    /// API set).
    pub fn keeping_overlays_of(self, other: &RoutingPolicy) -> Self {
        let mut policy = self;
        policy.overlays = other.overlays.clone();
        policy.rehash();
        policy
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SEED: &str = r#"routes:
  - name: "arabic-native"
    condition: "language == 'ar'"
    model: "arabic-large"
  - name: "fast-path"
    condition: "prompt_tokens < 100"
    model: "general-small"
"#;

    fn facts(language: &str, tokens: u64) -> Facts {
        Facts {
            language: language.into(),
            prompt_tokens: tokens,
            ..Facts::default()
        }
    }

    #[test]
    fn the_seed_policy_loads_and_the_first_match_wins() {
        let p = RoutingPolicy::parse(SEED, "routing.yaml").unwrap();
        assert_eq!(p.routes().len(), 2);
        let name = |f: &Facts| p.first_match(f).map(|r| r.unwrap().name.clone());
        assert_eq!(name(&facts("ar", 10)).as_deref(), Some("arabic-native"));
        assert_eq!(name(&facts("en", 10)).as_deref(), Some("fast-path"));
        assert_eq!(name(&facts("en", 500)), None);
        let known = ["arabic-large", "general-small"];
        p.check_models(&|m| known.contains(&m)).unwrap();
        let e = p.check_models(&|m| m == "general-small").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.key.as_str()),
            (4, 13, "routes[0].model")
        );
        assert!(p.hash().starts_with("sha256:") && p.hash().len() == 71);
    }

    #[test]
    fn every_variable_reads_and_lists_work() {
        let src = r#"routes:
  - name: all
    condition: "'iban' in pii && team == 'ops' && key == 'k1' && profile == 'cost' && model == 'auto-router' && hour >= 0 && language != 'x' && prompt_tokens > 0"
    model: m
"#;
        let p = RoutingPolicy::parse(src, "f").unwrap();
        let mut f = Facts {
            language: "en".into(),
            prompt_tokens: 3,
            pii: vec!["iban".into()],
            team: "ops".into(),
            key: "k1".into(),
            profile: "cost".into(),
            model: "auto-router".into(),
            hour: 5,
        };
        assert!(p.first_match(&f).is_some());
        f.pii.clear();
        assert!(p.first_match(&f).is_none());
    }

    #[test]
    fn load_errors_name_the_line_column_and_reason() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "routes:\n  - name: a\n    condition: \"lang == 'ar'\"\n    model: m\n",
                3,
                "routes[0].condition",
                "unknown variable `lang`",
            ),
            (
                "routes:\n  - name: a\n    condition: \"prompt_tokens + 1\"\n    model: m\n",
                3,
                "routes[0].condition",
                "not a bool",
            ),
            (
                "routes:\n  - name: a\n    condition: \"language == \"\n    model: m\n",
                3,
                "routes[0].condition",
                "",
            ),
            ("residency: maybe\n", 1, "", "unknown variant"),
            ("route: []\n", 1, "", "unknown field `route`"),
            (
                "guardrail:\n  default:\n    passport: block\n",
                3,
                "guardrail.default.passport",
                "unknown entity type `passport`",
            ),
            (
                "guardrail:\n  teams:\n    ops:\n      iban: hide\n",
                4,
                "guardrail.teams.ops.iban",
                "unknown action `hide`",
            ),
            (
                "routes:\n  - name: a\n    condition: \"true\"\n    model: m\n    fallbacks: [m]\n",
                3,
                "routes[0].fallbacks",
                "falls back to itself",
            ),
            (
                "routes:\n  - {name: a, condition: \"true\", model: m}\n  - {name: a, condition: \"false\", model: m}\n",
                3,
                "routes[1].name",
                "named twice",
            ),
        ];
        for (src, line, key, reason) in cases {
            let e = RoutingPolicy::parse(src, "routing.yaml").unwrap_err();
            assert_eq!(e.file, "routing.yaml");
            assert_eq!(e.line, *line, "{src}: {e}");
            assert_eq!(e.key, *key, "{src}: {e}");
            assert!(e.reason.contains(reason), "{src}: {e}");
        }
    }

    #[test]
    fn actions_resolve_api_team_then_file_team_then_default_then_builtin() {
        let src = "guardrail:\n  default: {email: redact}\n  teams:\n    ops: {email: block, phone: local_only}\n";
        let p = RoutingPolicy::parse(src, "f").unwrap();
        assert_eq!(p.action(None, EntityType::Email), Action::Redact);
        assert_eq!(p.action(Some("ops"), EntityType::Email), Action::Block);
        assert_eq!(p.action(Some("ops"), EntityType::Iban), Action::LocalOnly);
        assert_eq!(p.action(Some("ops"), EntityType::Ip), Action::Allow);
        let q = p.with_team_actions("ops", [(EntityType::Email, Action::Allow)].into());
        assert_eq!(q.action(Some("ops"), EntityType::Email), Action::Allow);
        assert_eq!(q.action(Some("ops"), EntityType::Phone), Action::LocalOnly);
        assert_ne!(q.hash(), p.hash());
        let back = RoutingPolicy::parse(src, "f")
            .unwrap()
            .with_overlays_json(&q.overlays_json())
            .unwrap();
        assert_eq!(back.hash(), q.hash());
        assert_eq!(q.with_team_actions("ops", Actions::new()).hash(), p.hash());
    }

    #[test]
    fn the_builtin_policy_keeps_identifiers_inside() {
        let p = RoutingPolicy::builtin();
        for e in EntityType::ALL {
            let inside = p.action(None, e) == Action::LocalOnly;
            assert_eq!(
                inside,
                !matches!(
                    e,
                    EntityType::Email | EntityType::Phone | EntityType::Ip | EntityType::PersonName
                ),
                "{e}"
            );
        }
        assert_eq!(p.residency(), ResidencyMode::Enforce);
    }

    #[test]
    fn a_run_time_error_comes_out_as_an_error() {
        let src = "routes:\n  - {name: a, condition: \"pii[0] == 'iban'\", model: m}\n";
        let p = RoutingPolicy::parse(src, "f").unwrap();
        let r = p.first_match(&Facts::default()).unwrap();
        assert_eq!(r.unwrap_err().route, "a");
    }
}
