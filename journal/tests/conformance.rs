//! The journal's conformance suite: every behaviour a stage, the API or an auditor relies on, run
//! against each storage backend (segment files, sled, and memory).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use isnad_journal::{
    checkpoint::Checkpoint, export::verify_store, merkle, Journal, LogStore, MemStore, NodeKey,
    Options, SegmentOptions, SegmentStore, SledStore, Watermark,
};
use isnad_schemas::{EventId, KeyRevoked, NewEvent};

trait Backend {
    /// The backend's storage; calling it again after the previous journal closed reopens it.
    fn store(&self) -> Arc<dyn LogStore>;
}

struct Sled(tempfile::TempDir);
impl Backend for Sled {
    fn store(&self) -> Arc<dyn LogStore> {
        Arc::new(SledStore::open(&self.0.path().join("journal")).unwrap())
    }
}

/// Small segments, so that the suite crosses segment boundaries.
struct Segments(tempfile::TempDir);
impl Backend for Segments {
    fn store(&self) -> Arc<dyn LogStore> {
        let opts = SegmentOptions {
            segment_bytes: 64 * 1024,
            ..SegmentOptions::default()
        };
        Arc::new(SegmentStore::open_with(&self.0.path().join("journal"), opts).unwrap())
    }
}

struct Mem(Arc<MemStore>);
impl Backend for Mem {
    fn store(&self) -> Arc<dyn LogStore> {
        self.0.clone()
    }
}

fn key() -> NodeKey {
    NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[42; 32]))
}

fn opts() -> Options {
    Options {
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

fn open(b: &dyn Backend, o: Options) -> Journal {
    Journal::open(b.store(), key(), o).unwrap()
}

fn ev(n: u32) -> NewEvent {
    NewEvent::new(&KeyRevoked {
        key_id: format!("k{n}"),
        reason: "test".into(),
    })
    .unwrap()
    .team("t1")
    .request_id(format!("req-{n}"))
}

async fn appends_are_consecutive_and_read_back(b: &dyn Backend) {
    let j = open(b, opts());
    let mut seqs = Vec::new();
    for n in 0..25 {
        let r = j.append_one(ev(n)).await.unwrap();
        assert!(!r.duplicate);
        seqs.push(r.seq);
    }
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    let batch = j.append((25..30).map(ev).collect()).await.unwrap();
    assert_eq!(
        batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![25, 26, 27, 28, 29]
    );
    assert_eq!(j.len(), 30);
    assert_eq!(j.durable_len(), 30);
    let all = j.range(0, 100).unwrap();
    assert_eq!(all.len(), 30);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(
            e.event.request_id.as_deref(),
            Some(format!("req-{i}").as_str())
        );
        let p: KeyRevoked = e.event.payload_as().unwrap();
        assert_eq!(p.key_id, format!("k{i}"));
    }
    assert!(all
        .windows(2)
        .all(|w| w[0].event.timestamp_us <= w[1].event.timestamp_us));
    assert_eq!(j.entry(7).unwrap().unwrap().seq, 7);
    assert!(j.entry(30).unwrap().is_none());
    j.shutdown().await.unwrap();
}

async fn retried_ids_return_the_original_seq(b: &dyn Backend) {
    let j = open(b, opts());
    let first = ev(1);
    let r1 = j.append_one(first.clone()).await.unwrap();
    j.append_one(ev(2)).await.unwrap();
    let r2 = j.append_one(first.clone()).await.unwrap();
    assert_eq!((r2.seq, r2.hash, r2.duplicate), (r1.seq, r1.hash, true));
    // Twice in one call: one entry.
    let same = ev(3);
    let rs = j.append(vec![same.clone(), same.clone()]).await.unwrap();
    assert_eq!(rs[0].seq, rs[1].seq);
    assert!(rs[1].duplicate);
    assert_eq!(j.len(), 3);
    j.shutdown().await.unwrap();
    drop(j);
    // And across a restart.
    let j = open(b, opts());
    let r3 = j.append_one(first).await.unwrap();
    assert_eq!((r3.seq, r3.duplicate), (r1.seq, true));
    assert_eq!(j.len(), 3);
    j.shutdown().await.unwrap();
}

async fn concurrent_writers_get_unique_consecutive_seqs(b: &dyn Backend) {
    let j = open(b, opts());
    let mut tasks = Vec::new();
    for w in 0..32u32 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..20u32 {
                out.push(j.append_one(ev(w * 1000 + i)).await.unwrap().seq);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a writer's own appends keep their order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (0..640).collect::<Vec<_>>());
    j.shutdown().await.unwrap();
}

async fn subscription_catches_up_from_disk_then_follows(b: &dyn Backend) {
    let j = open(
        b,
        Options {
            ring_capacity: 8,
            ..opts()
        },
    );
    j.append((0..50).map(ev).collect()).await.unwrap();
    let mut sub = j.subscribe(3, Watermark::Durable);
    for want in 3..50 {
        assert_eq!(sub.next().await.unwrap().seq, want);
    }
    let writer = {
        let j = j.clone();
        tokio::spawn(async move {
            for n in 50..60 {
                j.append_one(ev(n)).await.unwrap();
            }
        })
    };
    for want in 50..60 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.seq, want);
    }
    writer.await.unwrap();
    // Sequenced watermark sees appends before they are durable too.
    let mut seq_sub = j.subscribe(60, Watermark::Sequenced);
    let r = j.append_sequenced(vec![ev(60)]).await.unwrap();
    assert_eq!(seq_sub.next().await.unwrap().seq, r[0].seq);
    j.wait_durable(r[0].seq).await.unwrap();
    j.shutdown().await.unwrap();
    assert_eq!(
        sub.next().await.unwrap().seq,
        60,
        "what is durable is still delivered"
    );
    assert!(
        sub.next().await.is_err(),
        "a closed journal ends its subscriptions"
    );
}

async fn cursors_persist(b: &dyn Backend) {
    let j = open(b, opts());
    assert_eq!(j.cursor("webhooks").unwrap(), 0);
    j.append((0..5).map(ev).collect()).await.unwrap();
    j.set_cursor("webhooks", 4).unwrap();
    j.shutdown().await.unwrap();
    drop(j);
    let j = open(b, opts());
    assert_eq!(j.cursor("webhooks").unwrap(), 4);
    assert_eq!(j.cursor("other").unwrap(), 0);
    j.shutdown().await.unwrap();
}

async fn checkpoints_and_proofs(b: &dyn Backend) {
    let j = open(b, opts());
    j.append((0..25).map(ev).collect()).await.unwrap();
    for n in 25..37 {
        j.append_one(ev(n)).await.unwrap();
    }
    // Every 10 entries at least, and one at shutdown covering all.
    j.shutdown().await.unwrap();
    drop(j);
    let j = open(b, opts());
    let cps = j.checkpoints().unwrap();
    assert!(
        cps.len() >= 2,
        "checkpoints: {:?}",
        cps.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    assert_eq!(cps.last().unwrap().0, 37, "shutdown checkpoints everything");
    let (latest, note) = j.latest_checkpoint().unwrap();
    assert_eq!(latest.size, 37);
    let cp = Checkpoint::open(&note, &j.public_key()).unwrap();
    assert_eq!(cp.root, j.root(37).unwrap());
    for i in 0..37 {
        let e = j.entry(i).unwrap().unwrap();
        let proof = j.inclusion_proof(i, 37).unwrap();
        merkle::verify_inclusion(i, 37, &e.leaf(), &proof, &cp.root).unwrap();
    }
    for (size, note) in &cps {
        let old = Checkpoint::open(note, &j.public_key()).unwrap();
        let proof = j.consistency_proof(*size, 37).unwrap();
        merkle::verify_consistency(*size, 37, &old.root, &cp.root, &proof).unwrap();
    }
    assert!(
        j.inclusion_proof(0, 38).is_err(),
        "no proof beyond the durable log"
    );
    j.shutdown().await.unwrap();
}

async fn another_key_is_refused(b: &dyn Backend) {
    let j = open(b, opts());
    j.append_one(ev(0)).await.unwrap();
    j.shutdown().await.unwrap();
    drop(j);
    let other = NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let err = Journal::open(b.store(), other, opts()).unwrap_err();
    assert!(
        matches!(err, isnad_journal::Error::KeyMismatch { .. }),
        "{err}"
    );
}

async fn chain_continues_across_restarts_and_verifies(b: &dyn Backend) {
    for round in 0..3u32 {
        let j = open(b, opts());
        assert_eq!(j.len(), u64::from(round) * 15);
        j.append((0..15).map(|n| ev(round * 100 + n)).collect())
            .await
            .unwrap();
        j.shutdown().await.unwrap();
    }
    let store = b.store();
    let summary = verify_store(&*store, None, &mut |_, _| {})
        .unwrap()
        .unwrap();
    assert_eq!(summary.entries, 45);
    assert!(summary.checkpoints >= 3);
}

async fn submitted_cursors_follow_their_appends(b: &dyn Backend) {
    let j = open(b, opts());
    let mut last = None;
    for n in 0..20 {
        last = Some(j.submit_sequenced(vec![ev(n)]).unwrap());
        j.submit_cursor("stage", u64::from(n) + 1).unwrap();
    }
    let receipts = last.unwrap().await.unwrap().unwrap();
    assert_eq!(receipts[0].seq, 19, "submissions keep their order");
    j.shutdown().await.unwrap();
    drop(j);
    let j = open(b, opts());
    assert_eq!(j.cursor("stage").unwrap(), 20);
    assert_eq!(j.len(), 20);
    j.shutdown().await.unwrap();
}

async fn appends_after_shutdown_fail(b: &dyn Backend) {
    let j = open(b, opts());
    j.shutdown().await.unwrap();
    assert!(matches!(
        j.append_one(ev(0)).await,
        Err(isnad_journal::Error::Closed)
    ));
}

async fn explicit_ids_and_derived_ids(b: &dyn Backend) {
    let j = open(b, opts());
    let id = EventId::derived(1_700_000_000_000, b"stage-a/0/0");
    let r1 = j.append_one(ev(0).with_id(id)).await.unwrap();
    let r2 = j.append_one(ev(1).with_id(id)).await.unwrap();
    assert_eq!(r1.seq, r2.seq);
    assert!(r2.duplicate);
    assert_eq!(j.entry(r1.seq).unwrap().unwrap().event.id, id);
    j.shutdown().await.unwrap();
}

async fn sequenced_appends_become_durable_on_their_own_and_with_a_durable_one(b: &dyn Backend) {
    // A long delay makes the two ways to durability tell apart: a durable append flushes what
    // is pending at once; with nothing else coming, the delay alone does.
    let j = open(
        b,
        Options {
            flush_delay: Duration::from_millis(300),
            ..opts()
        },
    );
    let pending = j.append_sequenced(vec![ev(0), ev(1)]).await.unwrap();
    let last = pending[1].seq;
    let durable = j.append_one(ev(2)).await.unwrap();
    assert!(
        j.durable_len() > durable.seq && durable.seq > last,
        "a durable append makes everything before it durable"
    );
    let alone = j.append_sequenced(vec![ev(3)]).await.unwrap()[0].seq;
    tokio::time::timeout(Duration::from_secs(10), j.wait_durable(alone))
        .await
        .expect("a sequenced append with nothing after it still becomes durable")
        .unwrap();
    // And once the log is shut down, nothing sequenced is left behind.
    let last = j.append_sequenced(vec![ev(4)]).await.unwrap()[0].seq;
    j.shutdown().await.unwrap();
    drop(j);
    let reopened = open(b, opts());
    assert_eq!(reopened.len(), last + 1);
    reopened.shutdown().await.unwrap();
}

async fn acknowledgements_and_checkpoints_hold_with_flushes_in_parallel(b: &dyn Backend) {
    // Two flushes may be in progress at once and finish in either order: an acknowledged append
    // is still durable when acknowledged, the watermark never moves back, checkpoints only grow,
    // and shutdown's checkpoint covers everything.
    let j = open(b, opts());
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30u32 {
                let seq = j.append_one(ev(w * 1000 + i)).await.unwrap().seq;
                assert!(j.durable_len() > seq, "acknowledged before it was durable");
            }
        }));
    }
    let checkpointer = {
        let j = j.clone();
        tokio::spawn(async move {
            let mut sizes = Vec::new();
            for _ in 0..20 {
                let before = j.durable_len();
                let (cp, _) = j.checkpoint_now().await.unwrap().unwrap();
                assert!(
                    cp.size >= before,
                    "a checkpoint covers what was durable before it"
                );
                sizes.push(cp.size);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sizes
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let sizes = checkpointer.await.unwrap();
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    assert_eq!(j.durable_len(), 480);
    j.shutdown().await.unwrap();
    assert_eq!(j.latest_checkpoint().unwrap().0.size, 480);
    drop(j);
    let reopened = open(b, opts());
    assert_eq!(reopened.len(), 480);
    reopened.shutdown().await.unwrap();
}

async fn proofs_reach_back_past_what_the_live_tree_keeps(b: &dyn Backend) {
    // The live tree keeps its lower levels for the last two blocks of 1,024 entries only: proofs
    // and roots for older entries and older sizes reread hashes from the store, both in the
    // journal that wrote them and in one that rebuilt its tree on open.
    let n = 5_000u32;
    let j = open(b, opts());
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        j.append(chunk.iter().map(|&i| ev(i)).collect())
            .await
            .unwrap();
    }
    check_proofs(&j, u64::from(n)).await;
    j.shutdown().await.unwrap();
    drop(j);
    let j = open(b, opts());
    check_proofs(&j, u64::from(n)).await;
    j.shutdown().await.unwrap();
}

/// Every proof a client may ask of a log of `size` entries verifies against its checkpoints.
async fn check_proofs(j: &Journal, size: u64) {
    let (cp, _) = j.checkpoint_now().await.unwrap().unwrap();
    assert_eq!(cp.size, size);
    assert_eq!(j.root(size).unwrap(), cp.root);
    for i in [0, 1, 1023, 1024, 2047, 2500, size - 1] {
        let e = j.entry(i).unwrap().unwrap();
        let proof = j.inclusion_proof(i, size).unwrap();
        merkle::verify_inclusion(i, size, &e.leaf(), &proof, &cp.root)
            .unwrap_or_else(|err| panic!("seq {i}: {err}"));
    }
    let (early_size, early_note) = j.checkpoints().unwrap().first().unwrap().clone();
    let early = Checkpoint::open(&early_note, &j.public_key()).unwrap();
    assert!(
        early_size < 1024,
        "an early checkpoint, in a block the tree no longer holds"
    );
    assert_eq!(j.root(early_size).unwrap(), early.root);
    let proof = j.consistency_proof(early_size, size).unwrap();
    merkle::verify_consistency(early_size, size, &early.root, &cp.root, &proof).unwrap();
}

macro_rules! suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let b = $make;
                        super::$name(&b).await;
                    }
                };
            }
            case!(appends_are_consecutive_and_read_back);
            case!(retried_ids_return_the_original_seq);
            case!(concurrent_writers_get_unique_consecutive_seqs);
            case!(subscription_catches_up_from_disk_then_follows);
            case!(cursors_persist);
            case!(checkpoints_and_proofs);
            case!(another_key_is_refused);
            case!(chain_continues_across_restarts_and_verifies);
            case!(appends_after_shutdown_fail);
            case!(submitted_cursors_follow_their_appends);
            case!(explicit_ids_and_derived_ids);
            case!(sequenced_appends_become_durable_on_their_own_and_with_a_durable_one);
            case!(acknowledgements_and_checkpoints_hold_with_flushes_in_parallel);
            case!(proofs_reach_back_past_what_the_live_tree_keeps);
        }
    };
}

suite!(segments, Segments(tempfile::tempdir().unwrap()));
suite!(sled, Sled(tempfile::tempdir().unwrap()));
suite!(memory, Mem(Arc::new(MemStore::new())));
