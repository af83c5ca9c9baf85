//! The admin API: teams and keys, and `GET /v1/me`.
//!
//! Role checks: `admin` does everything; `operator` manages its own team's keys; `auditor`
//! reads teams and keys (never a key itself); `member` only reads `/v1/me`. Every change is a
//! journal event with the caller as its actor, applied to the live state before the answer
//! goes out, so a key revoked here is refused on the very next request. A created or rotated
//! key appears in that one answer and nowhere else: the server keeps only its SHA-256.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRef, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use std::collections::BTreeMap;

use isnad_pipeline::access::{
    ledger::{Ledger, Period},
    KeyRecord, KeyRequest, Limits, Principal, Role, Standing, Team, TeamRequest, Window,
};
use isnad_schemas::openai;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    admission::{Admitted, Unadmitted},
    auth::Credentials,
    error::ApiError,
    gateway::Gateway,
};

/// How long a rotated key keeps working unless the request says otherwise.
pub const DEFAULT_GRACE_S: u64 = 24 * 3600;
/// Longest grace period a rotation may ask for.
pub const MAX_GRACE_S: u64 = 30 * 24 * 3600;

/// The admin API's routes, over any state that holds the gateway's.
pub fn routes<S>() -> Router<S>
where
    Gateway: FromRef<S>,
    Arc<Credentials>: FromRef<S>,
    Arc<Unadmitted>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/teams", post(create_team).get(list_teams))
        .route("/v1/teams/{id}", get(get_team).patch(update_team))
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", get(get_key).delete(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/teams/{id}/budget", put(team_budget))
        .route("/v1/keys/{id}/budget", put(key_budget))
        .route("/v1/teams/{id}/limits", put(team_limits))
        .route("/v1/keys/{id}/limits", put(key_limits))
        .route("/v1/usage", get(usage))
}

type Answer = Result<Response, ApiError>;

/// Members use models; the admin API is for the roles that manage or audit.
fn manager(admitted: &Admitted) -> Result<&Principal, ApiError> {
    let p = &*admitted.principal;
    match p.role {
        Role::Admin | Role::Operator | Role::Auditor => Ok(p),
        Role::Member => Err(ApiError::role_forbidden(p.role, "manage teams and keys")),
    }
}

fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(openai::parse_json(bytes)?)
}

fn secs(us: i64) -> i64 {
    us.div_euclid(1_000_000)
}

fn team_json(t: &Team) -> Value {
    json!({
        "object": "team",
        "id": t.id,
        "name": t.name,
        "created_at": secs(t.created_at_us),
        "created_by": t.created_by,
        "updated_at": secs(t.updated_at_us),
        "limits": t.limits,
    })
}

fn key_json(state: &Gateway, k: &KeyRecord) -> Value {
    let access = state.credentials.access();
    json!({
        "object": "api_key",
        "id": k.id,
        "label": k.label,
        "team": k.team,
        "role": k.role.as_str(),
        "models": k.models,
        "residency": if k.local_only { "local" } else { "any" },
        "expires_at": k.expires_at_us.map(secs),
        "cidrs": k.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "source": k.source,
        "status": k.status(access.now_us()),
        "created_at": secs(k.created_at_us),
        "created_by": k.created_by,
        "revoked_at": k.revoked.as_ref().map(|r| secs(r.0)),
        "revoked_by": k.revoked.as_ref().and_then(|r| r.1.clone()),
        "revoke_reason": k.revoked.as_ref().map(|r| r.2.clone()),
        "rotated_to": k.rotated.as_ref().map(|r| r.0.clone()),
        "grace_until": k.rotated.as_ref().map(|r| secs(r.1)),
        "last_used_at": access.last_used_us(k).map(secs),
        "limits": k.limits,
    })
}

fn window_json(w: &Window) -> Value {
    json!({
        "policy": w.policy,
        "unit": w.unit,
        "limit": w.limit,
        "remaining": w.remaining,
        "window_seconds": w.window_s,
        "reset_ms": w.reset_ms,
    })
}

fn list(data: Vec<Value>) -> Response {
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn me(State(state): State<Gateway>, admitted: Admitted) -> Answer {
    let p = &admitted.principal;
    let limits = state.credentials.key_limits(p);
    let windows = state.budgets.token_windows(
        p.team.as_deref().map(|t| (t, p.team_limits)),
        p.key_id.as_deref().map(|k| (k, limits)),
    );
    if let Some(w) = windows.first() {
        admitted.rate.report(w.clone());
    }
    let key = p
        .key_id
        .as_ref()
        .and_then(|id| state.credentials.access().read(|s| s.key(id).cloned()));
    Ok(Json(json!({
        "object": "principal",
        "name": p.name,
        "actor": admitted.actor,
        "role": p.role.as_str(),
        "team": p.team,
        "models": p.scope.models.as_deref(),
        "residency": if p.scope.local_only { "local" } else { "any" },
        "key": key.map(|k| key_json(&state, &k)),
        "budgets": state.budgets.standing(p.team.as_deref(), p.key_id.as_deref()).iter().map(standing_json).collect::<Vec<_>>(),
        "limits": limits,
        "team_limits": p.team_limits,
        "token_windows": windows.iter().map(window_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn create_team(State(state): State<Gateway>, admitted: Admitted, bytes: Bytes) -> Answer {
    let by = manager(&admitted)?;
    let req: TeamRequest = body(&bytes)?;
    let team = state.credentials.access().create_team(by, req).await?;
    Ok((StatusCode::CREATED, Json(team_json(&team))).into_response())
}

async fn list_teams(State(state): State<Gateway>, admitted: Admitted) -> Answer {
    let by = manager(&admitted)?;
    Ok(list(
        state
            .credentials
            .access()
            .teams(by)
            .iter()
            .map(team_json)
            .collect(),
    ))
}

async fn get_team(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
) -> Answer {
    let by = manager(&admitted)?;
    Ok(Json(team_json(&state.credentials.access().team(by, &id)?)).into_response())
}

async fn update_team(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    let req: TeamRequest = body(&bytes)?;
    let team = state.credentials.access().update_team(by, &id, req).await?;
    Ok(Json(team_json(&team)).into_response())
}

async fn create_key(State(state): State<Gateway>, admitted: Admitted, bytes: Bytes) -> Answer {
    let by = manager(&admitted)?;
    let req: KeyRequest = openai::parse_json(&bytes)?;
    let registry = state.registry.clone();
    let known = move |m: &str| {
        m == isnad_pipeline::policy::AUTO_ROUTER
            || isnad_pipeline::policy::ModelCatalog::model(&*registry, m).is_some()
    };
    let (record, token) = state
        .credentials
        .access()
        .create_key(by, req, &known)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(with_secret(&state, &record, token)),
    )
        .into_response())
}

/// The key's view plus the key itself: the one answer that shows it.
fn with_secret(state: &Gateway, record: &KeyRecord, token: String) -> Value {
    let mut v = key_json(state, record);
    v["key"] = token.into();
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFilter {
    team: Option<String>,
}

async fn list_keys(
    State(state): State<Gateway>,
    admitted: Admitted,
    Query(filter): Query<KeyFilter>,
) -> Answer {
    let by = manager(&admitted)?;
    let keys = state.credentials.access().keys(by, filter.team.as_deref());
    Ok(list(keys.iter().map(|k| key_json(&state, k)).collect()))
}

async fn get_key(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
) -> Answer {
    let by = manager(&admitted)?;
    let k = state.credentials.access().key(by, &id)?;
    Ok(Json(key_json(&state, &k)).into_response())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// Seconds the old key keeps working.
    grace_seconds: Option<u64>,
}

async fn rotate_key(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    let req: Rotate = body(&bytes)?;
    let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_S);
    if grace > MAX_GRACE_S {
        return Err(ApiError::bad(
            "grace_seconds",
            format!("grace_seconds: at most {MAX_GRACE_S}"),
        ));
    }
    let (record, token) = state
        .credentials
        .access()
        .rotate_key(by, &id, grace)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(with_secret(&state, &record, token)),
    )
        .into_response())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    reason: Option<String>,
}

async fn revoke_key(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    let req: Revoke = body(&bytes)?;
    let k = state
        .credentials
        .access()
        .revoke_key(by, &id, req.reason)
        .await?;
    Ok(Json(key_json(&state, &k)).into_response())
}

fn standing_json(s: &Standing) -> Value {
    json!({
        "scope": s.scope,
        "period": s.period,
        "timezone": s.timezone,
        "current_period": s.current,
        "limit": {"tokens": s.limit_tokens, "cost_micros": s.limit_cost_micros},
        "spent": {"tokens": s.spent.tokens, "cost_micros": s.spent.cost_micros},
        "held": {"tokens": s.held.tokens, "cost_micros": s.held.cost_micros},
        "remaining": {"tokens": s.remaining_tokens, "cost_micros": s.remaining_cost_micros},
        "resets_at": secs(s.resets_at_us),
    })
}

/// `PUT …/budget`: caps per period; neither cap removes the budget.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    tokens: Option<u64>,
    cost_micros: Option<u64>,
    period: Option<Period>,
    timezone: Option<String>,
}

async fn set_budget(state: &Gateway, by: &Principal, scope: String, bytes: &[u8]) -> Answer {
    let b: BudgetBody = openai::parse_json(bytes)?;
    let period = b.period.unwrap_or(Period::Month);
    let tz = b.timezone.unwrap_or_else(|| "UTC".into());
    state
        .budgets
        .set(&by.name, &scope, b.tokens, b.cost_micros, period, &tz)
        .await?;
    let (team, key) = match scope.split_once(':') {
        Some(("team", t)) => (Some(t), None),
        Some((_, k)) => (None, Some(k)),
        None => (None, None),
    };
    let standing = state.budgets.standing(team, key);
    Ok(Json(match standing.first() {
        Some(s) => standing_json(s),
        None => json!({"scope": scope, "removed": true}),
    })
    .into_response())
}

async fn team_budget(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    // An operator raising its own team's budget would defeat it.
    if by.role != Role::Admin {
        return Err(ApiError::role_forbidden(by.role, "set a team's budget"));
    }
    state.credentials.access().team(by, &id)?;
    set_budget(&state, by, format!("team:{id}"), &bytes).await
}

async fn key_budget(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    let key = state.credentials.access().key(by, &id)?;
    if !by.may_manage(key.team.as_deref(), true) {
        return Err(ApiError::role_forbidden(by.role, "set this key's budget"));
    }
    set_budget(&state, by, format!("key:{id}"), &bytes).await
}

async fn team_limits(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    set_limits(&state, by, format!("team:{id}"), &bytes).await
}

async fn key_limits(
    State(state): State<Gateway>,
    admitted: Admitted,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let by = manager(&admitted)?;
    set_limits(&state, by, format!("key:{id}"), &bytes).await
}

async fn set_limits(state: &Gateway, by: &Principal, scope: String, bytes: &[u8]) -> Answer {
    let limits: Limits = body(bytes)?;
    let set = state
        .credentials
        .access()
        .set_limits(by, &scope, limits)
        .await?;
    Ok(Json(json!({"object": "limits", "scope": scope, "limits": set})).into_response())
}

/// The filters of `GET /v1/usage` (and of `isnad journal replay`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only this team's.
    pub team: Option<String>,
    /// Only this key's (its id).
    pub key: Option<String>,
    /// Only this model's.
    pub model: Option<String>,
    /// First UTC day, `YYYY-MM-DD`, inclusive.
    pub from: Option<String>,
    /// Last UTC day, inclusive.
    pub to: Option<String>,
    /// `day` (one row per day) or `total` (the default: one row per team, key and model).
    pub group_by: Option<String>,
}

/// `GET /v1/usage`: settled usage by UTC day, team, key and model, from the ledger (the same
/// fold `isnad journal replay` prints). An operator sees its own team's.
async fn usage(
    State(state): State<Gateway>,
    admitted: Admitted,
    Query(q): Query<UsageQuery>,
) -> Answer {
    let by = manager(&admitted)?;
    let by_day = match q.group_by.as_deref() {
        None | Some("total") => false,
        Some("day") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "group_by",
                format!("group_by: `{other}`: expected `day` or `total`"),
            ))
        }
    };
    for (name, d) in [("from", &q.from), ("to", &q.to)] {
        if d.as_deref().is_some_and(|d| !is_day(d)) {
            return Err(ApiError::bad(name, format!("{name}: expected YYYY-MM-DD")));
        }
    }
    let team = match (by.role, &q.team) {
        (Role::Operator, Some(t)) if Some(t) != by.team.as_ref() => {
            return Err(ApiError::role_forbidden(
                by.role,
                "read another team's usage",
            ))
        }
        (Role::Operator, _) => by.team.clone(),
        (_, t) => t.clone(),
    };
    let rows = state
        .budgets
        .ledger()
        .read(|l| usage_rows(l, team.as_deref(), &q, by_day));
    Ok(list(rows))
}

fn is_day(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Usage rows of `ledger` that match, summed per (day if `by_day`, team, key, model).
pub fn usage_rows(ledger: &Ledger, team: Option<&str>, q: &UsageQuery, by_day: bool) -> Vec<Value> {
    let mut sums: BTreeMap<
        (String, String, String, String),
        isnad_pipeline::access::ledger::Usage,
    > = BTreeMap::new();
    for ((day, t, k, m), u) in &ledger.usage {
        let keep = team.is_none_or(|x| x == t)
            && q.key.as_deref().is_none_or(|x| x == k)
            && q.model.as_deref().is_none_or(|x| x == m)
            && q.from.as_deref().is_none_or(|x| day.as_str() >= x)
            && q.to.as_deref().is_none_or(|x| day.as_str() <= x);
        if keep {
            let d = if by_day { day.clone() } else { String::new() };
            let row = sums
                .entry((d, t.clone(), k.clone(), m.clone()))
                .or_default();
            row.requests += u.requests;
            row.prompt_tokens += u.prompt_tokens;
            row.completion_tokens += u.completion_tokens;
            row.cost_micros += u.cost_micros;
        }
    }
    sums.into_iter()
        .map(|((day, team, key, model), u)| {
            let mut v = json!({
                "team": (team != "-").then_some(team),
                "key": (key != "-").then_some(key),
                "model": model,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "cost_micros": u.cost_micros,
            });
            if by_day {
                v["day"] = day.into();
            }
            v
        })
        .collect()
}
