//! The operator's path from the shell, against a real server: `isnad teams`, `isnad keys`,
//! `isnad usage`; rate-limit headers and the 429 over a real socket (curl); and `isnad
//! journal replay`, whose usage must equal the server's `/v1/usage` exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use isnad_tests::{isnad_bin, MockUpstream, Server};
use serde_json::Value;

const TOKEN: &str = "cli-admin-token";

fn cli(base: &str, args: &[&str]) -> Output {
    Command::new(isnad_bin())
        .args(args)
        .env("ISNAD_URL", base)
        .env("ISNAD_ADMIN_KEY", TOKEN)
        .env_remove("ISNAD_CONFIG")
        .output()
        .expect("run isnad")
}

fn cli_json(base: &str, args: &[&str]) -> Value {
    let out = cli(base, args);
    assert!(
        out.status.success(),
        "isnad {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A chat over curl: status and the response's headers (lower-cased names).
fn chat(base: &str, key: &str) -> (u16, Vec<(String, String)>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["-H", "Content-Type: application/json"])
        .args([
            "--data-binary",
            r#"{"model":"fast","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#,
        ])
        .arg(format!("{base}/v1/chat/completions"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn get<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn an_operator_manages_teams_keys_and_limits_from_the_shell_and_replay_agrees() {
    let mock = MockUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\naddress_requests_per_minute = 6000\n\n\
             [providers.mock]\nbase_url = \"{}/v1\"\n\n\
             [[models]]\nid = \"fast\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\n\
             residency = \"local\"\nprice_per_1k_input = 0.25\nprice_per_1k_output = 1.0\n",
            mock.base
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, TOKEN, &["--config", cfg.to_str().unwrap()]);
    let base = server.base.clone();

    let team = cli_json(
        &base,
        &["teams", "create", "finance", "--name", "Finance", "--json"],
    );
    assert_eq!(team["id"], "finance");
    let out = cli(&base, &["teams", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("finance") && listed.contains("Finance"),
        "{listed}"
    );
    let created = cli_json(
        &base,
        &[
            "keys", "create", "--label", "bot", "--team", "finance", "--json",
        ],
    );
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("isnad_sk_"), "{created}");
    // Without --json, a new key comes first, with the warning that it is shown once.
    let shown = cli(
        &base,
        &["keys", "create", "--label", "spare", "--team", "finance"],
    );
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.starts_with("key: isnad_sk_"), "{shown}");
    assert!(shown.contains("shown this once"), "{shown}");
    let set = cli_json(
        &base,
        &[
            "keys",
            "limits",
            &id,
            "--requests-per-minute",
            "60",
            "--burst",
            "2",
            "--json",
        ],
    );
    assert_eq!(set["limits"]["requests_per_minute"], 60);
    let budget = cli_json(
        &base,
        &[
            "teams", "budget", "finance", "--tokens", "100000", "--period", "day", "--json",
        ],
    );
    assert_eq!(budget["limit"]["tokens"], 100_000, "{budget}");

    // Two requests pass with their headers, the third is over the key's burst.
    let (s1, h1) = chat(&base, &key);
    let (s2, h2) = chat(&base, &key);
    let (s3, h3) = chat(&base, &key);
    assert_eq!((s1, s2, s3), (200, 200, 429), "{h3:?}");
    assert_eq!(get(&h1, "x-ratelimit-limit"), "60");
    assert_eq!(get(&h1, "x-ratelimit-remaining"), "1");
    assert_eq!(get(&h2, "x-ratelimit-remaining"), "0");
    assert!(get(&h1, "x-ratelimit-reset").parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(
        get(&h1, "ratelimit-policy"),
        "\"address\";q=6000;w=60, \"key\";q=60;w=60",
        "every request limit, in the order they are checked"
    );
    assert_eq!(get(&h3, "retry-after"), "1");
    assert!(get(&h3, "retry-after-ms").parse::<u64>().unwrap() <= 1000);
    // A mistyped command is refused by the server, with its message.
    let bad = cli(&base, &["keys", "show", "nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("404"),
        "{bad:?}"
    );
    let no_key = Command::new(isnad_bin())
        .args(["teams", "list", "--url", &base])
        .env_remove("ISNAD_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("ISNAD_ADMIN_KEY"));

    let live = cli_json(&base, &["usage", "--group-by", "day", "--json"]);
    assert_eq!(live["data"][0]["requests"], 2, "{live}");
    let text = String::from_utf8_lossy(&cli(&base, &["usage"]).stdout).into_owned();
    assert!(text.contains("finance") && text.contains("fast"), "{text}");
    assert!(server.stop());

    let replay = Command::new(isnad_bin())
        .args(["journal", "replay", "--data-dir"])
        .arg(&data)
        .args(["--group-by", "day", "--json"])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replay["usage"], live, "the offline replay equals /v1/usage");
    assert_eq!(replay["open_holds"], 0);
    let keys = replay["keys"].as_array().unwrap();
    assert!(keys
        .iter()
        .any(|k| k["id"] == id.as_str() && k["limits"]["burst"] == 2));
    assert_eq!(replay["teams"][0]["id"], "finance");
    assert_eq!(replay["budgets"][0]["limit"]["tokens"], 100_000);
}
