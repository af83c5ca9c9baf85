//! `isnad config check` with the real binary: a good file is summarised (exit 0), a bad one is
//! refused with its file, line and key path (exit 1), and neither loads a model nor creates the
//! data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use isnad_tests::{isnad, isnad_bin};

const GOOD: &str = r#"[server]
listen = "127.0.0.1:8443"

[providers.lab]
base_url = "http://10.0.0.5:8000/v1"

[[models]]
id = "lab-chat"
provider = "lab"
residency = "local"
fallbacks = ["lab-small"]

[[models]]
id = "lab-small"
provider = "lab"
residency = "local"

[[models]]
id = "lab-embed"
provider = "lab"
kind = "embedding"
residency = "local"

[routing]
default_model = "lab-chat"

[[keys]]
name = "alice"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"

[[keys]]
name = "audit"
role = "auditor"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
"#;

/// Writes `text` as `isnad.toml` in a new temporary directory.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isnad.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn check(path: &Path) -> Output {
    isnad(&["config", "check", path.to_str().unwrap()])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The refusal on stderr, after asserting exit 1.
fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(out), stderr(out));
    stderr(out)
}

#[test]
fn a_good_file_is_summarised() {
    let (_dir, path) = config_file(GOOD);
    let out = check(&path);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "isnad.toml: OK",
        "listen: 127.0.0.1:8443",
        "tls: off",
        "lab-chat (chat, provider lab, local), fallbacks: lab-small",
        "lab-embed (embedding, provider lab, local)",
        "default chat model: lab-chat",
        "request stages: guardrail, router",
        "keys: 1 auditor, 1 member",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }

    let out = isnad(&["config", "check", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lab-chat", "lab-small", "lab-embed"]);
    assert_eq!(json["models"][2]["kind"], "embedding");
    assert_eq!(json["default_model"], "lab-chat");
    assert_eq!(json["keys"]["auditor"], 1);
}

#[test]
fn the_file_may_come_from_isnad_config() {
    let (_dir, path) = config_file(GOOD);
    let out = Command::new(isnad_bin())
        .args(["config", "check"])
        .env("ISNAD_CONFIG", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("lab-chat"), "{}", stdout(&out));
}

#[test]
fn an_unknown_key_names_file_line_and_key_path() {
    let (_dir, path) = config_file(&GOOD.replace(
        "[routing]\ndefault_model",
        "[routing]\ndefault_modle = \"x\"\ndefault_model",
    ));
    let err = refused(&check(&path));
    assert!(
        err.contains("isnad.toml:25: routing.default_modle: unknown field `default_modle`"),
        "{err}"
    );
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_bad_type_names_file_line_and_key_path() {
    let (_dir, path) = config_file(&GOOD.replace(
        "listen = \"127.0.0.1:8443\"",
        "listen = \"127.0.0.1:8443\"\nmax_body_bytes = \"big\"",
    ));
    let err = refused(&check(&path));
    assert!(
        err.contains("isnad.toml:3: server.max_body_bytes: invalid type: string \"big\""),
        "{err}"
    );
}

#[test]
fn a_dangling_fallback_names_the_line_of_its_fallbacks() {
    let (_dir, path) =
        config_file(&GOOD.replace("fallbacks = [\"lab-small\"]", "fallbacks = [\"nope\"]"));
    let err = refused(&check(&path));
    assert!(
        err.contains("isnad.toml:11: models[0].fallbacks[0]: unknown model \"nope\""),
        "{err}"
    );

    let out = isnad(&["config", "check", "--json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["line"], 11);
    assert_eq!(json["error"]["key"], "models[0].fallbacks[0]");
}

#[test]
fn a_missing_local_model_is_refused_without_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let path = dir.path().join("isnad.toml");
    let text = GOOD.replace(
        "[[models]]\nid = \"lab-small\"\nprovider = \"lab\"",
        "[[models]]\nid = \"lab-small\"\nprovider = \"local\"\nupstream_model = \"not-installed\"",
    );
    std::fs::write(&path, text).unwrap();
    let data = dir.path().join("state");
    let out = Command::new(isnad_bin())
        .current_dir(dir.path())
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["config", "check", path.to_str().unwrap()])
        .env("ISNAD_MODELS_DIR", &models)
        .env_remove("ISNAD_CONFIG")
        .env_remove("ISNAD_DATA_DIR")
        .output()
        .unwrap();
    let err = refused(&out);
    assert!(err.contains("isnad.toml:13: models[1]: "), "{err}");
    assert!(err.contains("not-installed"), "{err}");
    assert!(err.contains("scripts/setup-models"), "{err}");
    assert!(!data.exists(), "check created the data directory");
    assert!(!dir.path().join("data").exists(), "check created ./data");
    // Nothing was written next to the models either.
    assert_eq!(std::fs::read_dir(&models).unwrap().count(), 0);

    // The good file, checked the same way, leaves no data directory behind either.
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(isnad_bin())
        .current_dir(dir.path())
        .args(["config", "check", path.to_str().unwrap()])
        .env_remove("ISNAD_CONFIG")
        .env_remove("ISNAD_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("data").exists(), "check created ./data");
}

#[test]
fn a_usage_error_exits_2() {
    let out = isnad(&["config", "check", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
