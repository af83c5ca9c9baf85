//! The gateway driven by the official `openai` Python SDK (and the same checks from the Node SDK,
//! LangChain's and LlamaIndex's OpenAI integrations),
//! against the mock upstream on loopback:
//! chat, streaming with usage, tool calls, embeddings (base64 and float), models, fallbacks, and
//! each error status as the SDK's typed exception; then the journal is checked for every request's
//! events, and a client that disconnects mid-stream still gets its outcome journaled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{process::Command, time::Duration};

use isnad_tests::{
    curl, run_llamaindex_script, run_node_sdk_script, run_sdk_script, MockUpstream, Server,
};

const TOKEN: &str = "sdk-test-token";

/// Keys the SDK scripts use besides `TOKEN`; the configuration holds only their SHA-256.
const AUDITOR_KEY: &str = "sdk-auditor-key";
const CLINIC_KEY: &str = "sdk-clinic-key";

fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn config(mock: &str) -> String {
    let (auditor, clinic) = (sha256_hex(AUDITOR_KEY), sha256_hex(CLINIC_KEY));
    format!(
        r#"
[routing]
default_model = "small"

[providers.mock]
base_url = "{mock}/v1"
max_retries = 1

[providers.impatient]
base_url = "{mock}/v1"
read_timeout_ms = 500
max_retries = 0

[providers.dead]
base_url = "http://127.0.0.1:1/v1"
connect_timeout_ms = 500
max_retries = 1

[[models]]
id = "small"
provider = "mock"
upstream_model = "mock-small"
residency = "local"
languages = ["ar", "en"]

[[models]]
id = "broken"
provider = "mock"
upstream_model = "mock-error"
residency = "local"
fallbacks = ["small"]

[[models]]
id = "failing"
provider = "mock"
upstream_model = "mock-error"
residency = "local"

[[models]]
id = "limited"
provider = "mock"
upstream_model = "mock-rate-limit"
residency = "local"

[[models]]
id = "unreachable"
provider = "dead"
residency = "local"

[[models]]
id = "hanging"
provider = "impatient"
upstream_model = "mock-hang"
residency = "local"

[[models]]
id = "cut"
provider = "mock"
upstream_model = "mock-cut"
residency = "local"

[[models]]
id = "slow"
provider = "mock"
upstream_model = "mock-slow"
residency = "local"

[[models]]
id = "embed"
provider = "mock"
kind = "embedding"
residency = "local"
variable_dimensions = true

[[models]]
id = "fixed-embed"
provider = "mock"
kind = "embedding"
residency = "local"

[[models]]
id = "abroad"
provider = "mock"
upstream_model = "mock-small"
residency = "external"

[[models]]
id = "home-broken"
provider = "mock"
upstream_model = "mock-error"
residency = "local"
fallbacks = ["abroad"]

[[keys]]
name = "audit-desk"
sha256 = "{auditor}"
role = "auditor"

[[keys]]
name = "clinic"
sha256 = "{clinic}"
models = ["small", "abroad", "home-broken"]
residency = "local"

[[models]]
id = "plain"
provider = "mock"
upstream_model = "mock-small"
residency = "local"
supports_tools = false
"#
    )
}

fn logs(base: &str, query: &str) -> Vec<serde_json::Value> {
    let r = curl(
        "GET",
        &format!("{base}/v1/activity/logs?limit=1000&{query}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"].as_array().unwrap().clone()
}

/// Starts the mock upstream and isnad configured over it.
fn gateway() -> (MockUpstream, tempfile::TempDir, Server) {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(&cfg, config(&mock.base)).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    );
    (mock, dir, server)
}

#[test]
fn langchain_works_against_isnad() {
    let (_mock, _dir, server) = gateway();
    let out = run_sdk_script("langchain_check.py", &server.base, TOKEN);
    assert!(out.contains("ALL OK"), "{out}");
    assert!(server.stop());
}

#[test]
fn llamaindex_works_against_isnad() {
    let (_mock, _dir, server) = gateway();
    let out = run_llamaindex_script("llamaindex_check.py", &server.base, TOKEN);
    assert!(out.contains("ALL OK"), "{out}");
    assert!(server.stop());
}

#[test]
fn the_official_node_sdk_works_against_isnad() {
    let (_mock, _dir, server) = gateway();
    let out = run_node_sdk_script("openai_sdk.cjs", &server.base, TOKEN);
    assert!(out.contains("27 passed, 0 failed"), "{out}");
    assert!(server.stop());
}

#[test]
fn the_official_openai_sdk_works_against_isnad() {
    let (_mock, _dir, server) = gateway();

    let stdout = run_sdk_script("openai_sdk.py", &server.base, TOKEN);

    // The first request's path through the pipeline, in the journal.
    let rid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REQUEST_IDS "))
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let path = logs(&server.base, &format!("request_id={rid}"));
    let kinds: Vec<&str> = path.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "request.received",
            "guardrail.evaluated",
            "route.selected",
            "budget.reserved",
            "completion.finished"
        ]
    );
    let seqs: Vec<u64> = path.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        [seqs[1], seqs[2], seqs[3]],
        [seqs[0] + 1, seqs[0] + 2, seqs[0] + 3],
        "the request, its guardrail verdict, its route and its budget hold are one consecutive group"
    );
    let done = logs(
        &server.base,
        &format!("request_id={rid}&kind=completion.finished"),
    );
    let p = &done[0]["payload"];
    assert!(p["completion_hash"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(p["prompt_tokens"].as_u64().unwrap() > 0 && p["latency_us"].as_u64().unwrap() > 0);

    // The 451: refused by the router, in the request's own group, under the key's name.
    let refused = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REFUSED_ID "))
        .unwrap();
    let path = logs(&server.base, &format!("request_id={refused}"));
    let kinds: Vec<&str> = path.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "request.received",
            "guardrail.evaluated",
            "request.rejected"
        ],
        "the external model was never called"
    );
    assert_eq!(path[2]["payload"]["code"], "sovereignty_violation");
    assert!(path.iter().all(|e| e["actor"] == "clinic"), "{path:?}");

    // The journal is for the admin and auditor roles.
    let r = curl(
        "GET",
        &format!("{}/v1/activity/logs?limit=1", server.base),
        Some(AUDITOR_KEY),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = curl(
        "GET",
        &format!("{}/v1/activity/logs?limit=1", server.base),
        Some(CLINIC_KEY),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "permission_denied");

    // Every refusal after admission is journaled with its status (a 401 is not: refusals before
    // the key is checked are counted in `requests.refused` summaries instead).
    let mut statuses: Vec<u64> = logs(&server.base, "kind=request.rejected")
        .iter()
        .map(|e| e["payload"]["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    assert!(
        !statuses.contains(&401),
        "a 401 was journaled on its own: {statuses:?}"
    );
    for s in [400, 403, 404, 413, 422, 429, 451, 502, 503, 504] {
        assert!(
            statuses.contains(&s),
            "no request.rejected with status {s}: {statuses:?}"
        );
    }
    assert!(
        !logs(&server.base, "kind=model.fallback").is_empty(),
        "fallback journaled"
    );
    let cut: Vec<_> = logs(&server.base, "kind=completion.finished")
        .into_iter()
        .filter(|e| e["payload"]["model"] == "cut")
        .collect();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0]["payload"]["finish_reason"], "error");

    // Nothing of the prompts reached the journal.
    let everything = curl(
        "GET",
        &format!("{}/v1/activity/export", server.base),
        Some(TOKEN),
        None,
    )
    .body;
    assert!(
        !everything.contains("capital of France"),
        "prompt text in the journal"
    );

    // A client that leaves mid-stream: the outcome is still journaled.
    let _ = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "0.7", "-H", &format!("Authorization: Bearer {TOKEN}"), "-d"])
        .arg(r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"a b c d e f g h i j"}]}"#)
        .arg(format!("{}/v1/chat/completions", server.base))
        .output();
    let mut left = Vec::new();
    for _ in 0..50 {
        left = logs(&server.base, "kind=completion.finished")
            .into_iter()
            .filter(|e| e["payload"]["model"] == "slow")
            .collect();
        if !left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        left.len(),
        1,
        "the disconnected stream's outcome was journaled"
    );
    assert_eq!(left[0]["payload"]["finish_reason"], "client_disconnected");

    // No request is left holding memory once its client is gone.
    let metrics = curl("GET", &format!("{}/metrics", server.base), None, None).body;
    assert!(metrics.contains("isnad_requests_in_flight 0"), "{metrics}");

    assert!(server.stop());
}
