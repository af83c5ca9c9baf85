//! Tampering: hundreds of random edits to a data directory and to an export, each of which
//! `verify` must catch, naming the first sequence number that was altered.
//!
//! The attacker has write access to the files but not the node key: they flip bytes, delete,
//! duplicate and reorder entries, and re-sign with a key of their own.
//!
//! The journal signs the last entry of each batch, so a bad signature can only be pinned to the
//! range it covers: what it reports then is the first entry of that batch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{io::Cursor, path::Path, time::Duration};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{Signer as _, SigningKey};
use isnad_journal::{
    entry::split_stored,
    export::{export_store, verify_export, verify_store},
    verify::Problem,
    Journal, Options, SledStore,
};
use isnad_schemas::{KeyCreated, NewEvent};

const ENTRIES: u64 = 300;
const MUTATIONS: usize = 220;

mod common;
use common::Rng;

/// A pristine data directory with `ENTRIES` entries and checkpoints every 50, its log kept in
/// sled (a log written before segment files), whose rows these mutations edit. Edits to segment
/// files are in `segments.rs`.
fn pristine() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // A sled database in place makes the journal keep its log there.
    drop(SledStore::open(&dir.path().join("journal")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = Options {
            checkpoint_every: 50,
            checkpoint_interval: Duration::from_secs(3600),
            ..Options::default()
        };
        let j = Journal::open_dir(dir.path(), opts).unwrap();
        let mut n = 0u64;
        while n < ENTRIES {
            let k = (1 + n % 4).min(ENTRIES - n);
            let batch = (n..n + k)
                .map(|i| {
                    NewEvent::new(&KeyCreated {
                        key_id: format!("key-{i}"),
                        roles: vec!["member".into()],
                        expires_at_us: None,
                    })
                    .unwrap()
                    .team(format!("team-{}", i % 3))
                    .actor("admin")
                })
                .collect();
            j.append(batch).await.unwrap();
            n += k;
        }
        j.shutdown().await.unwrap();
    });
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn verify_dir(dir: &Path) -> Result<u64, Problem> {
    let store = SledStore::open(&dir.join("journal")).unwrap();
    verify_store(&store, None, &mut |_, _| {})
        .unwrap()
        .map(|s| s.entries)
}

/// For each seq, the first seq of its batch: the first entry that the signature covering it
/// covers. Also checks that the log has batches of several entries and signs only their last.
fn batch_starts(dir: &Path) -> Vec<u64> {
    let store = SledStore::open(&dir.join("journal")).unwrap();
    let mut starts = Vec::new();
    let mut start = 0;
    let mut unsigned = 0;
    isnad_journal::LogStore::scan(&store, 0, ENTRIES, &mut |seq, bytes| {
        starts.push(start);
        if split_stored(bytes).unwrap().1 == isnad_journal::entry::UNSIGNED {
            unsigned += 1;
        } else {
            start = seq + 1;
        }
        true
    })
    .unwrap();
    assert_eq!(starts.len() as u64, ENTRIES);
    assert_eq!(start, ENTRIES, "the last entry is signed");
    assert!(unsigned > ENTRIES / 3, "only {unsigned} entries unsigned");
    starts
}

fn attacker() -> SigningKey {
    SigningKey::from_bytes(&[0xa7; 32])
}

/// Applies one random mutation to the sled database and returns (description, first bad seq).
fn mutate_store(db: &sled::Db, rng: &mut Rng, starts: &[u64]) -> (String, u64) {
    let key = SledStore::entry_key;
    let get = |seq: u64| db.get(key(seq)).unwrap().unwrap().to_vec();
    match rng.below(6) {
        0 => {
            let seq = rng.below(ENTRIES);
            let mut v = get(seq);
            let at = rng.below(v.len() as u64) as usize;
            v[at] ^= 1 << rng.below(8);
            db.insert(key(seq), v).unwrap();
            let first_bad = if (32..96).contains(&at) {
                starts[seq as usize]
            } else {
                seq
            };
            (format!("flip byte {at} of seq {seq}"), first_bad)
        }
        1 => {
            let seq = rng.below(ENTRIES);
            db.remove(key(seq)).unwrap();
            (format!("delete seq {seq}"), seq)
        }
        2 => {
            let (src, dst) = (rng.below(ENTRIES), rng.below(ENTRIES));
            if src == dst {
                // Past the end-of-batch marker the copy would be cut on open as a torn batch,
                // so the attacker moves the marker too.
                db.insert(key(ENTRIES), get(src)).unwrap();
                db.insert(SledStore::sealed_key(), &(ENTRIES + 1).to_be_bytes())
                    .unwrap();
                (format!("append a copy of seq {src}"), ENTRIES)
            } else {
                db.insert(key(dst), get(src)).unwrap();
                (format!("overwrite seq {dst} with seq {src}"), dst)
            }
        }
        3 => {
            let a = rng.below(ENTRIES - 1);
            let b = a + 1 + rng.below(ENTRIES - a - 1);
            let (va, vb) = (get(a), get(b));
            db.insert(key(a), vb).unwrap();
            db.insert(key(b), va).unwrap();
            (format!("swap seq {a} and {b}"), a)
        }
        4 => {
            let seq = rng.below(ENTRIES);
            let mut v = get(seq);
            let (hash, _, _) = split_stored(&v).unwrap();
            v[32..96].copy_from_slice(&attacker().sign(&hash).to_bytes());
            db.insert(key(seq), v).unwrap();
            (
                format!("re-sign seq {seq} with another key"),
                starts[seq as usize],
            )
        }
        _ => {
            // Rewrite history from `seq` on: new payload byte, a consistent new hash chain, all
            // re-signed with the attacker's key.
            let seq = rng.below(ENTRIES);
            let mut first_bad = starts[seq as usize];
            let mut prev = if seq == 0 {
                [0u8; 32]
            } else {
                split_stored(&get(seq - 1)).unwrap().0
            };
            for s in seq..ENTRIES {
                let v = get(s);
                let (_, _, canonical) = split_stored(&v).unwrap();
                let mut canonical = canonical.to_vec();
                if s == seq {
                    let n = canonical.len();
                    canonical[n - 2] ^= 0x01;
                    // An edit that no longer decodes is caught at its own seq, before any
                    // signature is looked at.
                    if isnad_schemas::Event::from_canonical(&canonical).is_err() {
                        first_bad = seq;
                    }
                }
                let hash = isnad_journal::entry::entry_hash(s, &prev, &canonical);
                let mut nv = hash.to_vec();
                nv.extend_from_slice(&attacker().sign(&hash).to_bytes());
                nv.extend_from_slice(&canonical);
                db.insert(key(s), nv).unwrap();
                prev = hash;
            }
            (
                format!("rewrite and re-sign history from seq {seq}"),
                first_bad,
            )
        }
    }
}

#[test]
fn every_data_directory_mutation_is_caught_at_the_right_seq() {
    let base = pristine();
    assert_eq!(verify_dir(base.path()), Ok(ENTRIES));
    let starts = batch_starts(base.path());
    let mut rng = Rng::from_clock("tamper test");
    for i in 0..MUTATIONS {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let (what, expected) = {
            let db = sled::open(work.path().join("journal")).unwrap();
            let m = mutate_store(&db, &mut rng, &starts);
            db.flush().unwrap();
            m
        };
        match verify_dir(work.path()) {
            Ok(n) => panic!("mutation {i} ({what}) went unnoticed ({n} entries verified)"),
            Err(p) => assert_eq!(p.seq, expected, "mutation {i} ({what}): reported {p}"),
        }
    }
}

#[test]
fn tampered_checkpoint_and_swapped_key_are_caught() {
    let base = pristine();
    // A checkpoint whose root was altered.
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    {
        let store = SledStore::open(&work.path().join("journal")).unwrap();
        use isnad_journal::LogStore as _;
        let (size, note) = store.checkpoints().unwrap()[1].clone();
        let lines: Vec<&str> = note.lines().collect();
        let forged = note.replace(lines[2], &B64.encode([0u8; 32]));
        store.put_checkpoint(size, &forged).unwrap();
        store.flush().unwrap();
        drop(store);
        let p = verify_dir(work.path()).unwrap_err();
        assert_eq!(p.seq, size - 1, "{p}");
        assert!(p.reason.contains("checkpoint"), "{p}");
    }
    // The whole log re-signed by an attacker who also swapped the recorded public key: caught when
    // the auditor pins the node's real key (node.pub).
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    let real = isnad_journal::keys::parse_public_key(
        &std::fs::read_to_string(base.path().join("node.pub")).unwrap(),
    )
    .unwrap();
    {
        let db = sled::open(work.path().join("journal")).unwrap();
        let mut k = vec![b'm'];
        k.extend_from_slice(b"public_key");
        db.insert(k, attacker().verifying_key().as_bytes().to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&work.path().join("journal")).unwrap();
    let p = verify_store(&store, Some(&real), &mut |_, _| {})
        .unwrap()
        .unwrap_err();
    assert_eq!(p.seq, 0);
    assert!(p.reason.contains("expected"), "{p}");
}

fn export_lines(dir: &Path) -> Vec<String> {
    let store = SledStore::open(&dir.join("journal")).unwrap();
    let mut out = Vec::new();
    export_store(&store, None, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verify_lines(lines: &[Vec<u8>]) -> Result<u64, Problem> {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    verify_export(&mut Cursor::new(text), None, None, &mut |_, _| {}).map(|s| s.entries)
}

#[test]
fn every_export_mutation_is_caught_at_the_right_seq() {
    let base = pristine();
    let starts = batch_starts(base.path());
    let lines = export_lines(base.path());
    let lines: Vec<Vec<u8>> = lines.into_iter().map(String::into_bytes).collect();
    assert_eq!(verify_lines(&lines), Ok(ENTRIES));
    // Positions of entry lines, by seq.
    let entry_at: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with(b"{\"seq\""))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(entry_at.len() as u64, ENTRIES);
    let mut rng = Rng::from_clock("tamper test");
    for i in 0..MUTATIONS {
        let mut m = lines.clone();
        let seq = rng.below(ENTRIES);
        let at = entry_at[seq as usize];
        let (what, expected) = match rng.below(6) {
            0 => {
                let b = rng.below(m[at].len() as u64) as usize;
                m[at][b] ^= 1 << rng.below(8);
                // A flip that leaves a well-formed signature of another value is caught by the
                // signature check; any other flip by the line's own checks.
                let sig_of = |line: &[u8]| {
                    serde_json::from_slice::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["sig"].as_str().map(str::to_owned))
                        .and_then(|s| B64.decode(s).ok())
                        .filter(|s| s.len() == 64)
                };
                let first_bad = match sig_of(&m[at]) {
                    Some(sig) if Some(&sig) != sig_of(&lines[at]).as_ref() => starts[seq as usize],
                    _ => seq,
                };
                (format!("flip byte {b} of seq {seq}'s line"), first_bad)
            }
            1 => {
                m.remove(at);
                (format!("delete seq {seq}'s line"), seq)
            }
            2 => {
                let copy = m[at].clone();
                m.insert(at + 1, copy);
                (format!("duplicate seq {seq}'s line"), seq + 1)
            }
            3 => {
                let other = rng.below(ENTRIES);
                if other == seq {
                    m.remove(at);
                    (format!("delete seq {seq}'s line"), seq)
                } else {
                    let (a, b) = (seq.min(other), seq.max(other));
                    m.swap(entry_at[a as usize], entry_at[b as usize]);
                    (format!("swap seq {a} and {b}"), a)
                }
            }
            4 => {
                // Replace the signature in place, so that the line stays in canonical form.
                let v: serde_json::Value = serde_json::from_slice(&m[at]).unwrap();
                let hash: Vec<u8> = hex::decode(v["hash"].as_str().unwrap()).unwrap();
                let forged = format!(
                    "\"sig\":\"{}\"",
                    B64.encode(attacker().sign(&hash).to_bytes())
                );
                let old = match v["sig"].as_str() {
                    Some(sig) => format!("\"sig\":\"{sig}\""),
                    None => "\"sig\":null".to_owned(),
                };
                let line = String::from_utf8(m[at].clone()).unwrap();
                assert!(line.contains(&old), "{line}");
                m[at] = line.replacen(&old, &forged, 1).into_bytes();
                (
                    format!("re-sign seq {seq} with another key"),
                    starts[seq as usize],
                )
            }
            _ => {
                // Edit only the human-readable view, leaving the signed bytes alone.
                let mut v: serde_json::Value = serde_json::from_slice(&m[at]).unwrap();
                v["view"]["team"] = "team-x".into();
                m[at] = serde_json::to_vec(&v).unwrap();
                (format!("edit the view of seq {seq}"), seq)
            }
        };
        match verify_lines(&m) {
            Ok(n) => panic!("export mutation {i} ({what}) went unnoticed ({n} entries)"),
            Err(p) => assert_eq!(
                p.seq, expected,
                "export mutation {i} ({what}): reported {p}"
            ),
        }
    }
}

#[test]
fn export_with_a_tampered_checkpoint_line_is_refused() {
    let base = pristine();
    let lines = export_lines(base.path());
    let at = lines
        .iter()
        .position(|l| l.starts_with("{\"checkpoint_size\":"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    let size = v["checkpoint_size"].as_u64().unwrap();
    let mut m: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
    m[at] = lines[at]
        .replace(&format!("\\n{size}\\n"), &format!("\\n{}\\n", size + 1))
        .into_bytes();
    assert_ne!(m[at], lines[at].as_bytes());
    let p = verify_lines(&m).unwrap_err();
    assert_eq!(p.seq, size - 1, "{p}");
    // Pinning the node's key refuses an export whose header names another key.
    let mut text = lines.join("\n");
    text.push('\n');
    let real = isnad_journal::keys::parse_public_key(
        &std::fs::read_to_string(base.path().join("node.pub")).unwrap(),
    )
    .unwrap();
    assert!(verify_export(
        &mut Cursor::new(text.clone()),
        Some(&real),
        None,
        &mut |_, _| {}
    )
    .is_ok());
    let p = verify_export(
        &mut Cursor::new(text),
        Some(&attacker().verifying_key()),
        None,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert_eq!(p.seq, 0);
}

#[test]
fn an_export_that_ends_inside_a_batch_is_refused_at_the_batch_start() {
    let base = pristine();
    let starts = batch_starts(base.path());
    let lines = export_lines(base.path());
    let entry_lines = |upto: u64| -> Vec<Vec<u8>> {
        // Header announcing `upto` entries, then the first `upto` entry lines and the checkpoint
        // lines among them.
        let mut header: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        header["entries"] = upto.into();
        let mut out = vec![serde_json::to_vec(&header).unwrap()];
        let mut seen = 0;
        for l in &lines[1..] {
            if l.starts_with("{\"seq\"") {
                if seen == upto {
                    break;
                }
                seen += 1;
            }
            out.push(l.clone().into_bytes());
        }
        out
    };
    // Cut after an entry that its batch's signature, now missing, was to cover.
    let unsigned = (1..ENTRIES - 1)
        .rev()
        .find(|&s| starts[s as usize + 1] == starts[s as usize])
        .unwrap();
    let p = verify_lines(&entry_lines(unsigned + 1)).unwrap_err();
    assert_eq!(p.seq, starts[unsigned as usize], "{p}");
    assert!(p.reason.contains("covered by no signature"), "{p}");
    // Cut at the end of a batch: a shorter log, all of it signed.
    let batch_end = starts[unsigned as usize];
    assert_eq!(verify_lines(&entry_lines(batch_end)), Ok(batch_end));
}
