//! Access control through `app(state)` with no socket: the admin API for teams and keys, and
//! an authorization matrix of every endpoint against every kind of credential, with an
//! injected clock so expiry and rotation grace are exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode},
    Router,
};
use isnad_api::{
    auth::{check_keys, AdminToken, Credentials},
    config::Config,
    server::{app, AppState},
};
use isnad_journal::{Journal, Options};
use isnad_pipeline::access::Access;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

const ADMIN: &str = "admin-token";
const CONFIG_MEMBER: &str = "config-member-key";

static NOW: AtomicI64 = AtomicI64::new(1_800_000_000_000_000);

fn clock() -> i64 {
    NOW.load(Ordering::SeqCst)
}

struct Env {
    app: Router,
    journal: Journal,
    unadmitted: Arc<isnad_api::admission::Unadmitted>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), Options::default()).unwrap();
    let config = Config::parse(&format!(
        r#"
[providers.up]
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "home"
provider = "up"
residency = "local"

[[keys]]
name = "config-member"
sha256 = "{}"
team = "finance"
"#,
        hex::encode(Sha256::digest(CONFIG_MEMBER.as_bytes()))
    ))
    .unwrap();
    let registry = Arc::new(config.registry().unwrap());
    let admin = AdminToken::from_token(ADMIN);
    let config_keys = check_keys(&admin, &config.keys, &*registry).unwrap();
    let access = Access::open(journal.clone()).unwrap().with_clock(clock);
    access.sync_config(&config_keys).await.unwrap();
    let credentials = Arc::new(Credentials::with_access(admin, Arc::new(access)));
    let state = AppState::new(&config, journal.clone(), registry, credentials).unwrap();
    Env {
        unadmitted: state.gateway.unadmitted.clone(),
        app: app(state),
        journal,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

async fn call(env: &Env, method: Method, path: &str, key: Option<&str>, body: Value) -> Answer {
    call_from(env, method, path, key, body, "127.0.0.1:5000").await
}

async fn call_from(
    env: &Env,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Value,
    from: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body = if body.is_null() {
        Body::empty()
    } else {
        req = req.header("content-type", "application/json");
        Body::from(body.to_string())
    };
    let mut req = req.body(body).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Answer { status, body }
}

impl Answer {
    fn ok(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        self.body
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn create_key(env: &Env, by: &str, body: Value) -> (String, String) {
    let v = call(env, Method::POST, "/v1/keys", Some(by), body)
        .await
        .ok(201);
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn teams_and_keys_through_the_admin_api() {
    let env = env().await;
    // The config key's team exists from the start.
    let teams = call(&env, Method::GET, "/v1/teams", Some(ADMIN), Value::Null)
        .await
        .ok(200);
    assert_eq!(teams["data"][0]["id"], "finance");
    let t = call(
        &env,
        Method::POST,
        "/v1/teams",
        Some(ADMIN),
        json!({"id": "risk", "name": "Risk"}),
    )
    .await
    .ok(201);
    assert_eq!(
        (t["id"].as_str(), t["created_by"].as_str()),
        (Some("risk"), Some("admin"))
    );
    let again = call(
        &env,
        Method::POST,
        "/v1/teams",
        Some(ADMIN),
        json!({"id": "risk"}),
    )
    .await;
    assert_eq!((again.status.as_u16(), again.code()), (409, "conflict"));
    let bad = call(
        &env,
        Method::POST,
        "/v1/teams",
        Some(ADMIN),
        json!({"id": "r i s k"}),
    )
    .await;
    assert_eq!(
        (bad.status.as_u16(), bad.body["error"]["param"].as_str()),
        (400, Some("id"))
    );
    let typo = call(
        &env,
        Method::POST,
        "/v1/teams",
        Some(ADMIN),
        json!({"id": "x", "nmae": "y"}),
    )
    .await;
    assert_eq!(typo.status.as_u16(), 400, "{}", typo.body);
    let renamed = call(
        &env,
        Method::PATCH,
        "/v1/teams/risk",
        Some(ADMIN),
        json!({"name": "Risk & Compliance"}),
    )
    .await
    .ok(200);
    assert_eq!(renamed["name"], "Risk & Compliance");

    let created = call(
        &env,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        json!({"label": "ledger-bot", "team": "risk", "models": ["home"], "residency": "local"}),
    )
    .await
    .ok(201);
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(key.starts_with("isnad_sk_") && key.contains(id));
    // The key is in the create answer only.
    let shown = call(
        &env,
        Method::GET,
        &format!("/v1/keys/{id}"),
        Some(ADMIN),
        Value::Null,
    )
    .await
    .ok(200);
    assert!(
        shown.get("key").is_none() && shown["status"] == "active",
        "{shown}"
    );
    assert_eq!(shown["models"], json!(["home"]));
    let me = call(&env, Method::GET, "/v1/me", Some(key), Value::Null)
        .await
        .ok(200);
    assert_eq!(
        (
            me["team"].as_str(),
            me["role"].as_str(),
            me["residency"].as_str()
        ),
        (Some("risk"), Some("member"), Some("local"))
    );
    assert!(me["key"]["last_used_at"].is_i64(), "{me}");
    let unknown_model = call(
        &env,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        json!({"label": "x", "team": "risk", "models": ["nope"]}),
    )
    .await;
    assert_eq!(
        (
            unknown_model.status.as_u16(),
            unknown_model.body["error"]["param"].as_str()
        ),
        (400, Some("models"))
    );

    // Every change is journaled with its actor, and no key reaches the journal.
    let len = env.journal.len();
    env.journal.wait_durable(len - 1).await.unwrap();
    let entries = env.journal.range(0, len).unwrap();
    let changes: Vec<(String, Option<String>)> = entries
        .iter()
        .filter(|e| e.event.kind.starts_with("team.") || e.event.kind.starts_with("key."))
        .map(|e| (e.event.kind.clone(), e.event.actor.clone()))
        .collect();
    assert_eq!(
        changes,
        [
            ("team.created".into(), Some("config".into())),
            ("key.created".into(), Some("config".into())),
            ("team.created".into(), Some("admin".into())),
            ("team.updated".into(), Some("admin".into())),
            ("key.created".into(), Some("admin".into())),
        ]
    );
    let secret = &key[key.len() - 38..];
    assert!(entries.iter().all(|e| !e
        .canonical
        .windows(secret.len())
        .any(|w| w == secret.as_bytes())));
}

#[tokio::test]
async fn revocation_holds_on_the_very_next_request() {
    let env = env().await;
    let (id, key) = create_key(&env, ADMIN, json!({"label": "svc", "team": "finance"})).await;
    call(&env, Method::GET, "/v1/me", Some(&key), Value::Null)
        .await
        .ok(200);
    let revoked = call(
        &env,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(ADMIN),
        json!({"reason": "leaked"}),
    )
    .await
    .ok(200);
    assert_eq!(
        (
            revoked["status"].as_str(),
            revoked["revoke_reason"].as_str()
        ),
        (Some("revoked"), Some("leaked"))
    );
    let next = call(&env, Method::GET, "/v1/models", Some(&key), Value::Null).await;
    assert_eq!(
        (next.status.as_u16(), next.code()),
        (401, "invalid_api_key")
    );
    assert!(next.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
}

/// Each credential against each endpoint: the status and OpenAI error code a client gets.
#[tokio::test]
async fn authorization_matrix() {
    let env = env().await;
    call(
        &env,
        Method::POST,
        "/v1/teams",
        Some(ADMIN),
        json!({"id": "other"}),
    )
    .await
    .ok(201);
    let (_, operator) = create_key(
        &env,
        ADMIN,
        json!({"label": "op", "team": "finance", "role": "operator"}),
    )
    .await;
    let (_, other_operator) = create_key(
        &env,
        ADMIN,
        json!({"label": "op2", "team": "other", "role": "operator"}),
    )
    .await;
    let (_, member) = create_key(&env, &operator, json!({"label": "m"})).await;
    let (_, auditor) = create_key(&env, ADMIN, json!({"label": "a", "role": "auditor"})).await;
    let (_, expiring) = create_key(
        &env,
        ADMIN,
        json!({"label": "e", "team": "finance", "expires_in_s": 60}),
    )
    .await;
    let (revoked_id, revoked) =
        create_key(&env, ADMIN, json!({"label": "r", "team": "finance"})).await;
    call(
        &env,
        Method::DELETE,
        &format!("/v1/keys/{revoked_id}"),
        Some(ADMIN),
        Value::Null,
    )
    .await
    .ok(200);
    let (old_id, old_in_grace) =
        create_key(&env, ADMIN, json!({"label": "g", "team": "finance"})).await;
    let rotated = call(
        &env,
        Method::POST,
        &format!("/v1/keys/{old_id}/rotate"),
        Some(ADMIN),
        json!({"grace_seconds": 3600}),
    )
    .await
    .ok(201);
    let rotated_key = rotated["key"].as_str().unwrap().to_owned();
    let (past_id, past_grace) =
        create_key(&env, ADMIN, json!({"label": "p", "team": "finance"})).await;
    call(
        &env,
        Method::POST,
        &format!("/v1/keys/{past_id}/rotate"),
        Some(ADMIN),
        json!({"grace_seconds": 0}),
    )
    .await
    .ok(201);
    let (_, fenced) = create_key(
        &env,
        ADMIN,
        json!({"label": "f", "team": "finance", "cidrs": ["10.9.0.0/16"]}),
    )
    .await;
    let (finance_key_id, _) =
        create_key(&env, ADMIN, json!({"label": "target", "team": "finance"})).await;
    NOW.fetch_add(120_000_000, Ordering::SeqCst); // past `expiring`, inside the rotation's hour

    let malformed = "isnad_sk_AAAAAAAAAAAA_BBBB";
    let unknown = "isnad_sk_0123456789ab_cdefghijklmnopqrstuvwxyzABCDEF000000";
    let creds: Vec<(&str, Option<&str>)> = vec![
        ("none", None),
        ("malformed", Some(malformed)),
        ("unknown", Some(unknown)),
        ("expired", Some(&expiring)),
        ("revoked", Some(&revoked)),
        ("rotated past grace", Some(&past_grace)),
        ("rotated within grace", Some(&old_in_grace)),
        ("rotation's new key", Some(&rotated_key)),
        ("outside allowlist", Some(&fenced)),
        ("admin", Some(ADMIN)),
        ("operator", Some(&operator)),
        ("other team's operator", Some(&other_operator)),
        ("member", Some(&member)),
        ("config member", Some(CONFIG_MEMBER)),
        ("auditor", Some(&auditor)),
    ];
    let chat = json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]});
    let team_key = format!("/v1/keys/{finance_key_id}");
    let endpoints: Vec<(&str, Method, &str, Value)> = vec![
        ("chat", Method::POST, "/v1/chat/completions", chat.clone()),
        (
            "embeddings",
            Method::POST,
            "/v1/embeddings",
            json!({"model": "nope", "input": "hi"}),
        ),
        ("models", Method::GET, "/v1/models", Value::Null),
        (
            "journal",
            Method::GET,
            "/v1/activity/checkpoint",
            Value::Null,
        ),
        ("me", Method::GET, "/v1/me", Value::Null),
        ("teams", Method::GET, "/v1/teams", Value::Null),
        ("team key", Method::GET, &team_key, Value::Null),
        (
            "create key",
            Method::POST,
            "/v1/keys",
            json!({"label": "new", "team": "finance"}),
        ),
    ];
    // Refusals before admission, the same for every endpoint.
    let before = |cred: &str| -> Option<(u16, &'static str)> {
        match cred {
            "none" | "malformed" | "unknown" | "expired" | "revoked" | "rotated past grace" => {
                Some((401, "invalid_api_key"))
            }
            "outside allowlist" => Some((403, "address_not_allowed")),
            _ => None,
        }
    };
    let role = |cred: &str| match cred {
        "admin" => "admin",
        "operator" | "other team's operator" => "operator",
        "auditor" => "auditor",
        _ => "member",
    };
    let mut failures = Vec::new();
    let journaled_from = env.journal.len();
    env.unadmitted.drain();
    let mut want_journaled = 0;
    let mut want_summarised = 0;
    for (cred, key) in &creds {
        for (name, method, path, body) in &endpoints {
            let want: (u16, &str) = before(cred).unwrap_or_else(|| match (*name, role(cred)) {
                // Admitted model calls reach the router: the model does not exist.
                ("chat" | "embeddings", "auditor") => (403, "permission_denied"),
                ("chat" | "embeddings", _) => (404, "model_not_found"),
                ("models" | "me", _) => (200, ""),
                ("journal", "admin" | "auditor") => (200, ""),
                ("journal", _) => (403, "permission_denied"),
                ("teams", "member") => (403, "permission_denied"),
                ("teams", _) => (200, ""),
                ("team key", "member") => (403, "permission_denied"),
                ("team key", "operator") if *cred == "other team's operator" => (404, "not_found"),
                ("team key", _) => (200, ""),
                ("create key", "admin" | "operator") if *cred != "other team's operator" => {
                    (201, "")
                }
                ("create key", _) => (403, "permission_denied"),
                _ => unreachable!(),
            });
            if before(cred).is_some() {
                want_summarised += 1;
            } else if want.0 >= 400 {
                want_journaled += 1;
            }
            let a = call(&env, method.clone(), path, *key, body.clone()).await;
            let got = (a.status.as_u16(), a.code().to_owned());
            if got != (want.0, want.1.to_owned()) {
                failures.push(format!(
                    "{cred} × {name}: got {got:?}, want {want:?}: {}",
                    a.body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every refusal of an admitted request is journaled with its actor; those refused before
    // admission are counted for the per-address summaries.
    let len = env.journal.len();
    let rejected: Vec<_> = env
        .journal
        .range(journaled_from, len)
        .unwrap()
        .into_iter()
        .filter(|e| e.event.kind == "request.rejected")
        .collect();
    assert_eq!(rejected.len(), want_journaled, "journaled refusals");
    assert!(rejected.iter().all(|e| e.event.actor.is_some()));
    assert!(
        rejected
            .iter()
            .filter_map(|e| e.event.payload_as::<isnad_schemas::RequestRejected>().ok())
            .any(|p| p.endpoint == "POST /v1/keys" && p.code == "permission_denied"),
        "an admin-API refusal names its method and path"
    );
    let summarised: u64 = env.unadmitted.drain().iter().map(|s| s.count).sum();
    assert_eq!(summarised, want_summarised, "refusals before admission");

    // From inside its allowlist the fenced key works.
    let inside = call_from(
        &env,
        Method::GET,
        "/v1/me",
        Some(&fenced),
        Value::Null,
        "10.9.1.2:4000",
    )
    .await;
    assert_eq!(inside.status.as_u16(), 200, "{}", inside.body);
}
