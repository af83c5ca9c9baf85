//! Every way the gateway refuses a request, through `app(state)` with no socket: the status, the
//! OpenAI error shape with `param` where one is at fault, the headers, and what the journal
//! holds afterwards (the request's group after admission; nothing per request before it, only
//! the counted summary).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, Request, StatusCode},
    Router,
};
use isnad_api::{
    auth::{AdminToken, Credentials},
    config::Config,
    server::{app, AppState},
};
use isnad_journal::{Journal, Options};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

const ADMIN: &str = "admin-token";
const MEMBER: &str = "member-key";
const AUDITOR: &str = "auditor-key";
const INSIDE: &str = "inside-key";

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

struct Env {
    app: Router,
    journal: Journal,
    state: AppState,
    _dir: tempfile::TempDir,
}

/// A gateway over an upstream that is never reached (every request here is refused before a
/// model is called), with `permits` concurrent requests.
async fn env(permits: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), Options::default()).unwrap();
    let config = Config::parse(&format!(
        r#"
[server]
max_body_bytes = 4096

[providers.up]
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "home"
provider = "up"
residency = "local"

[[models]]
id = "abroad"
provider = "up"
residency = "external"

[[models]]
id = "plain"
provider = "up"
residency = "local"
supports_tools = false

[[models]]
id = "embed"
provider = "up"
residency = "local"
kind = "embedding"

[[keys]]
name = "member"
sha256 = "{}"
team = "finance"

[[keys]]
name = "auditor"
role = "auditor"
sha256 = "{}"

[[keys]]
name = "inside"
residency = "local"
sha256 = "{}"
"#,
        hash(MEMBER),
        hash(AUDITOR),
        hash(INSIDE)
    ))
    .unwrap();
    let registry = Arc::new(config.registry().unwrap());
    let credentials = Arc::new(
        Credentials::open(
            AdminToken::from_token(ADMIN),
            &config.keys,
            &*registry,
            journal.clone(),
        )
        .await
        .unwrap(),
    );
    let mut state = AppState::new(&config, journal.clone(), registry, credentials).unwrap();
    state.limit = Arc::new(tokio::sync::Semaphore::new(permits));
    Env {
        app: app(state.clone()),
        journal,
        state,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn post(env: &Env, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut req = Request::post(path).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = env
        .app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        headers,
        body,
    }
}

/// The kinds of the entries appended since `from`, once they are durable.
async fn kinds_since(env: &Env, from: u64) -> Vec<String> {
    let len = env.journal.len();
    if len > 0 {
        env.journal.wait_durable(len - 1).await.unwrap();
    }
    env.journal
        .range(from, len)
        .unwrap()
        .iter()
        .map(|e| e.event.kind.clone())
        .collect()
}

/// Asserts the OpenAI error shape and returns the error object.
fn error_of(a: &Answer, status: u16, code: &str, param: Option<&str>) -> Value {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    let e = a.body["error"].clone();
    assert_eq!(e["code"], code, "{}", a.body);
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
    assert!(e["type"].is_string(), "{}", a.body);
    match param {
        Some(p) => assert_eq!(e["param"], p, "{}", a.body),
        None => assert!(e["param"].is_null(), "{}", a.body),
    }
    e
}

/// A refusal after admission: journaled as the request's group, answered with its trace
/// headers; returns the group's kinds.
async fn refused_group(env: &Env, a: &Answer, from: u64) -> Vec<String> {
    let kinds = kinds_since(env, from).await;
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("request.received"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("request.rejected"),
        "{kinds:?}"
    );
    assert!(a.headers.contains_key("x-request-id"));
    let audit = a.headers["x-audit-trace-id"].to_str().unwrap();
    assert!(audit.starts_with(&format!("{from}:")), "{audit}");
    let rejected = env
        .journal
        .entry(from + kinds.len() as u64 - 1)
        .unwrap()
        .unwrap();
    let json = rejected.event.to_json();
    assert_eq!(
        json.request_id.as_deref(),
        a.headers["x-request-id"].to_str().ok()
    );
    kinds
}

const CHAT: &str = "/v1/chat/completions";

/// A member's chat request carrying `X-Request-Id: id`.
fn with_request_id(id: &str, body: &'static str) -> Request<Body> {
    Request::post(CHAT)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {MEMBER}"))
        .header("x-request-id", id)
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_naming_the_parameter() {
    let env = env(8).await;
    let from = env.journal.len();
    let a = post(&env, CHAT, Some(MEMBER), "{not json").await;
    let e = error_of(&a, 400, "invalid_request", None);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{e}"
    );
    assert_eq!(
        refused_group(&env, &a, from).await,
        ["request.received", "request.rejected"]
    );

    for (body, param) in [
        (
            r#"{"model":"home","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
            "temperature",
        ),
        (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model"),
        (
            r#"{"model":"home","messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}]}"#,
            "messages[1].role",
        ),
    ] {
        let from = env.journal.len();
        let a = post(&env, CHAT, Some(MEMBER), body).await;
        error_of(&a, 400, "invalid_request", Some(param));
        assert_eq!(a.headers["x-should-retry"], "false");
        refused_group(&env, &a, from).await;
    }
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401_and_only_counted() {
    let env = env(8).await;
    let from = env.journal.len();
    let body = r#"{"model":"home","messages":[{"role":"user","content":"hi"}]}"#;
    let a = post(&env, CHAT, None, body).await;
    error_of(&a, 401, "invalid_api_key", None);
    let a = post(&env, CHAT, Some("sk-nobody"), body).await;
    error_of(&a, 401, "invalid_api_key", None);
    assert_eq!(a.body["error"]["type"], "authentication_error");
    assert!(!a.headers.contains_key("x-audit-trace-id"));
    assert!(
        kinds_since(&env, from).await.is_empty(),
        "a 401 was journaled on its own"
    );
    // The summary counts both, under one source.
    env.state.gateway.unadmitted.write(&env.journal).await;
    let kinds = kinds_since(&env, from).await;
    assert_eq!(kinds, ["requests.refused"]);
    let e = env.journal.entry(from).unwrap().unwrap();
    let p: isnad_schemas::RequestsRefused = e.event.payload_as().unwrap();
    assert_eq!((p.code.as_str(), p.count), ("invalid_api_key", 2));
}

#[tokio::test]
async fn an_auditor_may_not_call_models_403() {
    let env = env(8).await;
    let from = env.journal.len();
    let body = r#"{"model":"home","messages":[{"role":"user","content":"hi"}]}"#;
    let a = post(&env, CHAT, Some(AUDITOR), body).await;
    error_of(&a, 403, "permission_denied", None);
    assert_eq!(a.body["error"]["type"], "permission_error");
    assert_eq!(
        refused_group(&env, &a, from).await,
        ["request.received", "request.rejected"]
    );
}

#[tokio::test]
async fn policy_refusals_are_the_groups_last_event() {
    let env = env(8).await;
    let cases = [
        // 404: no such model, or one of the other kind.
        (
            CHAT,
            MEMBER,
            r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#,
            404,
            "model_not_found",
            Some("model"),
        ),
        (
            "/v1/embeddings",
            MEMBER,
            r#"{"model":"home","input":"hi"}"#,
            404,
            "model_not_found",
            Some("model"),
        ),
        // 422: the model cannot honour a parameter.
        (
            CHAT,
            MEMBER,
            r#"{"model":"plain","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            422,
            "unsupported_parameter",
            Some("tools"),
        ),
        (
            "/v1/embeddings",
            MEMBER,
            r#"{"model":"embed","input":"hi","dimensions":8}"#,
            422,
            "unsupported_parameter",
            Some("dimensions"),
        ),
        // 451: a local-only key asking for an external model.
        (
            CHAT,
            INSIDE,
            r#"{"model":"abroad","messages":[{"role":"user","content":"hi"}]}"#,
            451,
            "sovereignty_violation",
            None,
        ),
    ];
    for (path, key, body, status, code, param) in cases {
        let from = env.journal.len();
        let a = post(&env, path, Some(key), body).await;
        error_of(&a, status, code, param);
        let kinds = refused_group(&env, &a, from).await;
        assert_eq!(
            kinds,
            [
                "request.received",
                "guardrail.evaluated",
                "request.rejected"
            ],
            "{code}"
        );
        let rejected = env.journal.entry(from + 2).unwrap().unwrap();
        let r: isnad_schemas::RequestRejected = rejected.event.payload_as().unwrap();
        assert_eq!((r.status, r.code.as_str()), (status, code));
    }
    // The member's team is journaled with its requests.
    let e = env.journal.entry(env.journal.len() - 3).unwrap().unwrap();
    assert_eq!(
        e.event.team.as_deref(),
        None,
        "the local-only key has no team"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let env = env(8).await;
    let from = env.journal.len();
    let big = format!(
        r#"{{"model":"home","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(8192)
    );
    let a = post(&env, CHAT, Some(MEMBER), &big).await;
    error_of(&a, 413, "payload_too_large", None);
    let kinds = refused_group(&env, &a, from).await;
    assert_eq!(kinds, ["request.received", "request.rejected"]);
    let received = env.journal.entry(from).unwrap().unwrap();
    assert_eq!(received.event.team.as_deref(), Some("finance"));
}

#[tokio::test]
async fn load_is_shed_with_503_and_retry_after_and_only_counted() {
    let env = env(0).await;
    let from = env.journal.len();
    let body = r#"{"model":"home","messages":[{"role":"user","content":"hi"}]}"#;
    let a = post(&env, CHAT, Some(MEMBER), body).await;
    error_of(&a, 503, "server_overloaded", None);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.headers["x-should-retry"], "true");
    assert!(kinds_since(&env, from).await.is_empty());
    env.state.gateway.unadmitted.write(&env.journal).await;
    assert_eq!(kinds_since(&env, from).await, ["requests.refused"]);
}

#[tokio::test]
async fn a_client_request_id_is_used_and_a_bad_one_refused() {
    let env = env(8).await;
    let body = r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#;
    let req = |id: &str| with_request_id(id, body);
    let resp = env.app.clone().oneshot(req("trace-abc.123")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "trace-abc.123");
    let from = env.journal.len();
    let resp = env.app.clone().oneshot(req("has space")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["param"], "x-request-id");
    assert_eq!(
        kinds_since(&env, from).await,
        ["request.received", "request.rejected"]
    );
}

#[tokio::test]
async fn a_request_id_in_flight_is_refused_and_journaled() {
    let env = env(8).await;
    // Another request holds the id.
    env.state
        .gateway
        .bus
        .attach_new("busy-id", Arc::new(()))
        .unwrap();
    let from = env.journal.len();
    let body = r#"{"model":"home","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = env
        .app
        .clone()
        .oneshot(with_request_id("busy-id", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["param"], "x-request-id", "{v}");
    assert_eq!(
        kinds_since(&env, from).await,
        [
            "request.received",
            "guardrail.evaluated",
            "route.selected",
            "request.rejected"
        ]
    );
    assert_eq!(
        env.state.gateway.bus.attachments_in_flight(),
        1,
        "the other request keeps its attachment"
    );
}
