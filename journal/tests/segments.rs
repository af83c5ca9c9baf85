//! The segment-file store: damage to its files is caught and pinned to the first bad entry, ids of
//! old entries are still found once the index has moved them to disk, and what a crash can leave
//! behind in its metadata reads back safely.
//!
//! The record format is written out again here from the store's documentation
//! (`len u32 | flags u32 | crc32(seq ‖ len ‖ flags ‖ bytes) u32 | bytes`), as an attacker who
//! knows it would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, sync::Arc, time::Duration};

use isnad_journal::{
    export::verify_store, segments::IDS_PER_CHUNK, Journal, LogStore, NodeKey, Options,
    SegmentStore,
};
use isnad_schemas::{KeyCreated, NewEvent};

fn event(i: u64) -> NewEvent {
    NewEvent::new(&KeyCreated {
        key_id: format!("key-{i}"),
        roles: vec!["member".into()],
        expires_at_us: None,
    })
    .unwrap()
    .team("team-a")
    .actor("admin")
}

fn key() -> NodeKey {
    NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
}

fn opts() -> Options {
    Options {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// A log of `n` entries in batches of `batch`, written through the journal.
fn write_log(dir: &Path, n: u64, batch: u64) -> Vec<NewEvent> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events: Vec<NewEvent> = (0..n).map(event).collect();
    rt.block_on(async {
        let store = Arc::new(SegmentStore::open(&dir.join("journal")).unwrap());
        let j = Journal::open(store, key(), opts()).unwrap();
        for b in events.chunks(batch as usize) {
            j.append(b.to_vec()).await.unwrap();
        }
        j.shutdown().await.unwrap();
    });
    events
}

/// The records of a segment file: `(offset, length with header)`.
fn records(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, 12 + len));
        at += 12 + len;
    }
    out
}

fn reseal(seg: &mut [u8], at: usize, seq: u64) {
    let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&seg[at..at + 8]);
    h.update(&seg[at + 12..at + 12 + len]);
    seg[at + 8..at + 12].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Verifies the log as the auditor's tools open it (read-only), then as the server does; both
/// must find the same.
fn verify(dir: &Path) -> Result<u64, isnad_journal::verify::Problem> {
    let check = |store: &dyn LogStore| {
        verify_store(store, None, &mut |_, _| {})
            .unwrap()
            .map(|s| s.entries)
    };
    let read_only = check(&SegmentStore::open_read_only(&dir.join("journal")).unwrap());
    let writable = check(&SegmentStore::open(&dir.join("journal")).unwrap());
    assert_eq!(
        read_only.as_ref().map_err(|p| (p.seq, p.reason.clone())),
        writable.as_ref().map_err(|p| (p.seq, p.reason.clone())),
        "read-only and writable opens disagree"
    );
    writable
}

/// Every file under `dir` with its contents.
fn files(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for item in std::fs::read_dir(&d).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn damage_to_a_segment_is_pinned_to_the_first_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40, 4);
    assert_eq!(verify(dir.path()).unwrap(), 40);
    let seg_file = SegmentStore::open(&dir.path().join("journal"))
        .unwrap()
        .segment_files()
        .pop()
        .unwrap();
    let pristine = std::fs::read(&seg_file).unwrap();
    let recs = records(&pristine);
    assert_eq!(recs.len(), 40);

    // A flipped byte in an entry's event, checksum left as it was: the store's checksum.
    let mut seg = pristine.clone();
    let (at, len) = recs[17];
    seg[at + len - 3] ^= 0x10;
    std::fs::write(&seg_file, &seg).unwrap();
    let p = verify(dir.path()).unwrap_err();
    assert_eq!(p.seq, 17, "{p}");
    assert!(p.reason.contains("checksum"), "{p}");

    // The same flip by someone who also fixes the checksum: the entry hash.
    reseal(&mut seg, at, 17);
    std::fs::write(&seg_file, &seg).unwrap();
    let p = verify(dir.path()).unwrap_err();
    assert_eq!(p.seq, 17, "{p}");
    assert!(!p.reason.contains("checksum"), "{p}");

    // Two entries swapped, each resealed for its new seq (and its offset fixed on open).
    let mut seg = pristine.clone();
    let (a, alen) = recs[21];
    let (b, blen) = recs[22];
    let (ra, rb) = (
        pristine[a..a + alen].to_vec(),
        pristine[b..b + blen].to_vec(),
    );
    seg.splice(a..b + blen, rb.iter().chain(ra.iter()).copied());
    reseal(&mut seg, a, 21);
    reseal(&mut seg, a + blen, 22);
    std::fs::write(&seg_file, &seg).unwrap();
    let p = verify(dir.path()).unwrap_err();
    assert_eq!(p.seq, 21, "{p}");

    std::fs::write(&seg_file, &pristine).unwrap();
    assert_eq!(verify(dir.path()).unwrap(), 40);
}

#[test]
fn ids_moved_to_disk_are_still_found_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = IDS_PER_CHUNK as u64 + 3_000;
    let events = write_log(dir.path(), n, 500);
    let store = Arc::new(SegmentStore::open(&dir.path().join("journal")).unwrap());
    store.finish_background_writes();
    let (chunks, in_memory) = store.id_index_footprint();
    assert_eq!(chunks, 1, "the first {} ids are on disk", IDS_PER_CHUNK);
    assert!(in_memory < 4_000, "{in_memory} ids in memory");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let j = Journal::open(store, key(), opts()).unwrap();
        for (i, old) in [(0usize, 0u64), (1234, 1234), (n as usize - 1, n - 1)] {
            let r = j.append_one(events[i].clone()).await.unwrap();
            assert!(r.duplicate, "event {i} appended twice");
            assert_eq!(r.seq, old);
        }
        let fresh = j.append_one(event(n)).await.unwrap();
        assert_eq!((fresh.seq, fresh.duplicate), (n, false));
        j.shutdown().await.unwrap();
    });
}

#[test]
fn a_cursor_ahead_of_a_log_cut_back_reads_as_its_end() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 6, 3);
    let store = SegmentStore::open(&dir.path().join("journal")).unwrap();
    // As if the cursor reached the disk and the entries it had read did not.
    store.set_cursor("webhooks", 9).unwrap();
    store.set_cursor("rag", 4).unwrap();
    assert_eq!(store.cursor("webhooks").unwrap(), Some(6));
    assert_eq!(store.cursor("rag").unwrap(), Some(4));
    assert_eq!(store.cursor("other").unwrap(), None);
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _held = SegmentStore::open(&dir.path().join("journal")).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "second_opener", "--nocapture"])
        .env("ISNAD_SECOND_OPENER_DIR", dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(out.contains("refused: "), "{out}");
    assert!(out.contains("in use by another process"), "{out}");
}

/// Run by `a_second_process_cannot_open_the_same_log` in a child process.
#[test]
fn second_opener() {
    let Ok(dir) = std::env::var("ISNAD_SECOND_OPENER_DIR") else {
        return;
    };
    match SegmentStore::open(&Path::new(&dir).join("journal")) {
        Ok(_) => println!("\nopened"),
        Err(e) => println!("\nrefused: {e}"),
    }
}

#[test]
fn the_log_moves_onto_zero_filled_segments_and_reopens_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let seg_bytes = 256 * 1024;
    let open = || {
        Arc::new(
            SegmentStore::open_with(
                &path,
                isnad_journal::SegmentOptions {
                    segment_bytes: seg_bytes,
                    ..isnad_journal::SegmentOptions::default()
                },
            )
            .unwrap(),
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut written = 0u64;
    for round in 0..2 {
        let store = open();
        rt.block_on(async {
            let j = Journal::open(store.clone(), key(), opts()).unwrap();
            // Enough for several segments; spares are prepared while the appends go on.
            for _ in 0..40 {
                let batch: Vec<NewEvent> = (written..written + 100).map(event).collect();
                j.append(batch).await.unwrap();
                written += 100;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            j.shutdown().await.unwrap();
        });
        let files = store.segment_files();
        assert!(files.len() >= 3, "round {round}: {} segments", files.len());
        let zero_filled = files
            .iter()
            .filter(|f| {
                let bytes = std::fs::read(f).unwrap();
                bytes.len() as u64 >= seg_bytes && bytes.ends_with(&[0u8; 64])
            })
            .count();
        // The first round moves onto spares as soon as they are ready; the second goes on in
        // the zero fill the first left, so which of its segments end zero-filled is timing.
        assert!(
            round > 0 || zero_filled >= 1,
            "round {round}: no segment was zero-filled"
        );
        let active = files.last().unwrap().clone();
        let active_len = std::fs::metadata(&active).unwrap().len();
        drop(store);
        // Reopening keeps the active segment's zero fill; everything verifies.
        let store = open();
        assert_eq!(std::fs::metadata(&active).unwrap().len(), active_len);
        assert_eq!(store.next_seq().unwrap(), written);
        let summary = verify_store(&*store, None, &mut |_, _| {})
            .unwrap()
            .unwrap();
        assert_eq!(summary.entries, written);
    }
}

#[test]
fn a_forged_checkpoint_note_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(SegmentStore::open(&dir.path().join("journal")).unwrap());
        let j = Journal::open(store, key(), opts()).unwrap();
        for i in 0..3 {
            j.append((i * 10..i * 10 + 10).map(event).collect())
                .await
                .unwrap();
            j.checkpoint_now().await.unwrap();
        }
        j.shutdown().await.unwrap();
    });
    assert_eq!(verify(dir.path()).unwrap(), 30);
    // Notes are records of the segments' format (their checksum covers seq 0), holding the
    // checkpoint's size and then the note.
    let path = dir.path().join("journal").join("checkpoints");
    let pristine = std::fs::read(&path).unwrap();
    let recs = records(&pristine);
    assert_eq!(recs.len(), 3);
    // The second note (size 20): its root line replaced, the record's checksum recomputed.
    let (at, len) = recs[1];
    let body = &pristine[at + 12..at + len];
    assert_eq!(u64::from_le_bytes(body[..8].try_into().unwrap()), 20);
    let note = String::from_utf8(body[8..].to_vec()).unwrap();
    let root = note.lines().nth(2).unwrap();
    let forged = note.replace(root, &"A".repeat(root.len()));
    let mut bytes = pristine.clone();
    bytes[at + 20..at + len].copy_from_slice(forged.as_bytes());
    reseal(&mut bytes, at, 0);
    std::fs::write(&path, &bytes).unwrap();
    let p = verify(dir.path()).unwrap_err();
    assert_eq!(p.seq, 19, "{p}");
    assert!(p.reason.contains("checkpoint"), "{p}");

    // The same edit without the checksum: the store's own check.
    let mut bytes = pristine.clone();
    bytes[at + 20 + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let p = verify(dir.path()).unwrap_err();
    assert!(p.reason.contains("checksum"), "{p}");
}

#[test]
fn the_merkle_tree_keeps_its_upper_levels_in_files_and_proves_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5_000u64;
    write_log(dir.path(), n, 250);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(SegmentStore::open(&dir.path().join("journal")).unwrap());
        let j = Journal::open(store, key(), opts()).unwrap();
        // Rebuilt on open: one 32-byte node per complete subtree of 1,024, 2,048 and 4,096.
        let tree = dir.path().join("journal").join("tree");
        for (level, nodes) in [(10, 4u64), (11, 2), (12, 1)] {
            let len = std::fs::metadata(tree.join(format!("level-{level:02}")))
                .unwrap()
                .len();
            assert_eq!(len, nodes * 32, "level {level}");
        }
        let (cp, _) = j.checkpoint_now().await.unwrap().unwrap();
        for i in [0, 1023, 1024, 3000, n - 1] {
            let proof = j.inclusion_proof(i, n).unwrap();
            let e = j.entry(i).unwrap().unwrap();
            isnad_journal::merkle::verify_inclusion(i, n, &e.leaf(), &proof, &cp.root)
                .unwrap_or_else(|err| panic!("seq {i}: {err}"));
        }
        let old = 2048;
        let old_root = j.root(old).unwrap();
        let proof = j.consistency_proof(old, n).unwrap();
        isnad_journal::merkle::verify_consistency(old, n, &old_root, &cp.root, &proof).unwrap();
        j.shutdown().await.unwrap();
    });
}

/// A log of `n` entries on 256 KiB segments that has moved onto a spare, closed cleanly.
fn rolled_log(path: &Path, n: u64) -> u64 {
    let store = Arc::new(
        SegmentStore::open_with(
            path,
            isnad_journal::SegmentOptions {
                segment_bytes: 256 * 1024,
                ..isnad_journal::SegmentOptions::default()
            },
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let j = Journal::open(store.clone(), key(), opts()).unwrap();
        for i in 0..n / 100 {
            j.append((i * 100..i * 100 + 100).map(event).collect())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        j.shutdown().await.unwrap();
    });
    let files = store.segment_files();
    let last = std::fs::metadata(files.last().unwrap()).unwrap().len();
    assert!(
        files.len() >= 2 && last == 256 * 1024,
        "{files:?}, last {last}"
    );
    n
}

#[test]
fn a_clean_close_is_no_torn_tail_and_read_only_opens_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let n = rolled_log(&path, 3000);
    let before = files(dir.path());

    let ro = SegmentStore::open_read_only(&path).unwrap();
    assert_eq!(ro.torn_tail(), None);
    assert_eq!(ro.next_seq().unwrap(), n);
    assert_eq!(
        verify_store(&ro, None, &mut |_, _| {})
            .unwrap()
            .unwrap()
            .entries,
        n
    );
    let id = isnad_journal::Entry::from_stored(17, &ro.get(17).unwrap().unwrap())
        .unwrap()
        .event
        .id;
    assert_eq!(ro.seq_of(&id).unwrap(), Some(17));
    // Every write is refused, and none reaches the files.
    assert!(matches!(
        ro.append(&[(n, vec![1])], &[]),
        Err(isnad_journal::Error::ReadOnly)
    ));
    assert!(ro.put_checkpoint(n, "note").is_err());
    assert!(ro.set_meta("k", b"v").is_err());
    assert!(ro.set_cursor("c", 1).is_err());
    drop(ro);
    assert!(
        before == files(dir.path()),
        "a read-only open changed the files"
    );

    // The writable open after a clean close finds nothing to cut and keeps the zero fill.
    let rw = SegmentStore::open(&path).unwrap();
    assert_eq!(rw.torn_tail(), None);
    let active = rw.segment_files().pop().unwrap();
    assert_eq!(std::fs::metadata(&active).unwrap().len(), 256 * 1024);
    assert_eq!(
        verify_store(&rw, None, &mut |_, _| {})
            .unwrap()
            .unwrap()
            .entries,
        n
    );
}

#[test]
fn a_torn_write_is_reported_read_only_and_cut_back_by_a_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let n = rolled_log(&path, 3000);
    // A server that started again and was killed: the store was opened (which removes the
    // clean-close mark) and never closed.
    drop(SegmentStore::open(&path).unwrap());
    let seg = SegmentStore::open_read_only(&path)
        .unwrap()
        .segment_files()
        .pop()
        .unwrap();
    let first: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    // The end of the last record (zero fill reads as records of length 0).
    let end = records(&bytes)
        .into_iter()
        .take_while(|&(at, len)| len > 12 || at == 0)
        .last()
        .map_or(0, |(at, len)| (at + len) as u64);

    // Killed with nothing torn: nothing to report.
    assert_eq!(
        SegmentStore::open_read_only(&path).unwrap().torn_tail(),
        None
    );

    // Part of a batch, as a power cut leaves it: a whole record without its end-of-batch flag,
    // then half a header.
    let mut torn = Vec::new();
    let body = vec![0x42u8; 30];
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&30u32.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&(first + (n - first)).to_le_bytes());
    h.update(&header[..8]);
    h.update(&body);
    header[8..].copy_from_slice(&h.finalize().to_le_bytes());
    torn.extend_from_slice(&header);
    torn.extend_from_slice(&body);
    torn.extend_from_slice(&[9, 0, 0, 0, 1, 7]);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&torn, end).unwrap();
    }
    let before = files(dir.path());
    let expected = isnad_journal::TornTail {
        segment: first,
        offset: end,
        bytes: torn.len() as u64,
    };
    let ro = SegmentStore::open_read_only(&path).unwrap();
    assert_eq!(ro.torn_tail(), Some(expected));
    assert_eq!(
        ro.next_seq().unwrap(),
        n,
        "the torn record is not part of the log"
    );
    assert_eq!(
        verify_store(&ro, None, &mut |_, _| {})
            .unwrap()
            .unwrap()
            .entries,
        n
    );
    drop(ro);
    assert!(
        before == files(dir.path()),
        "a read-only open changed the files"
    );

    // The server's open cuts it back (zeroing it: the segment stays prepared) and says where.
    let rw = SegmentStore::open(&path).unwrap();
    assert_eq!(rw.torn_tail(), Some(expected));
    drop(rw);
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(after.len(), bytes.len());
    assert!(after[end as usize..].iter().all(|&b| b == 0));
    assert_eq!(
        SegmentStore::open_read_only(&path).unwrap().torn_tail(),
        None
    );
    assert_eq!(verify(dir.path()).unwrap(), n);
}

#[test]
fn a_sled_format_log_is_read_from_a_copy_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(isnad_journal::SledStore::open(&path).unwrap());
        let j = Journal::open(store, key(), opts()).unwrap();
        j.append((0..50).map(event).collect()).await.unwrap();
        j.shutdown().await.unwrap();
    });
    let before = files(dir.path());
    let ro = isnad_journal::open_store_read_only(dir.path()).unwrap();
    assert_eq!(
        verify_store(&*ro, None, &mut |_, _| {})
            .unwrap()
            .unwrap()
            .entries,
        50
    );
    assert!(matches!(
        ro.append(&[(50, vec![1])], &[]),
        Err(isnad_journal::Error::ReadOnly)
    ));
    assert!(ro.set_cursor("c", 1).is_err());
    drop(ro);
    assert!(
        before == files(dir.path()),
        "a read-only open changed the sled log"
    );
}
