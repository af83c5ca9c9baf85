//! Crash safety: a child process appends continuously and is killed with SIGKILL at random
//! moments. After every kill, each append the child saw acknowledged must be in the log, the chain
//! and every checkpoint must verify, and a restarted writer must carry on.
//!
//! The child is this very test binary, re-run with an environment variable that turns
//! `crash_child_writer` from a no-op into the writer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use isnad_journal::{
    export::verify_store, open_store, Entry, Journal, LogStore, Options, SegmentStore, SledStore,
};
use isnad_schemas::{EventId, NewEvent, RequestReceived};

const CHILD_ENV: &str = "ISNAD_CRASH_CHILD_DIR";
const ROUNDS: usize = 50;

fn event(writer: u32, n: u64) -> NewEvent {
    NewEvent::new(&RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "auto-router".into(),
        prompt_hash: format!("sha256:{writer:08x}{n:056x}"),
        stream: n.is_multiple_of(2),
        client_ip: Some("127.0.0.1".into()),
    })
    .expect("encode")
    .team("team-a")
    .actor(format!("writer-{writer}"))
}

/// The child: not a test of its own. Without the environment variable it returns at once.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = Options {
            checkpoint_every: 64,
            checkpoint_interval: Duration::from_millis(20),
            ..Options::default()
        };
        let journal = match Journal::open_dir(Path::new(&dir), opts) {
            Ok(j) => j,
            Err(e) => {
                println!("\nopen-failed {e}");
                std::process::exit(3);
            }
        };
        // libtest has printed "test crash_child_writer ... " without a newline.
        println!("\nready {}", journal.len());
        let mut tasks = Vec::new();
        for w in 0..8u32 {
            let j = journal.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    // Mostly single appends, sometimes a small batch.
                    let batch: Vec<NewEvent> = (0..if n.is_multiple_of(5) { 3 } else { 1 })
                        .map(|i| event(w, n + i))
                        .collect();
                    n += batch.len() as u64;
                    let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
                    match j.append(batch).await {
                        Ok(receipts) => {
                            for (r, id) in receipts.iter().zip(ids) {
                                println!("ack {} {}", r.seq, id);
                            }
                        }
                        Err(e) => {
                            println!("append-failed {e}");
                            std::process::exit(4);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

mod common;
use common::Rng;

/// The writer and number an event of [`event`] was made with.
fn origin(e: &Entry) -> (u32, u64) {
    let p: RequestReceived = e.event.payload_as().unwrap();
    let hex = p.prompt_hash.strip_prefix("sha256:").unwrap();
    (
        u32::from_str_radix(&hex[..8], 16).unwrap(),
        u64::from_str_radix(&hex[8..], 16).unwrap(),
    )
}

/// The child appends events `n, n+1, n+2` of a writer as one call whenever `n` is a multiple of
/// 5: after any kill, each such call is in the log whole, consecutive, or not at all.
fn assert_groups_whole(store: &dyn LogStore, round: usize, seed: u64) {
    let mut all = Vec::new();
    store
        .scan(0, store.next_seq().unwrap(), &mut |seq, bytes| {
            all.push(origin(&Entry::from_stored(seq, bytes).unwrap()));
            true
        })
        .unwrap();
    for (i, &(w, n)) in all.iter().enumerate() {
        let whole = match n % 5 {
            0 => all.get(i + 1) == Some(&(w, n + 1)) && all.get(i + 2) == Some(&(w, n + 2)),
            1 | 2 => i > 0 && all[i - 1] == (w, n - 1),
            _ => true,
        };
        assert!(
            whole,
            "round {round}: a batch of writer {w} is torn at event {n} (seed {seed})"
        );
    }
}

/// Removes the checkpoint rows for sizes above `size` from a sled database.
fn drop_checkpoints_after(db: &sled::Db, size: u64) {
    for row in db.scan_prefix(b"k") {
        let (k, _) = row.unwrap();
        if u64::from_be_bytes(k[1..9].try_into().unwrap()) > size {
            db.remove(k).unwrap();
        }
    }
    db.flush().unwrap();
}

/// Where the first `n` records of a segment end (records are `len u32 | flags u32 | crc u32 | bytes`).
fn records_end(seg: &[u8], n: usize) -> u64 {
    let mut at = 0usize;
    for _ in 0..n {
        at += 12 + u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
    }
    at as u64
}

/// Writes a batch of two entries, then one of three, and returns the events of the second.
fn two_batches(dir: &Path) -> Vec<NewEvent> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first: Vec<NewEvent> = (0..2).map(|n| event(1, n)).collect();
    let second: Vec<NewEvent> = (2..5).map(|n| event(1, n)).collect();
    rt.block_on(async {
        let j = Journal::open_dir(dir, Options::default()).unwrap();
        j.append(first).await.unwrap();
        j.append(second.clone()).await.unwrap();
        assert_eq!(j.len(), 5);
        j.shutdown().await.unwrap();
    });
    second
}

/// Reopens a log whose second batch a crash cut short: it is gone whole, ids included (a retry
/// is a new append), and the chain still verifies.
fn assert_partial_batch_removed(dir: &Path, retry: NewEvent) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let j = Journal::open_dir(dir, Options::default()).unwrap();
        assert_eq!(j.len(), 2, "the partial batch is gone");
        let again = j.append_one(retry).await.unwrap();
        assert_eq!(
            (again.seq, again.duplicate),
            (2, false),
            "its ids went with it: a retry is a new append"
        );
        j.shutdown().await.unwrap();
    });
    let store = open_store(dir, 1 << 20).unwrap();
    let summary = verify_store(&*store, None, &mut |_, _| {})
        .unwrap()
        .unwrap();
    assert_eq!(summary.entries, 3);
}

/// A crash in the middle of writing a batch to its segment: the last record is torn and the two
/// before it are whole but end no batch.
#[test]
fn a_batch_cut_short_by_a_crash_is_removed_whole_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let second = two_batches(dir.path());
    let seg = {
        let store = SegmentStore::open(&dir.path().join("journal")).unwrap();
        store.segment_files().pop().unwrap()
    };
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    // The crash came before any flush (and so any checkpoint) covering the batch was made: the
    // record of how far the segment was flushed says where the first batch ended.
    std::fs::write(dir.path().join("journal").join("checkpoints"), b"").unwrap();
    let meta = sled::open(dir.path().join("journal").join("meta")).unwrap();
    meta.remove(b"mcheckpoints_synced").unwrap();
    let flushed = meta.get(b"msegment_flushed").unwrap().unwrap().to_vec();
    let batch_one_end = records_end(&std::fs::read(&seg).unwrap(), 2);
    let mut v = flushed[..8].to_vec();
    v.extend_from_slice(&batch_one_end.to_le_bytes());
    meta.insert(b"msegment_flushed", v).unwrap();
    meta.flush().unwrap();
    drop(meta);
    assert_partial_batch_removed(dir.path(), second[0].clone());
}

/// The same crash in a log kept in sled (written before segment files): the entries reached the
/// disk but the batch's end marker did not.
#[test]
fn a_batch_cut_short_in_a_sled_log_is_removed_whole_on_open() {
    let dir = tempfile::tempdir().unwrap();
    // A sled database in place makes the journal keep its log there.
    drop(SledStore::open(&dir.path().join("journal")).unwrap());
    let second = two_batches(dir.path());
    assert!(dir.path().join("journal").join("db").is_file());
    assert!(!dir.path().join("journal").join("log").exists());
    {
        let store = SledStore::open(&dir.path().join("journal")).unwrap();
        let raw = store.raw();
        raw.insert(SledStore::sealed_key(), &2u64.to_be_bytes())
            .unwrap();
        drop_checkpoints_after(raw, 2);
        store.flush().unwrap();
    }
    assert_partial_batch_removed(dir.path(), second[0].clone());
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, EventId> = BTreeMap::new();
    let mut rounds_with_acks = 0;
    let mut last_len = 0u64;

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to have opened (and so verified) the log.
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready_len = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("round {round}: child never became ready (seed {seed})")
                });
            if let Some(n) = line.strip_prefix("ready ") {
                break n.parse::<u64>().unwrap();
            }
            assert!(
                !line.starts_with("open-failed"),
                "round {round}: {line} (seed {seed})"
            );
        };
        assert!(
            ready_len >= last_len,
            "round {round}: log shrank from {last_len} to {ready_len}"
        );
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 120));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let mut new_acks = 0;
        for line in rx.try_iter() {
            assert!(
                !line.contains("failed"),
                "round {round}: {line} (seed {seed})"
            );
            if let Some(rest) = line.strip_prefix("ack ") {
                let (seq, id) = rest.split_once(' ').unwrap();
                let prev = acked.insert(seq.parse().unwrap(), id.parse().unwrap());
                assert!(prev.is_none() || prev == acked.get(&seq.parse().unwrap()).copied());
                new_acks += 1;
            }
        }
        if new_acks > 0 {
            rounds_with_acks += 1;
        }

        // Every acknowledged append is present, with its id; the chain and checkpoints verify.
        let store = open_store(dir.path(), 1 << 20).unwrap();
        let summary = verify_store(&*store, None, &mut |_, _| {})
            .unwrap()
            .unwrap_or_else(|p| panic!("round {round}: verify failed: {p} (seed {seed})"));
        for (&seq, &id) in &acked {
            let bytes = store
                .get(seq)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acked seq {seq} lost (seed {seed})"));
            let e = Entry::from_stored(seq, &bytes).unwrap();
            assert_eq!(
                e.event.id, id,
                "round {round}: seq {seq} holds another event (seed {seed})"
            );
        }
        assert_groups_whole(&*store, round, seed);
        last_len = summary.entries;
        drop(store);
    }
    assert!(
        rounds_with_acks >= ROUNDS / 2,
        "only {rounds_with_acks} rounds appended anything (seed {seed})"
    );
    assert!(
        acked.len() > 100,
        "too few appends to mean anything: {}",
        acked.len()
    );
    println!("{ROUNDS} SIGKILLs: {} acknowledged appends all present; log of {last_len} entries verified each round", acked.len());

    // Appends continue after the last kill.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let j = Journal::open_dir(dir.path(), Options::default()).unwrap();
        let before = j.len();
        let r = j.append_one(event(99, 0)).await.unwrap();
        assert_eq!(r.seq, before);
        j.shutdown().await.unwrap();
    });
}
