//! The residency guard and routing policy as a client sees them, with the real binary and a
//! mock upstream that echoes the last user message: sensitive data never reaches a model
//! outside the boundary (451, or a reroute), `X-Route-Policy: local-only` forces local
//! models, a blocked type is refused with `pii_detected`, redacted values never reach the model
//! and come back in the answer, and the seed's routing policy routes as written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, process::Command};

use isnad_tests::{curl, isnad, journaled, MockUpstream, Response, Server};
use serde_json::{json, Value};

const TOKEN: &str = "residency-token";
const IBAN: &str = "SA03 8000 0000 6080 1016 7519";

/// A gateway with a local model `home`, a local `home-small`, and an external `abroad` (all the
/// mock), under the routing policy `policy` (none if empty).
fn start(dir: &Path, mock: &MockUpstream, policy: &str) -> Server {
    let cfg = dir.join("isnad.toml");
    let mut text = format!(
        "[providers.mock]\nbase_url = \"{}/v1\"\n\n\
         [[models]]\nid = \"home\"\nprovider = \"mock\"\nupstream_model = \"mock-home\"\nresidency = \"local\"\n\n\
         [[models]]\nid = \"home-small\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n\n\
         [[models]]\nid = \"abroad\"\nprovider = \"mock\"\nupstream_model = \"mock-abroad\"\nresidency = \"external\"\n",
        mock.base
    );
    if !policy.is_empty() {
        std::fs::write(dir.join("routing.yaml"), policy).unwrap();
        text.push_str("\n[routing]\npolicy = \"routing.yaml\"\n");
    }
    std::fs::write(&cfg, text).unwrap();
    Server::start(
        &dir.join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    )
}

fn chat(server: &Server, model: &str, content: &str) -> Response {
    let body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    curl(
        "POST",
        &format!("{}/v1/chat/completions", server.base),
        Some(TOKEN),
        Some(&body.to_string()),
    )
}

fn error_code(r: &Response) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn an_iban_never_reaches_an_external_model_by_default() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &mock, "");
    let r = chat(&server, "abroad", &format!("حوّل إلى الآيبان {IBAN}"));
    assert_eq!(r.status, 451, "{}", r.body);
    assert_eq!(error_code(&r), "sovereignty_violation");
    assert_eq!(r.json()["error"]["type"], "sovereignty_error");
    // auto-router sends the same request to a local model.
    let r = chat(&server, "auto-router", &format!("حوّل إلى الآيبان {IBAN}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.last_request()["model"], "mock-home");
    // Without sensitive data the external model is served.
    let r = chat(&server, "abroad", "hello");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.last_request()["model"], "mock-abroad");
    server.stop();
    let verdicts = journaled(&dir.path().join("data"), "guardrail.evaluated");
    assert!(
        verdicts.iter().any(|v| {
            let p = &v["payload"];
            p["action"] == "local_only" && p["findings"][0]["kind"] == "iban"
        }),
        "{verdicts:?}"
    );
    let all = serde_json::to_string(&verdicts).unwrap();
    assert!(!all.contains("6080"), "a value reached the journal: {all}");
}

#[test]
fn a_client_can_force_local_models_with_a_header() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &mock, "");
    let post = |model: &str, policy: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("X-Route-Policy: {policy}")])
            .args(["-d", &body.to_string()])
            .arg(format!("{}/v1/chat/completions", server.base))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(post("abroad", "local-only"), "451");
    assert_eq!(post("auto-router", "local-only"), "200");
    assert_eq!(mock.last_request()["model"], "mock-home");
    assert_eq!(post("abroad", "anywhere"), "400");
    server.stop();
}

#[test]
fn reroute_mode_serves_a_sensitive_request_from_a_local_model() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &mock, "residency: reroute\n");
    let r = chat(&server, "abroad", &format!("IBAN {IBAN}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.last_request()["model"], "mock-home");
    server.stop();
    let routes = journaled(&dir.path().join("data"), "route.selected");
    let last = &routes.last().unwrap()["payload"];
    assert_eq!(
        (
            last["requested_model"].as_str(),
            last["model"].as_str(),
            last["policy"].as_str()
        ),
        (Some("abroad"), Some("home"), Some("reroute"))
    );
}

#[test]
fn a_blocked_type_is_refused_with_pii_detected() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &mock,
        "guardrail:\n  default:\n    credential: block\n",
    );
    let r = chat(
        &server,
        "home",
        "my key is isnad_sk_0123456789abcdef0123456789abcdef please keep it",
    );
    assert_eq!(r.status, 451, "{}", r.body);
    assert_eq!(error_code(&r), "pii_detected");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("credential"));
    server.stop();
    let v = journaled(&dir.path().join("data"), "guardrail.violation");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["payload"]["entities"], json!(["credential"]));
    assert_eq!(v[0]["payload"]["action_taken"], "request_blocked");
}

#[test]
fn redacted_values_never_reach_the_model_and_come_back_in_the_answer() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &mock,
        "guardrail:\n  default:\n    email: redact\n",
    );
    let text = "راسل sara@example.com ثم omar@example.org";
    let r = chat(&server, "abroad", text);
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = mock.last_request();
    let content = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(content, "راسل [EMAIL_1] ثم [EMAIL_2]", "{sent}");
    // The mock echoes what it got; the client reads its own values back.
    let answer = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        answer.contains("sara@example.com") && answer.contains("omar@example.org"),
        "{answer}"
    );
    assert!(!answer.contains("[EMAIL_"), "{answer}");
    // A stream too, placeholders split across chunks included.
    let body =
        json!({"model": "abroad", "stream": true, "messages": [{"role": "user", "content": text}]});
    let out = Command::new("curl")
        .args(["-sS", "-N", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg(format!("{}/v1/chat/completions", server.base))
        .output()
        .unwrap();
    let sse = String::from_utf8_lossy(&out.stdout);
    let streamed: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(streamed.contains("sara@example.com"), "{sse}");
    assert!(!streamed.contains("[EMAIL_"), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    server.stop();
}

#[test]
fn the_seed_policy_routes_as_written() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let seed = r#"routes:
  - name: "arabic-native"
    condition: "language == 'ar'"
    model: "home"
  - name: "fast-path"
    condition: "prompt_tokens < 100"
    model: "home-small"
default: abroad
"#;
    let server = start(dir.path(), &mock, seed);
    let cases = [
        ("مرحبا، أريد ملخصا لهذا التقرير", "mock-home"),
        ("hello, a short one", "mock-small"),
    ];
    for (text, want) in cases {
        let r = chat(&server, "auto-router", text);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(mock.last_request()["model"], want, "{text}");
    }
    let long = "a long english request ".repeat(40);
    assert_eq!(chat(&server, "auto-router", &long).status, 200);
    assert_eq!(mock.last_request()["model"], "mock-abroad");
    server.stop();
    let policies: Vec<String> = journaled(&dir.path().join("data"), "route.selected")
        .iter()
        .map(|e| e["payload"]["policy"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(policies, ["arabic-native", "fast-path", "default"]);
}

#[test]
fn a_bad_policy_file_stops_the_start_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routing.yaml"),
        "routes:\n  - name: a\n    condition: \"lang == 'ar'\"\n    model: home\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("isnad.toml"),
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
         [[models]]\nid = \"home\"\nprovider = \"up\"\nresidency = \"local\"\n\n\
         [routing]\npolicy = \"routing.yaml\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("isnad.toml");
    let out = isnad(&["config", "check", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routing.yaml:3"), "{err}");
    assert!(err.contains("unknown variable `lang`"), "{err}");
}
