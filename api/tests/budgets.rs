//! Budgets through `app(state)` against an in-process upstream: concurrent clients never
//! overspend, streams without usage are charged, the ledger rebuilt from the journal equals
//! the live one, and a restart keeps every figure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
};

use axum::{body::Body, http::Request, routing::post, Json, Router};
use isnad_api::{
    auth::{check_keys, AdminToken, Credentials},
    config::Config,
    server::{app, AppState},
};
use isnad_journal::{Journal, Options};
use isnad_pipeline::{
    access::{ledger::Ledger, Access, BudgetOptions, Budgets},
    Projection as _,
};
use serde_json::{json, Value};
use tower::ServiceExt as _;

const ADMIN: &str = "admin-token";
/// Prompt and completion tokens the upstream reports for every answer.
const PROMPT: u64 = 10;
const COMPLETION: u64 = 40;

static NOW: AtomicI64 = AtomicI64::new(1_796_200_000_000_000);

fn clock() -> i64 {
    NOW.load(Ordering::SeqCst)
}

/// An upstream that answers every chat with fixed usage; a stream carries no usage chunk.
async fn upstream() -> String {
    async fn chat(Json(req): Json<Value>) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        if req["stream"] == true {
            let mut body = String::new();
            for w in ["one ", "two ", "three"] {
                body += &format!(
                    "data: {}\n\n",
                    json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]})
                );
            }
            body += "data: [DONE]\n\n";
            return ([("content-type", "text/event-stream")], body).into_response();
        }
        Json(json!({
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION},
        }))
        .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            Router::new().route("/v1/chat/completions", post(chat)),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}/v1")
}

struct Env {
    app: Router,
    journal: Journal,
    budgets: Arc<Budgets>,
    _runner: isnad_pipeline::Runner,
}

async fn env(dir: &Path, upstream: &str) -> Env {
    let journal = Journal::open_dir(dir, Options::default()).unwrap();
    let config = Config::parse(&format!(
        r#"
[budgets]
default_max_tokens = 100

[providers.up]
base_url = "{upstream}"

[[models]]
id = "home"
provider = "up"
residency = "local"
price_per_1k_input = 0.5
price_per_1k_output = 1.5
"#
    ))
    .unwrap();
    let registry = Arc::new(config.registry().unwrap());
    let admin = AdminToken::from_token(ADMIN);
    let keys = check_keys(&admin, &config.keys, &*registry).unwrap();
    let access = Access::open(journal.clone()).unwrap().with_clock(clock);
    access.sync_config(&keys).await.unwrap();
    let credentials = Arc::new(Credentials::with_access(admin, Arc::new(access)));
    let mut state = AppState::new(&config, journal.clone(), registry, credentials).unwrap();
    // The same ledger over an injected clock, so a period never ends mid-test.
    let mut runner = isnad_pipeline::Runner::new(state.gateway.bus.clone());
    let budgets = Budgets::start(
        &mut runner,
        state.gateway.bus.clone(),
        BudgetOptions {
            default_max_tokens: 100,
            ..BudgetOptions::default()
        },
    )
    .unwrap()
    .with_clock(clock);
    let budgets = Arc::new(budgets);
    budgets.ledger().wait_for(journal.len()).await.unwrap();
    budgets.sweep(true).await.unwrap();
    state.gateway.budgets = budgets.clone();
    Env {
        app: app(state),
        journal,
        budgets,
        _runner: runner,
    }
}

async fn call(env: &Env, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn setup_team(env: &Env, tokens: u64) -> String {
    let (s, _) = call(env, "POST", "/v1/teams", ADMIN, json!({"id": "finance"})).await;
    assert_eq!(s, 201);
    let (s, v) = call(
        env,
        "PUT",
        "/v1/teams/finance/budget",
        ADMIN,
        json!({"tokens": tokens, "period": "day", "timezone": "+03:00"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        env,
        "POST",
        "/v1/keys",
        ADMIN,
        json!({"label": "bot", "team": "finance"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

fn chat(max_tokens: Option<u64>, stream: bool) -> Value {
    let mut b =
        json!({"model": "home", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    if let Some(m) = max_tokens {
        b["max_tokens"] = m.into();
    }
    b
}

/// Tokens settled for `finance`, summed from the journal's entries alone.
fn spent_in_journal(journal: &Journal) -> u64 {
    let mut l = Ledger::default();
    for e in journal.range(0, journal.len()).unwrap() {
        if l.wants(&e) {
            l.apply(&e);
        }
    }
    l.settled
        .iter()
        .filter(|(k, _)| k.starts_with("team:finance@"))
        .map(|(_, a)| a.tokens)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_clients_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let env = Arc::new(env(dir.path(), &upstream().await).await);
    // Each request holds 2 bytes + 8 template tokens + max_tokens 40 = 50, and spends 50.
    let cap = 1_000;
    let key = setup_team(&env, cap).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let env = env.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &env,
                "POST",
                "/v1/chat/completions",
                &key,
                chat(Some(COMPLETION), false),
            )
            .await
        }));
    }
    let mut ok = 0u64;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 => ok += 1,
            429 => assert_eq!(v["error"]["code"], "budget_exceeded", "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    let len = env.journal.len();
    env.journal.wait_durable(len - 1).await.unwrap();
    let spent = spent_in_journal(&env.journal);
    assert!(
        ok >= 1 && spent == ok * (PROMPT + COMPLETION),
        "ok {ok}, spent {spent}"
    );
    assert!(spent <= cap, "spent {spent} of {cap}");

    // The ledger rebuilt from the log equals the live one.
    env.budgets
        .ledger()
        .wait_for(env.journal.len())
        .await
        .unwrap();
    let mut rebuilt = Ledger::default();
    for e in env.journal.range(0, env.journal.len()).unwrap() {
        if rebuilt.wants(&e) {
            rebuilt.apply(&e);
        }
    }
    assert_eq!(env.budgets.ledger().read(Clone::clone), rebuilt);
    assert!(
        rebuilt.holds.is_empty(),
        "every hold resolved: {:?}",
        rebuilt.holds
    );
}

#[tokio::test]
async fn a_stream_without_usage_is_charged_and_a_spent_budget_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &upstream().await).await;
    let key = setup_team(&env, 300).await;
    let (s, body) = call(
        &env,
        "POST",
        "/v1/chat/completions",
        &key,
        chat(Some(50), true),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.as_str().unwrap().contains("three"));
    env.budgets
        .ledger()
        .wait_for(env.journal.len())
        .await
        .unwrap();
    let spent = spent_in_journal(&env.journal);
    assert!(
        spent >= 4,
        "charged locally counted tokens, not nothing: {spent}"
    );
    // Without max_tokens a request holds the configured default (100) and fits twice more at
    // most; then the budget is spent and says so, with x-should-retry false.
    let mut last = (200, Value::Null);
    for _ in 0..10 {
        last = call(
            &env,
            "POST",
            "/v1/chat/completions",
            &key,
            chat(None, false),
        )
        .await;
        if last.0 != 200 {
            break;
        }
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert_eq!(last.1["error"]["code"], "budget_exceeded");
    assert_eq!(last.1["error"]["type"], "insufficient_quota");
    let me = call(&env, "GET", "/v1/me", &key, Value::Null).await.1;
    let b = &me["budgets"][0];
    assert_eq!(
        (b["scope"].as_str(), b["limit"]["tokens"].as_u64()),
        (Some("team:finance"), Some(300))
    );
    assert!(b["remaining"]["tokens"].as_u64().unwrap() < 100 + 10, "{b}");
}

#[tokio::test]
async fn a_restart_keeps_budgets_usage_and_remaining_quota() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let (before, usage) = {
        let env = env(dir.path(), &up).await;
        let key = setup_team(&env, 10_000).await;
        for _ in 0..3 {
            let (s, v) = call(
                &env,
                "POST",
                "/v1/chat/completions",
                &key,
                chat(Some(40), false),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        env.budgets
            .ledger()
            .wait_for(env.journal.len())
            .await
            .unwrap();
        let me = call(&env, "GET", "/v1/me", &key, Value::Null).await.1;
        let usage = call(&env, "GET", "/v1/usage?group_by=day", ADMIN, Value::Null)
            .await
            .1;
        env.journal.shutdown().await.unwrap();
        (me["budgets"].clone(), usage)
    };
    assert_eq!(before[0]["spent"]["tokens"], 150);
    assert_eq!(usage["data"][0]["requests"], 3);
    // 3 × (10 × 0.5 + 40 × 1.5) / 1000 = 0.195 currency units = 195,000 micro-units.
    assert_eq!(usage["data"][0]["cost_micros"], 195_000);
    let env = env(dir.path(), &up).await;
    let keys = call(&env, "GET", "/v1/keys", ADMIN, Value::Null).await.1;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    // The key itself still works after the restart, and the figures are the same.
    let (s, _) = call(&env, "GET", "/v1/usage?group_by=day", ADMIN, Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(
        call(&env, "GET", "/v1/usage?group_by=day", ADMIN, Value::Null)
            .await
            .1,
        usage
    );
    let admin_view = env.budgets.standing(Some("finance"), None);
    assert_eq!(admin_view[0].spent.tokens, 150);
    assert_eq!(
        serde_json::to_value(admin_view[0].remaining_tokens).unwrap(),
        before[0]["remaining"]["tokens"]
    );
}
