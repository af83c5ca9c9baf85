//! The real server on loopback: the activity API as an operator or auditor uses it with curl,
//! graceful shutdown, and the offline tools on what the server wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use isnad_journal::{checkpoint::Checkpoint, export::InclusionBundle, keys::parse_public_key};
use isnad_tests::{curl, isnad, Server};

const TOKEN: &str = "test-admin-token";

fn node_key(dir: &std::path::Path) -> ed25519_dalek::VerifyingKey {
    parse_public_key(&std::fs::read_to_string(dir.join("node.pub")).unwrap()).unwrap()
}

/// A configuration with one upstream model and no local ones, so that the journal holds exactly
/// the events this test makes (local models would add `model.loaded` at every start).
fn upstream_only(dir: &std::path::Path) -> String {
    let cfg = dir.join("isnad.toml");
    std::fs::write(
        &cfg,
        "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[[models]]\nid = \"m\"\nprovider = \"up\"\nresidency = \"local\"\n",
    )
    .unwrap();
    cfg.to_str().unwrap().to_owned()
}

#[test]
fn activity_api_serves_filters_pages_and_proves() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = upstream_only(cfg_dir.path());
    let args = ["--config", cfg.as_str()];
    // Three starts: three node.started events, a chain that spans restarts.
    for _ in 0..2 {
        assert!(
            Server::start(dir.path(), TOKEN, &args).stop(),
            "clean shutdown"
        );
    }
    let server = Server::start(dir.path(), TOKEN, &args);
    let url = |p: &str| format!("{}{p}", server.base);

    assert_eq!(curl("GET", &url("/healthz"), None, None).status, 200);
    assert_eq!(curl("GET", &url("/readyz"), None, None).status, 200);

    // Authentication, in the OpenAI error shape.
    let r = curl("GET", &url("/v1/activity/logs"), None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        curl("GET", &url("/v1/activity/logs"), Some("wrong"), None).status,
        401
    );

    let r = curl("GET", &url("/v1/activity/logs"), Some(TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let all = r.json();
    let data = all["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, e) in data.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
        assert_eq!(e["kind"], "node.started");
        assert!(e["payload"]["config_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    }

    // Filters and pagination.
    let r = curl(
        "GET",
        &url("/v1/activity/logs?kind=completion.finished"),
        Some(TOKEN),
        None,
    )
    .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 0);
    let page1 = curl("GET", &url("/v1/activity/logs?limit=2"), Some(TOKEN), None).json();
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    assert_eq!(page1["has_more"], true);
    let after = page1["next_after"].as_u64().unwrap();
    let page2 = curl(
        "GET",
        &url(&format!("/v1/activity/logs?limit=2&after={after}")),
        Some(TOKEN),
        None,
    )
    .json();
    assert_eq!(page2["data"][0]["seq"], 2);
    assert_eq!(page2["has_more"], false);
    let third_time = data[2]["timestamp"].as_str().unwrap();
    let r = curl(
        "POST",
        &url("/v1/activity/logs"),
        Some(TOKEN),
        Some(&format!(r#"{{"since":"{third_time}","actor":"system"}}"#)),
    )
    .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 1, "{r}");
    let r = curl(
        "POST",
        &url("/v1/activity/logs"),
        Some(TOKEN),
        Some(r#"{"from_seq":1,"to_seq":2}"#),
    )
    .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 1);

    // Bad input gets a 400 in our shape, naming the parameter where there is one.
    let r = curl(
        "POST",
        &url("/v1/activity/logs"),
        Some(TOKEN),
        Some("{not json"),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = curl(
        "GET",
        &url("/v1/activity/logs?since=yesterday"),
        Some(TOKEN),
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("since"))
    );
    let r = curl(
        "GET",
        &url("/v1/activity/logs?limit=5000"),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 400);
    let r = curl("GET", &url("/v1/nothing-here"), Some(TOKEN), None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());

    // The checkpoint verifies with the node's exported key.
    let key = node_key(dir.path());
    let cp = curl("GET", &url("/v1/activity/checkpoint"), Some(TOKEN), None).json();
    let parsed = Checkpoint::open(cp["note"].as_str().unwrap(), &key).unwrap();
    assert_eq!(parsed.size, 3);

    // An inclusion proof for each entry verifies offline.
    for seq in 0..3 {
        let b = curl(
            "GET",
            &url(&format!("/v1/activity/proof?seq={seq}")),
            Some(TOKEN),
            None,
        );
        assert_eq!(b.status, 200, "{}", b.body);
        let bundle: InclusionBundle = serde_json::from_str(&b.body).unwrap();
        assert_eq!(bundle.verify(&key).unwrap().size, 3);
    }
    let r = curl("GET", &url("/v1/activity/proof?seq=99"), Some(TOKEN), None);
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("seq"))
    );
    let c = curl(
        "GET",
        &url("/v1/activity/proof?old_size=1"),
        Some(TOKEN),
        None,
    )
    .json();
    assert_eq!(c["new_size"], 3);

    // The export streamed by the server verifies with the pinned key.
    let ex = curl("GET", &url("/v1/activity/export"), Some(TOKEN), None);
    assert_eq!(ex.status, 200);
    let summary = isnad_journal::export::verify_export(
        &mut Cursor::new(ex.body.clone()),
        Some(&key),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(summary.entries, 3);

    // The offline tools take no lock and write nothing: beside the running server they verify
    // the log as far as it was written when they opened it, and the server goes on.
    let out = isnad(&[
        "journal",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("OK: "), "{text}");
    assert_eq!(curl("GET", &url("/readyz"), None, None).status, 200);

    assert!(server.stop(), "SIGTERM ends the server cleanly");

    // After shutdown: a final checkpoint covers every entry, and verify passes.
    let out = isnad(&[
        "journal",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Three node.started, and at shutdown the summary of the two requests refused before their
    // key was checked (never one entry per such request).
    assert_eq!(v["entries"], 4);
    let out = isnad(&[
        "journal",
        "tail",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "-n",
        "1",
        "--json",
    ]);
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(last["kind"], "requests.refused", "{last}");
    assert_eq!(last["payload"]["code"], "invalid_api_key", "{last}");
    assert_eq!(last["payload"]["count"], 2, "{last}");
    assert!(
        v["checkpoints"].as_u64().unwrap() >= 3,
        "one checkpoint per shutdown at least: {v}"
    );
}

#[test]
fn a_bad_config_is_refused_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(&cfg, "[journal]\ncheckpoint_evry = 5\n").unwrap();
    let out = isnad(&[
        "--config",
        cfg.to_str().unwrap(),
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint_evry") && err.contains("isnad.toml"),
        "{err}"
    );
}
