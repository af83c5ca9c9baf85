//! The README's auditor walk-through, run with the real binary: export, verify the export, prove
//! one entry, check the proof; and the same tools catching tampering with a clear seq and a
//! non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, time::Duration};

use isnad_journal::{Journal, Options};
use isnad_schemas::{CompletionFinished, NewEvent};
use isnad_tests::isnad;

const ENTRIES: u64 = 5000;

fn build_log(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = Options {
            checkpoint_every: 700,
            checkpoint_interval: Duration::from_secs(3600),
            ..Options::default()
        };
        let j = Journal::open_dir(dir, opts).unwrap();
        for chunk in 0..ENTRIES / 100 {
            let batch = (0..100)
                .map(|i| {
                    let n = chunk * 100 + i;
                    NewEvent::new(&CompletionFinished {
                        model: "smollm2-135m".into(),
                        prompt_tokens: n % 50,
                        completion_tokens: n % 70,
                        latency_us: 1000 + n,
                        ttft_us: Some(300),
                        completion_hash: format!("sha256:{n:064x}"),
                        finish_reason: "stop".into(),
                    })
                    .unwrap()
                    .team(if n % 2 == 0 { "finance" } else { "health" })
                    .request_id(format!("req-{n}"))
                })
                .collect();
            j.append(batch).await.unwrap();
        }
        j.shutdown().await.unwrap();
    });
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = isnad(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn auditor_walkthrough_and_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    build_log(&data);
    let d = data.to_str().unwrap();
    let export = tmp.path().join("journal.jsonl");
    let e = export.to_str().unwrap();
    let pubkey = data.join("node.pub");
    let k = pubkey.to_str().unwrap();

    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{ENTRIES} entries")), "{out}");

    let (code, _, err) = run(&["journal", "export", "--data-dir", d, "--output", e]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["journal", "verify-export", e, "--public-key", k]);
    assert_eq!(code, 0, "{out}{err}");

    let proof = tmp.path().join("proof-1234.json");
    let (code, _, err) = run(&[
        "journal",
        "prove",
        "--data-dir",
        d,
        "--seq",
        "1234",
        "--output",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&[
        "journal",
        "verify-proof",
        proof.to_str().unwrap(),
        "--public-key",
        k,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: seq 1234"), "{out}");
    // The same proof from the export alone.
    let (code, out, err) = run(&["journal", "prove", "--export", e, "--seq", "1234"]);
    assert_eq!(code, 0, "{err}");
    let from_export: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(from_export["seq"], 1234);
    // Seq 1234 sits inside a batch of 100, whose last entry carries the signature: the proof
    // stands on the signed checkpoint and the audit path.
    assert!(from_export["entry"]["sig"].is_null(), "{out}");

    // Tail shows the last entries, optionally as JSON.
    let (code, out, _) = run(&["journal", "tail", "--data-dir", d, "-n", "3", "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![ENTRIES - 3, ENTRIES - 2, ENTRIES - 1]
    );

    // A proof edited to claim another completion fails.
    let mut bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    bundle["entry"]["view"]["payload"]["completion_tokens"] = 9999.into();
    std::fs::write(&proof, bundle.to_string()).unwrap();
    let (code, out, _) = run(&[
        "journal",
        "verify-proof",
        proof.to_str().unwrap(),
        "--public-key",
        k,
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("FAILED"), "{out}");

    // One edited line in the export: non-zero exit naming its seq.
    let text = std::fs::read_to_string(&export).unwrap();
    let edited = text.replacen(
        "\"team\":\"health\",\"request_id\":\"req-2345\"",
        "\"team\":\"finance\",\"request_id\":\"req-2345\"",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&export, edited).unwrap();
    let (code, out, _) = run(&["journal", "verify-export", e, "--public-key", k, "--json"]);
    assert_eq!(code, 3, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["seq"], 2345, "{v}");

    // One damaged entry in the data directory (a byte of its event changed on disk): verify
    // names it.
    {
        let log = data.join("journal").join("log");
        let offsets = std::fs::read(log.join(format!("{:020}.off", 0))).unwrap();
        let at = u64::from_le_bytes(offsets[4321 * 8..4322 * 8].try_into().unwrap());
        let seg = log.join(format!("{:020}.seg", 0));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[at as usize + 12 + 120] ^= 0x01;
        std::fs::write(&seg, bytes).unwrap();
    }
    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("seq 4321"), "{out}");

    // And the server refuses to start on it, naming the damage rather than dropping it.
    let out = isnad(&["serve", "--data-dir", d, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seq 4321"), "{err}");
}
