//! The auditor's tools leave the evidence as they found it, and a clean stop is not a crash: the
//! real binary over a log that has rolled onto a zero-filled spare segment, stopped with SIGTERM
//! or SIGKILL, then `journal verify | export | prove | tail` (also as a user who may only read the
//! data directory) and a restarted `serve`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use isnad_tests::{isnad, isnad_bin, MockUpstream, Server};
use sha2::{Digest, Sha256};

const TOKEN: &str = "audit-read-only-token";
/// Small segments, so that a few hundred requests roll the log onto a prepared spare.
const SEGMENT_MIB: u64 = 1;

/// Every file under `dir` with its length and SHA-256.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, String)>) {
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(
                    path.strip_prefix(root).unwrap().to_owned(),
                    (bytes.len() as u64, hex::encode(Sha256::digest(&bytes))),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn config(dir: &Path, mock: &MockUpstream) -> PathBuf {
    let cfg = dir.join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[journal]\nsegment_mib = {SEGMENT_MIB}\n\n[providers.mock]\nbase_url = \"{}/v1\"\n\n\
             [[models]]\nid = \"fast\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n",
            mock.base
        ),
    )
    .unwrap();
    cfg
}

fn segments(data: &Path) -> Vec<(PathBuf, u64)> {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("journal/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    segs.sort();
    segs
}

/// Sends chat completions (one curl process, one connection) until the log has moved onto a
/// prepared spare: two segments, the second zero-filled to full size.
fn load_until_rolled(server: &Server, data: &Path) {
    let url = format!("{}/v1/chat/completions", server.base);
    let body = r#"{"model":"fast","messages":[{"role":"user","content":"hello there"}]}"#;
    for _ in 0..40 {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-w", "%{http_code}\n"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        for _ in 0..100 {
            cmd.args(["-o", "/dev/null", &url]);
        }
        let out = cmd.output().unwrap();
        let codes = String::from_utf8_lossy(&out.stdout);
        assert!(codes.lines().all(|c| c == "200"), "{codes}");
        let segs = segments(data);
        if segs.len() >= 2 && segs.last().unwrap().1 == SEGMENT_MIB * 1024 * 1024 {
            return;
        }
        // Let the background thread finish zero-filling the spare.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the log never moved onto a spare: {:?}", segments(data));
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = isnad(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Log lines that would tell an operator a crash happened.
fn crash_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("crash") || l.contains("incomplete") || l.contains("not closed cleanly")
        })
        .collect()
}

/// A server over a fresh data directory whose log has moved onto a spare segment.
struct Rolled {
    _mock: MockUpstream,
    tmp: tempfile::TempDir,
    data: PathBuf,
    cfg: String,
    server: Server,
}

fn rolled() -> Rolled {
    let mock = MockUpstream::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), &mock).to_str().unwrap().to_owned();
    let server = Server::start(&data, TOKEN, &["--config", &cfg]);
    load_until_rolled(&server, &data);
    Rolled {
        _mock: mock,
        tmp,
        data,
        cfg,
        server,
    }
}

#[test]
fn sigterm_is_a_clean_stop_and_the_tools_change_nothing_even_unprivileged() {
    let Rolled {
        _mock,
        tmp,
        data,
        cfg,
        server,
    } = rolled();
    let (cfg, d) = (cfg.as_str(), data.to_str().unwrap());
    assert!(server.stop(), "serve did not exit cleanly on SIGTERM");

    let before = snapshot(&data);
    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: "), "{out}");
    assert!(!out.contains("NOTE"), "{out}");
    assert!(crash_lines(&err).is_empty(), "{err}");
    let (code, _, err) = run(&["journal", "export", "--data-dir", d, "--output", "-"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["journal", "prove", "--data-dir", d, "--seq", "3"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&["journal", "tail", "--data-dir", d, "-n", "5"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot(&data),
        before,
        "the auditor's tools changed the data directory"
    );

    // As a user who may read the data directory but not write it (tests run as root, so the
    // modes alone would prove nothing). Its own copy of the binary, in case the build
    // directory's parents are closed to other users.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tmp.path().join("isnad");
    std::fs::copy(isnad_bin(), &bin).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env("TMPDIR", "/tmp")
            .output()
            .expect("run setpriv");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["sh", "-c", &format!("touch '{d}/journal/probe'")])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !probe.success(),
        "the unprivileged user can write the data directory"
    );
    let (code, out, err) = as_nobody(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: "), "{out}");
    let (code, out, err) = as_nobody(&["journal", "export", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() > 100, "{err}");
    let (code, out, err) = as_nobody(&["journal", "prove", "--data-dir", d, "--seq", "3"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"seq\": 3"), "{out}");
    assert_eq!(snapshot(&data), before);

    // A restart after the clean stop reports no crash and keeps appending into the zero fill.
    let active = segments(&data).last().unwrap().clone();
    let log = tmp.path().join("serve.log");
    let server = Server::start_logging(&data, TOKEN, &["--config", cfg], Some(&log));
    let r = isnad_tests::curl(
        "POST",
        &format!("{}/v1/chat/completions", server.base),
        Some(TOKEN),
        Some(r#"{"model":"fast","messages":[{"role":"user","content":"again"}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(server.stop());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(crash_lines(&log).is_empty(), "{log}");
    assert_eq!(
        segments(&data).last().unwrap(),
        &active,
        "the active segment lost its zero fill"
    );
    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn after_sigkill_verify_reports_a_torn_tail_and_serve_cuts_it() {
    let Rolled {
        _mock,
        tmp,
        data,
        cfg,
        server,
    } = rolled();
    let (cfg, d) = (cfg.as_str(), data.to_str().unwrap());
    drop(server); // SIGKILL

    // A kill leaves whole batches (a batch is one write); a power cut can leave part of one.
    // Write part of a record into the zero fill after the last batch, as a power cut would.
    let (seg, len) = segments(&data).last().unwrap().clone();
    let bytes = std::fs::read(&seg).unwrap();
    // The end of the last record: records are `len u32 | flags u32 | crc u32 | bytes`, and the
    // zero fill after them reads as length 0.
    let mut end = 0usize;
    while end + 12 <= bytes.len() {
        let n = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
        if n == 0 {
            break;
        }
        end += 12 + n;
    }
    let end = end as u64;
    assert!(end < len, "the active segment has no zero fill left");
    let mut torn = 300u32.to_le_bytes().to_vec(); // a record header claiming 300 bytes
    torn.extend_from_slice(&[1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    torn.extend_from_slice(&[0x5a; 40]);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&torn, end).unwrap();
    }
    let first: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();

    let before = snapshot(&data);
    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: "), "{out}");
    let expected = format!(
        "segment {first} at byte {end}: {} bytes of an unfinished write",
        torn.len()
    );
    assert!(out.contains(&expected), "{out}");
    let (code, out, _) = run(&["journal", "verify", "--data-dir", d, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["torn_tail"]["segment"], first, "{v}");
    assert_eq!(v["torn_tail"]["offset"], end, "{v}");
    let (code, _, err) = run(&["journal", "export", "--data-dir", d, "--output", "-"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot(&data),
        before,
        "verify or export changed the evidence"
    );

    // serve cuts it back, says so, and the next verify has nothing to report.
    let log = tmp.path().join("serve.log");
    let server = Server::start_logging(&data, TOKEN, &["--config", cfg], Some(&log));
    assert!(server.stop());
    let log = std::fs::read_to_string(&log).unwrap();
    let cut = log
        .lines()
        .find(|l| l.contains("cut back a write that a crash left incomplete"))
        .unwrap_or_else(|| panic!("serve did not say it cut the torn write:\n{log}"));
    assert!(
        cut.contains(&format!("segment={first}")) && cut.contains(&format!("offset={end}")),
        "{cut}"
    );
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(after.len() as u64, len, "the zero fill was cut off too");
    let (code, out, err) = run(&["journal", "verify", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("NOTE"), "{out}");
}
