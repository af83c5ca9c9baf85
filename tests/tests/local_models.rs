//! `isnad serve` with no configuration answers chat completions and embeddings from the
//! in-process models (after `scripts/setup-models`), driven by the official OpenAI Python SDK;
//! `model.loaded` records every file's hash; a tampered model file stops the server at startup
//! with a message naming the file, and `isnad models verify` reports it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use isnad_tests::{curl, isnad, isnad_bin, models_dir, run_sdk_script, Server};

const TOKEN: &str = "local-models-token";

#[test]
fn serve_with_no_config_answers_from_local_models() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), TOKEN, &[]);
    let stdout = run_sdk_script("local_models.py", &server.base, TOKEN);
    assert!(stdout.contains("ALL OK"), "{stdout}");

    // The models' file hashes are in the journal, as the manifests pin them.
    let r = curl(
        "GET",
        &format!("{}/v1/activity/logs?kind=model.loaded", server.base),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let loaded = r.json()["data"].as_array().unwrap().clone();
    let names: Vec<&str> = loaded
        .iter()
        .map(|e| e["payload"]["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["smollm2-135m-instruct", "all-minilm-l6-v2"]);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("smollm2-135m-instruct/manifest.json")).unwrap(),
    )
    .unwrap();
    let files = loaded[0]["payload"]["files"].as_array().unwrap();
    let want = format!(
        "model.onnx=sha256:{}",
        manifest["files"]["model.onnx"].as_str().unwrap()
    );
    assert!(files.iter().any(|f| f == &want), "{files:?}");

    // The completion of the first request is journaled against the local model.
    let rid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REQUEST_ID "))
        .unwrap();
    let r = curl(
        "GET",
        &format!(
            "{}/v1/activity/logs?request_id={rid}&kind=completion.finished",
            server.base
        ),
        Some(TOKEN),
        None,
    );
    let done = &r.json()["data"][0]["payload"];
    assert_eq!(done["model"], "smollm2-135m-instruct");
    assert!(done["completion_tokens"].as_u64().unwrap() > 0);
    assert!(server.stop());
}

#[test]
fn a_tampered_model_stops_the_server_and_verify_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    for sub in ["onnxruntime", "tiny-random"] {
        std::fs::create_dir_all(models.join(sub)).unwrap();
        for entry in std::fs::read_dir(models_dir().join(sub)).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, models.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let cfg = tmp.path().join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[local]\nmodels_dir = \"{}\"\n\n[[models]]\nid = \"tiny-random\"\nprovider = \"local\"\nresidency = \"local\"\nsupports_tools = false\n",
            models.display()
        ),
    )
    .unwrap();
    // Untouched, `models verify` passes.
    let ok = isnad(&["models", "verify", "--models-dir", models.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    // One changed byte in the tokenizer.
    let tok = models.join("tiny-random/tokenizer.json");
    let mut bytes = std::fs::read(&tok).unwrap();
    let at = bytes.iter().position(|&b| b == b'a').unwrap();
    bytes[at] = b'b';
    std::fs::write(&tok, bytes).unwrap();

    let out = isnad(&["models", "verify", "--models-dir", models.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("MODIFIED tiny-random/tokenizer.json"),
        "{text}"
    );

    let out = Command::new(isnad_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("ISNAD_ADMIN_KEY", TOKEN)
        .env_remove("ISNAD_MODELS_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start");
    assert!(
        stderr.contains("tokenizer.json") && stderr.contains("does not match its manifest"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}
