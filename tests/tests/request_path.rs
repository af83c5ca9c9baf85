//! The request path as a client and an upstream see it, with the real binary: fields isnad does
//! not know reach the upstream unchanged and isnad's own do not; a stream's usage chunk that isnad
//! asked for on its own account is not passed on; and a flood of requests with random keys
//! leaves the journal's growth bounded while authenticated traffic is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, process::Command};

use isnad_tests::{curl, journaled, MockUpstream, Server};
use serde_json::{json, Value};

const TOKEN: &str = "request-path-token";

fn start(dir: &Path, mock: &MockUpstream) -> Server {
    let cfg = dir.join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[providers.mock]\nbase_url = \"{}/v1\"\n\n\
             [[models]]\nid = \"fast\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n",
            mock.base
        ),
    )
    .unwrap();
    Server::start(
        &dir.join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    )
}

#[test]
fn unknown_fields_pass_through_and_isnad_fields_do_not() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &mock);
    let url = format!("{}/v1/chat/completions", server.base);
    let body = json!({
        "model": "fast",
        "messages": [{"role": "user", "content": "hi", "x_message_field": {"k": [1, 2]}}],
        "logit_bias": {"50256": -100},
        "a_field_from_next_year": {"nested": [true, null, 1.5]},
        "routing_preference": "cost",
        "extra_body": {"routing": {"profile": "performance"}, "vendor_flag": true},
    });
    let r = curl("POST", &url, Some(TOKEN), Some(&body.to_string()));
    assert_eq!(r.status, 200, "{}", r.body);
    let got = mock.last_request();
    assert_eq!(got["model"], "mock-small");
    assert_eq!(
        got["a_field_from_next_year"],
        body["a_field_from_next_year"]
    );
    assert_eq!(got["logit_bias"], body["logit_bias"]);
    assert_eq!(got["messages"][0]["x_message_field"], json!({"k": [1, 2]}));
    assert_eq!(got["extra_body"], json!({"vendor_flag": true}), "{got}");
    assert!(got.get("routing_preference").is_none(), "{got}");
    assert!(got.get("routing").is_none(), "{got}");

    // A stream: isnad asks for usage on its own account; a client that did not ask gets no
    // usage chunk, one that did gets it.
    let stream = |include: Option<bool>| {
        let mut b = json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "a b c"}]});
        if let Some(i) = include {
            b["stream_options"] = json!({"include_usage": i});
        }
        let out = Command::new("curl")
            .args(["-sS", "-N", "-H", &format!("Authorization: Bearer {TOKEN}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "-d",
                &b.to_string(),
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let upstream = mock.last_request();
        assert_eq!(
            upstream["stream_options"]["include_usage"], true,
            "{upstream}"
        );
        chunks.iter().filter(|c| c["usage"].is_object()).count()
    };
    assert_eq!(stream(None), 0);
    assert_eq!(stream(Some(false)), 0);
    assert_eq!(stream(Some(true)), 1);
    let completions = "isnad_completions_total{model=\"fast\",finish_reason=\"stop\"} 4";
    // The projection folds entries as they are sequenced, a moment after the answer.
    let metrics = |server: &Server| {
        let mut m = String::new();
        for _ in 0..50 {
            m = curl("GET", &format!("{}/metrics", server.base), None, None).body;
            if m.contains(completions) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
        m
    };
    let m = metrics(&server);
    assert!(m.contains(completions), "{m}");
    assert!(server.stop());

    // The counters behind /metrics are a projection of the journal: a restart keeps them.
    let server = start(dir.path(), &mock);
    let m = metrics(&server);
    assert!(m.contains(completions), "{m}");
    assert!(
        m.contains("isnad_model_attempts_total{model=\"fast\",outcome=\"completed\"} 4"),
        "{m}"
    );
    assert!(server.stop());

    // The journal records the stream's token counts, which came from that usage chunk.
    let last = journaled(&dir.path().join("data"), "completion.finished")
        .pop()
        .unwrap();
    assert!(
        last["payload"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
}

#[test]
fn a_flood_of_bad_keys_leaves_the_journal_bounded_and_good_keys_served() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &mock);
    let url = format!("{}/v1/chat/completions", server.base);
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#;
    let ready = curl("GET", &format!("{}/readyz", server.base), None, None).json();
    let before = ready["entries"].as_u64().unwrap();

    // 20,000 requests, each with a key of its own, from curl processes that reuse one
    // connection each (`--next` starts the next request's options), in parallel with
    // authenticated requests.
    let flood: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut bad = 0;
                for batch in 0..50 {
                    let mut cmd = Command::new("curl");
                    cmd.arg("-sS");
                    for i in 0..100 {
                        if i > 0 {
                            cmd.arg("--next");
                        }
                        let key = format!("Authorization: Bearer sk-{w}-{batch}-{i}");
                        cmd.args(["-w", "%{http_code}\n", "-o", "/dev/null"])
                            .args(["-H", "Content-Type: application/json"])
                            .args(["--data-binary", body, "-H", &key, &url]);
                    }
                    let out = cmd.output().unwrap();
                    bad += String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|c| *c == "401")
                        .count();
                }
                bad
            })
        })
        .collect();
    let mut served = 0;
    for _ in 0..20 {
        let r = curl("POST", &url, Some(TOKEN), Some(body));
        assert_eq!(r.status, 200, "{}", r.body);
        served += 1;
    }
    let bad: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(bad, 20_000, "every random-key request is refused");
    assert_eq!(served, 20);
    let ready = curl("GET", &format!("{}/readyz", server.base), None, None).json();
    let grown = ready["entries"].as_u64().unwrap() - before;
    // 20 served requests journal a handful of entries each; the 20,000 refusals none of their own
    // (their summary comes every 10 s, one entry per source and code).
    assert!(grown < 20 * 6 + 4, "the journal grew by {grown} entries");
    assert!(server.stop());
    let rows = journaled(&dir.path().join("data"), "requests.refused");
    let counted: u64 = rows
        .iter()
        .map(|r| r["payload"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 20_000, "{rows:?}");
}
