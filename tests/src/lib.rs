//! Harness for end-to-end tests: runs the real `isnad` binary on loopback and talks to it with
//! real clients (`curl`), exactly as an operator would. Panics are how a harness fails a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Path of the `isnad` binary built beside the test executable (`cargo build --bins` first).
pub fn isnad_bin() -> PathBuf {
    workspace_bin("isnad")
}

/// A binary built beside the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` before the end-to-end tests",
        bin.display()
    );
    bin
}

/// A running `isnad-mock-upstream`.
pub struct MockUpstream {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl MockUpstream {
    /// Starts the mock on a free loopback port.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(workspace_bin("isnad-mock-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the mock upstream");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("mock upstream address");
        let base = line
            .trim()
            .strip_prefix("mock upstream listening on ")
            .expect("mock address line")
            .to_owned();
        Self { child, base }
    }

    /// The body of the last request the mock received (`GET /mock/last-request`).
    pub fn last_request(&self) -> serde_json::Value {
        curl(
            "GET",
            &format!("{}/mock/last-request", self.base),
            None,
            None,
        )
        .json()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with the official `openai` SDK that `scripts/test` installs.
pub fn python_with_openai() -> PathBuf {
    if let Ok(p) = std::env::var("ISNAD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the openai SDK: run ./scripts/test, which installs it into target/pyenv"
    );
    venv
}

/// Runs `tests/node/NAME` with the official `openai` Node SDK (installed by `scripts/test` into
/// `target/nodeenv`) against `base`; returns its output, failing the test when a check fails.
pub fn run_node_sdk_script(name: &str, base: &str, token: &str) -> String {
    let modules = std::env::var_os("ISNAD_TEST_NODE_PATH").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nodeenv/node_modules"),
        PathBuf::from,
    );
    assert!(
        modules.join("openai").exists(),
        "no openai Node SDK in {}: run ./scripts/test, which installs it",
        modules.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node")
        .join(name);
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .args([base, token])
        .env("NODE_PATH", &modules);
    run_check(cmd, name)
}

/// Runs a check script; returns its output, failing the test with both streams when it fails.
fn run_check(mut cmd: Command, name: &str) -> String {
    let out = cmd.output().expect("run the check script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "checks in {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `tests/python/NAME` (a script of checks with the official SDK) against `base`; returns
/// its output, failing the test with both streams when a check fails.
pub fn run_sdk_script(name: &str, base: &str, token: &str) -> String {
    run_python_check(&python_with_openai(), name, base, token)
}

/// Runs `tests/python/NAME` with LlamaIndex's interpreter (`target/llamaenv`, which
/// `scripts/test` fills; LlamaIndex needs another major version of the `openai` package).
pub fn run_llamaindex_script(name: &str, base: &str, token: &str) -> String {
    let python = std::env::var_os("ISNAD_TEST_LLAMAINDEX_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/llamaenv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "no Python with LlamaIndex: run ./scripts/test, which installs it into target/llamaenv"
    );
    run_python_check(&python, name, base, token)
}

fn run_python_check(python: &Path, name: &str, base: &str, token: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name);
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([base, token]);
    run_check(cmd, name)
}

/// The models directory `scripts/setup-models` fills (`ISNAD_MODELS_DIR` overrides).
pub fn models_dir() -> PathBuf {
    std::env::var_os("ISNAD_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    )
}

/// Runs `isnad` with arguments and returns its output.
pub fn isnad(args: &[&str]) -> Output {
    Command::new(isnad_bin())
        .args(args)
        .env("ISNAD_MODELS_DIR", models_dir())
        .env_remove("ISNAD_CONFIG")
        .output()
        .expect("run isnad")
}

/// The last 50 journal entries of `kind` in `data_dir`, as `isnad journal tail --json` shows them.
pub fn journaled(data_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let out = isnad(&[
        "journal",
        "tail",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--kind",
        kind,
        "--json",
        "-n",
        "50",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A running `isnad serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Starts `isnad serve` on a free loopback port over `data_dir` with admin token `token`.
    pub fn start(data_dir: &Path, token: &str, extra: &[&str]) -> Self {
        Self::start_logging(data_dir, token, extra, None)
    }

    /// [`Server::start`], with the server's log (stderr, at `info`) written to `log`.
    pub fn start_logging(data_dir: &Path, token: &str, extra: &[&str], log: Option<&Path>) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the server log")),
            None => Stdio::null(),
        };
        let mut child = Command::new(isnad_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("ISNAD_ADMIN_KEY", token)
            .env("ISNAD_MODELS_DIR", models_dir())
            .env("RUST_LOG", "info")
            .env_remove("ISNAD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start isnad serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("isnad listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its address");
        Self { child, base }
    }

    /// Sends SIGTERM and waits; returns whether the process exited successfully.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait for isnad");
        status.success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as curl saw it.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl` with optional bearer token and JSON body.
pub fn curl(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Response {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}
