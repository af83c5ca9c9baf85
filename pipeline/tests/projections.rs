//! Projections over a real journal: the state survives a restart without folding any entry
//! twice (after a clean stop and after a crash), a missing, undecodable or orphaned state is
//! rebuilt from seq 0 to the same result, and the lag says how far behind the log it is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use isnad_journal::{Entry, Journal, MemStore, NodeKey, Options, SavedState, Watermark};
use isnad_pipeline::{Bus, Projection, ProjectionHandle, Runner, RunnerOptions};
use isnad_schemas::{KeyRevoked, NewEvent, PolicyUpdated, RequestReceived};

/// Entries per kind, and how many entries it folded in all: `applied` would exceed the number
/// of entries if any were folded twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KindCounts {
    watermark: Option<Watermark>,
    per_kind: BTreeMap<String, u64>,
    applied: u64,
}

impl KindCounts {
    fn durable() -> Self {
        Self {
            watermark: Some(Watermark::Durable),
            ..Self::default()
        }
    }
}

const FORMAT: &str = "kind-counts v1";

impl Projection for KindCounts {
    fn name(&self) -> &str {
        "kind_counts"
    }
    fn watermark(&self) -> Watermark {
        self.watermark.unwrap_or(Watermark::Sequenced)
    }
    /// Policy updates are not its business.
    fn wants(&self, entry: &Entry) -> bool {
        entry.event.kind != "policy.updated"
    }
    fn apply(&mut self, entry: &Entry) {
        *self.per_kind.entry(entry.event.kind.clone()).or_default() += 1;
        self.applied += 1;
    }
    fn encode(&self) -> Result<Vec<u8>, String> {
        let mut s = format!("{FORMAT}\napplied {}\n", self.applied);
        for (kind, n) in &self.per_kind {
            s.push_str(&format!("{kind} {n}\n"));
        }
        Ok(s.into_bytes())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(FORMAT) {
            return Err("not kind-counts v1".into());
        }
        let mut out = Self {
            watermark: self.watermark,
            ..Self::default()
        };
        for line in lines {
            let (k, n) = line.split_once(' ').ok_or("bad line")?;
            let n: u64 = n.parse().map_err(|_| "bad count")?;
            if k == "applied" {
                out.applied = n;
            } else {
                out.per_kind.insert(k.to_owned(), n);
            }
        }
        Ok(out)
    }
}

fn opts() -> Options {
    Options {
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

fn request(i: u32) -> NewEvent {
    NewEvent::new(&RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "m".into(),
        prompt_hash: "sha256:00".into(),
        stream: false,
        client_ip: None,
    })
    .unwrap()
    .request_id(format!("req-{i}"))
}

fn revoked(i: u32) -> NewEvent {
    NewEvent::new(&KeyRevoked {
        key_id: format!("k{i}"),
        reason: "rotated".into(),
    })
    .unwrap()
}

fn policy(i: u32) -> NewEvent {
    NewEvent::new(&PolicyUpdated {
        policy: format!("p{i}"),
        policy_hash: "sha256:01".into(),
    })
    .unwrap()
}

/// `n` entries: two requests for every key revocation and every policy update.
async fn append_mix(journal: &Journal, from: u32, n: u32) {
    let events = (from..from + n)
        .map(|i| match i % 4 {
            0 | 1 => request(i),
            2 => revoked(i),
            _ => policy(i),
        })
        .collect();
    journal.append(events).await.unwrap();
}

/// What `KindCounts` must hold after folding the first `n` entries of [`append_mix`].
fn expected(n: u32) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let kind = match i % 4 {
            0 | 1 => "request.received",
            2 => "key.revoked",
            _ => continue,
        };
        *m.entry(kind.to_owned()).or_insert(0) += 1;
    }
    m
}

fn runner(journal: &Journal, opts: RunnerOptions) -> Runner {
    Runner::with_options(Bus::new(journal.clone()), opts)
}

fn quick() -> RunnerOptions {
    RunnerOptions {
        state_interval: Duration::from_millis(5),
        ..RunnerOptions::default()
    }
}

async fn caught_up(p: &ProjectionHandle<KindCounts>, journal: &Journal) -> KindCounts {
    tokio::time::timeout(Duration::from_secs(10), p.wait_for(journal.len()))
        .await
        .unwrap()
        .unwrap();
    p.read(Clone::clone)
}

fn key() -> NodeKey {
    NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_resumes_after_a_clean_restart_without_folding_anything_twice() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let journal = Journal::open_dir(dir.path(), opts()).unwrap();
        append_mix(&journal, 0, 40).await;
        let mut runner = runner(&journal, quick());
        let p = runner.project(KindCounts::default()).unwrap();
        let state = caught_up(&p, &journal).await;
        assert_eq!(state.per_kind, expected(40));
        assert_eq!(state.applied, 30, "ten policy updates were not wanted");
        assert_eq!(p.lag(), 0);
        runner.shutdown().await;
        journal.shutdown().await.unwrap();
        state
    };

    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let saved = journal.state("kind_counts").unwrap().unwrap();
    assert_eq!(saved.next, 40, "state and position were saved together");
    let mut runner = runner(&journal, quick());
    let p = runner.project(KindCounts::default()).unwrap();
    assert_eq!(p.next_seq(), 40, "it starts where the saved state ends");
    assert_eq!(
        caught_up(&p, &journal).await,
        before,
        "nothing folded again"
    );

    // And it goes on folding from there.
    append_mix(&journal, 40, 8).await;
    let after = caught_up(&p, &journal).await;
    assert_eq!(after.per_kind, expected(48));
    assert_eq!(after.applied, 36);
    runner.shutdown().await;
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_projection_folds_again_only_what_its_saved_state_lacks() {
    let dir = tempfile::tempdir().unwrap();
    // Saved every 4 entries and never on catching up: after 10 entries the state on disk is
    // the one of 8, and the crash loses the folding of the last two.
    let sparse = RunnerOptions {
        state_every: 4,
        state_interval: Duration::from_secs(3600),
        ..RunnerOptions::default()
    };
    let before = {
        let journal = Journal::open_dir(dir.path(), opts()).unwrap();
        let mut runner = runner(&journal, sparse.clone());
        let p = runner.project(KindCounts::default()).unwrap();
        append_mix(&journal, 0, 10).await;
        let state = caught_up(&p, &journal).await;
        runner.stop();
        journal.shutdown().await.unwrap();
        state
    };
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    assert_eq!(journal.state("kind_counts").unwrap().unwrap().next, 8);
    let mut runner = runner(&journal, sparse);
    let p = runner.project(KindCounts::default()).unwrap();
    let state = caught_up(&p, &journal).await;
    assert_eq!(state, before, "the same state, each entry folded once");
    assert_eq!(state.applied, 8);
    runner.stop();
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_undecodable_or_orphaned_state_is_rebuilt_from_seq_0() {
    let store = Arc::new(MemStore::new());
    let journal = Journal::open(store.clone(), key(), opts()).unwrap();
    append_mix(&journal, 0, 20).await;
    let mut r = runner(&journal, quick());
    let p = r.project(KindCounts::default()).unwrap();
    let reference = caught_up(&p, &journal).await;
    r.shutdown().await;
    journal.shutdown().await.unwrap();
    drop(journal);

    let last_hash = |j: &Journal| j.entry(19).unwrap().unwrap().hash;
    /// Spoils the saved state of a journal whose entry 19 has the given hash.
    type Spoil = fn(&Journal, [u8; 32]);
    let cases: [(&str, Spoil); 3] = [
        ("deleted", |j, _| j.clear_state("kind_counts").unwrap()),
        ("undecodable", |j, last_hash| {
            let garbage = SavedState {
                next: 20,
                last_hash,
                bytes: b"kind-counts v0\nwhatever".to_vec(),
            };
            j.submit_state("kind_counts", &garbage).unwrap();
        }),
        // As if a crash had cut off entries the state had already folded.
        ("orphaned", |j, _| {
            let ahead = SavedState {
                next: 25,
                last_hash: [7; 32],
                bytes: KindCounts::default().encode().unwrap(),
            };
            j.submit_state("kind_counts", &ahead).unwrap();
        }),
    ];
    for (case, spoil) in cases {
        let journal = Journal::open(store.clone(), key(), opts()).unwrap();
        spoil(&journal, last_hash(&journal));
        // A round trip through the sequencer: the spoiled state is written by now.
        journal.append(vec![policy(100)]).await.unwrap();
        let mut r = runner(&journal, quick());
        let p = r.project(KindCounts::default()).unwrap();
        let rebuilt = caught_up(&p, &journal).await;
        assert_eq!(rebuilt, reference, "{case}: rebuilt to the same state");
        assert_eq!(rebuilt.applied, 15, "{case}: from seq 0, each entry once");
        r.shutdown().await;
        journal.shutdown().await.unwrap();
        drop(journal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_counts_what_the_projection_has_not_folded_yet() {
    // Flushes nobody waits for are held back for a minute, so entries appended without waiting
    // for durability stay beyond a durable projection's reach.
    let journal = Journal::open(
        Arc::new(MemStore::new()),
        key(),
        Options {
            flush_delay: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap();
    let mut r = runner(&journal, quick());
    let durable = r.project(KindCounts::durable()).unwrap();
    append_mix(&journal, 0, 3).await;
    caught_up(&durable, &journal).await;
    assert_eq!(durable.lag(), 0, "caught up");

    journal
        .append_sequenced((3..7).map(request).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(durable.next_seq(), 3, "sequenced only: not folded yet");
    assert_eq!(durable.lag(), 4);

    // A durable append flushes everything before it too.
    journal.append(vec![revoked(7)]).await.unwrap();
    let state = caught_up(&durable, &journal).await;
    assert_eq!(durable.lag(), 0);
    assert_eq!(state.applied, 8);
    r.shutdown().await;
    journal.shutdown().await.unwrap();
}
