//! Budgets and rate limits through `app(state)` against an in-process upstream: concurrent
//! clients never overspend, streams without usage are charged, the ledger rebuilt from the
//! journal equals the live one, a restart keeps every figure and header, request and token
//! limits answer 429 with their headers, and a retry with an `Idempotency-Key` is not charged
//! twice.

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
    let (s, _, v) = call_with(env, method, path, key, body, &[]).await;
    (s, v)
}

/// [`call`] with extra request headers, returning the response's headers too.
async fn call_with(
    env: &Env,
    method: &str,
    path: &str,
    key: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, axum::http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

/// A chat completion with `key` and extra headers.
async fn post_chat(
    env: &Env,
    key: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, axum::http::HeaderMap, Value) {
    call_with(env, "POST", "/v1/chat/completions", key, body, headers).await
}

fn header<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
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

/// The rate-limit headers of a response, by name.
fn rate_headers(h: &axum::http::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| k.as_str().contains("ratelimit"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn token_limits_refuse_past_the_window_and_a_restart_keeps_them_and_their_headers() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let (me_before, headers_before, key) = {
        let env = env(dir.path(), &up).await;
        let key = setup_team(&env, 100_000).await;
        let id = call(&env, "GET", "/v1/me", &key, Value::Null).await.1["key"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, v) = call(
            &env,
            "PUT",
            &format!("/v1/keys/{id}/limits"),
            ADMIN,
            json!({"tokens_per_minute": 400, "tokens_per_day": 100_000}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            &env,
            "PUT",
            "/v1/teams/finance/limits",
            ADMIN,
            json!({"tokens_per_day": 50_000}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // Each call holds its prompt's bytes + 8 + max_tokens (100) = 110 tokens and settles
        // to 50: three fit in a minute of 400 while the earlier ones settle.
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (s, h, v) = post_chat(&env, &key, chat(Some(100), false), &[]).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(header(&h, "x-ratelimit-limit-tokens"), "400");
            remaining.push(
                header(&h, "x-ratelimit-remaining-tokens")
                    .parse::<u64>()
                    .unwrap(),
            );
            env.budgets
                .ledger()
                .wait_for(env.journal.len())
                .await
                .unwrap();
        }
        // 400 − 110, then 400 − 50 − 110, then 400 − 100 − 110.
        assert_eq!(remaining, [290, 240, 190]);
        // A request that needs more than is left in the minute is refused until it renews.
        let (s, h, v) = post_chat(&env, &key, chat(Some(300), false), &[]).await;
        assert_eq!(s, 429, "{v}");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(header(&h, "x-should-retry"), "true");
        let ms: u64 = header(&h, "retry-after-ms").parse().unwrap();
        let secs: u64 = header(&h, "retry-after").parse().unwrap();
        assert!(
            ms > 0 && ms <= 60_000 && secs == ms.div_ceil(1000),
            "{ms} {secs}"
        );
        // One that could never fit is told so, and not to retry.
        let (s, h, v) = call_with(
            &env,
            "POST",
            "/v1/chat/completions",
            &key,
            chat(Some(5_000), false),
            &[],
        )
        .await;
        assert_eq!(s, 429, "{v}");
        assert_eq!(header(&h, "x-should-retry"), "false");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("lower max_tokens"),
            "{v}"
        );
        env.budgets
            .ledger()
            .wait_for(env.journal.len())
            .await
            .unwrap();
        let (s, h, me) = call_with(&env, "GET", "/v1/me", &key, Value::Null, &[]).await;
        assert_eq!(s, 200);
        env.journal.shutdown().await.unwrap();
        (me, rate_headers(&h), key)
    };
    assert_eq!(
        me_before["token_windows"][0]["remaining"], 250,
        "{me_before}"
    );
    assert!(
        headers_before
            .iter()
            .any(|(k, v)| k == "x-ratelimit-remaining-tokens" && v == "250"),
        "{headers_before:?}"
    );
    let env = env(dir.path(), &up).await;
    let (s, h, me_after) = call_with(&env, "GET", "/v1/me", &key, Value::Null, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        rate_headers(&h),
        headers_before,
        "the same headers after the restart"
    );
    for field in ["token_windows", "budgets", "limits", "team_limits"] {
        assert_eq!(me_after[field], me_before[field], "{field}");
    }
}

#[tokio::test]
async fn a_key_over_its_request_rate_gets_429_with_every_header() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let env = env(dir.path(), &up).await;
    let key = setup_team(&env, 1_000_000).await;
    let id = call(&env, "GET", "/v1/me", &key, Value::Null).await.1["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An operator of another team may not change this key's limits; an admin may.
    let (s, v) = call(
        &env,
        "PUT",
        &format!("/v1/keys/{id}/limits"),
        ADMIN,
        json!({"requests_per_minute": 60, "burst": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &env,
        "PUT",
        &format!("/v1/keys/{id}/limits"),
        ADMIN,
        json!({"requests_per_minut": 60}),
    )
    .await;
    assert_eq!(s, 400, "unknown fields are refused: {v}");
    let (s, v) = call(
        &env,
        "PUT",
        "/v1/teams/finance/limits",
        ADMIN,
        json!({"requests_per_minute": 60}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("requests_per_minute")),
        "{v}"
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (s, h, v) = post_chat(&env, &key, chat(Some(10), false), &[]).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(header(&h, "x-ratelimit-limit"), "60");
        assert_eq!(header(&h, "x-ratelimit-limit-requests"), "60");
        assert_eq!(header(&h, "ratelimit-policy"), "\"key\";q=60;w=60");
        let reset: u64 = header(&h, "x-ratelimit-reset").parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            reset >= now && reset <= now + 61,
            "a Unix timestamp: {reset}"
        );
        seen.push(header(&h, "x-ratelimit-remaining").to_owned());
    }
    assert_eq!(seen, ["1", "0"]);
    let (s, h, v) = post_chat(&env, &key, chat(Some(10), false), &[]).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(header(&h, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&h, "x-should-retry"), "true");
    assert!(
        header(&h, "retry-after-ms").parse::<u64>().unwrap() <= 1000,
        "one a second"
    );
    assert_eq!(header(&h, "retry-after"), "1");
    assert!(
        header(&h, "ratelimit").starts_with("\"key\";r=0;t="),
        "{h:?}"
    );
    // The admin key has no request limit of its own.
    let (s, _) = call(&env, "GET", "/v1/teams", ADMIN, Value::Null).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_is_answered_once_and_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let env = env(dir.path(), &up).await;
    let key = setup_team(&env, 1_000_000).await;
    let idem = [("idempotency-key", "retry-1")];
    let first = post_chat(&env, &key, chat(Some(40), false), &idem).await;
    assert_eq!(first.0, 200, "{}", first.2);
    let again = post_chat(&env, &key, chat(Some(40), false), &idem).await;
    assert_eq!(again.0, 200);
    assert_eq!(again.2, first.2, "the first answer, again");
    assert_eq!(header(&again.1, "idempotent-replayed"), "true");
    // Another body under the same key is a client error, not a replay.
    let other = post_chat(&env, &key, chat(Some(41), false), &idem).await;
    assert_eq!(other.0, 400, "{}", other.2);
    assert_eq!(other.2["error"]["param"], "idempotency-key");
    // A stream is replayed byte for byte too.
    let sidem = [("idempotency-key", "stream-1")];
    let s1 = post_chat(&env, &key, chat(Some(40), true), &sidem).await;
    let s2 = post_chat(&env, &key, chat(Some(40), true), &sidem).await;
    assert_eq!((s1.0, s2.0), (200, 200));
    assert_eq!(s1.2, s2.2);
    env.budgets
        .ledger()
        .wait_for(env.journal.len())
        .await
        .unwrap();
    let usage = call(&env, "GET", "/v1/usage", ADMIN, Value::Null).await.1;
    assert_eq!(
        usage["data"][0]["requests"], 2,
        "one chat and one stream reached the model: {usage}"
    );
    let finished = env
        .journal
        .range(0, env.journal.len())
        .unwrap()
        .iter()
        .filter(|e| e.event.kind == "completion.finished")
        .count();
    assert_eq!(finished, 2);
}
