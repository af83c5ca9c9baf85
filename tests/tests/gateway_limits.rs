//! Load shedding at the concurrency limit, `/metrics`, and no request left behind in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{process::Command, time::Duration};

use isnad_tests::{curl, MockUpstream, Server};

const TOKEN: &str = "limits-token";

#[test]
fn sheds_load_beyond_the_limit_and_reports_metrics() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nmax_concurrent_requests = 2\n\n[providers.mock]\nbase_url = \"{}/v1\"\n\n\
             [[models]]\nid = \"slow\"\nprovider = \"mock\"\nupstream_model = \"mock-slow\"\nresidency = \"local\"\n\n\
             [[models]]\nid = \"fast\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n",
            mock.base
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    );
    let url = format!("{}/v1/chat/completions", server.base);
    let slow =
        r#"{"model":"slow","stream":true,"messages":[{"role":"user","content":"a b c d e f"}]}"#;
    // Two slow streams hold both permits (each about 1.6 s of tokens).
    let streams: Vec<_> = (0..2)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-N",
                    "-H",
                    &format!("Authorization: Bearer {TOKEN}"),
                    "-d",
                    slow,
                    &url,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fast = r#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#;
    let shed = curl("POST", &url, Some(TOKEN), Some(fast));
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(shed.json()["error"]["code"], "server_overloaded");
    for s in streams {
        let out = s.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .ends_with("data: [DONE]"));
    }
    let ok = curl("POST", &url, Some(TOKEN), Some(fast));
    assert_eq!(ok.status, 200, "{}", ok.body);

    let metrics = curl("GET", &format!("{}/metrics", server.base), None, None);
    assert_eq!(metrics.status, 200);
    let m = metrics.body;
    for needle in [
        "isnad_requests_shed_total 1",
        "isnad_http_requests_total{path=\"/v1/chat/completions\",status=\"200\"} 3",
        "isnad_completions_total{model=\"slow\",finish_reason=\"stop\"} 2",
        "isnad_requests_in_flight 0",
        "isnad_journal_lag_entries",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    let tokens: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("isnad_tokens_total{kind=\"completion\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens > 0);
    assert!(server.stop());
}
