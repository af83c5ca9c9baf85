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
    routing::{get, post},
    Json, Router,
};
use isnad_pipeline::access::{KeyRecord, KeyRequest, Principal, Role, Team, TeamRequest};
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
    })
}

fn list(data: Vec<Value>) -> Response {
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn me(State(state): State<Gateway>, admitted: Admitted) -> Answer {
    let p = &admitted.principal;
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
