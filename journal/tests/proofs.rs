//! Proofs: the public RFC 6962 test vectors (transparency-dev/merkle, kept as fixture data), and
//! interoperability: independent implementations from the registries (`tlog_tiles`, a port of
//! Go's sumdb `tlog`, and `signed_note`) accept isnad's checkpoints and proofs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use isnad_journal::{
    checkpoint::Checkpoint,
    merkle::{self, leaf_hash, Hash, MerkleTree},
    Journal, MemStore, NodeKey, Options,
};
use isnad_schemas::{NewEvent, RagQueried};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    leaves: Vec<String>,
    empty_root: String,
    roots: Vec<String>,
    inclusion: Vec<Inclusion>,
    consistency: Vec<Consistency>,
}

#[derive(Deserialize)]
struct Inclusion {
    leaf_index: u64,
    tree_size: u64,
    proof: Vec<String>,
}

#[derive(Deserialize)]
struct Consistency {
    size1: u64,
    size2: u64,
    proof: Vec<String>,
}

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("fixtures/rfc6962_vectors.json")).unwrap()
}

fn vector_tree(v: &Vectors) -> MerkleTree {
    let mut t = MerkleTree::new();
    for l in &v.leaves {
        t.push_leaf_hash(leaf_hash(&hex::decode(l).unwrap()));
    }
    t
}

#[test]
fn roots_match_the_published_vectors() {
    let v = vectors();
    let t = vector_tree(&v);
    assert_eq!(t.root(0).unwrap(), h(&v.empty_root));
    for (i, root) in v.roots.iter().enumerate() {
        assert_eq!(
            t.root(i as u64 + 1).unwrap(),
            h(root),
            "root of size {}",
            i + 1
        );
    }
}

#[test]
fn inclusion_proofs_match_the_published_vectors() {
    let v = vectors();
    let t = vector_tree(&v);
    for c in &v.inclusion {
        let want: Vec<Hash> = c.proof.iter().map(|s| h(s)).collect();
        assert_eq!(
            t.inclusion_proof(c.leaf_index, c.tree_size).unwrap(),
            want,
            "leaf {} size {}",
            c.leaf_index,
            c.tree_size
        );
        let leaf = leaf_hash(&hex::decode(&v.leaves[c.leaf_index as usize]).unwrap());
        let root = h(&v.roots[c.tree_size as usize - 1]);
        merkle::verify_inclusion(c.leaf_index, c.tree_size, &leaf, &want, &root).unwrap();
        // Corruptions are refused, as in the upstream suite.
        for i in 0..want.len() {
            let mut bad = want.clone();
            bad[i][0] ^= 8;
            assert!(
                merkle::verify_inclusion(c.leaf_index, c.tree_size, &leaf, &bad, &root).is_err()
            );
        }
        if !want.is_empty() {
            assert!(merkle::verify_inclusion(
                c.leaf_index,
                c.tree_size,
                &leaf,
                &want[..want.len() - 1],
                &root
            )
            .is_err());
        }
        let mut longer = want.clone();
        longer.push(root);
        assert!(
            merkle::verify_inclusion(c.leaf_index, c.tree_size, &leaf, &longer, &root).is_err()
        );
        assert!(
            merkle::verify_inclusion(c.leaf_index + 1, c.tree_size, &leaf, &want, &root).is_err()
        );
    }
}

#[test]
fn consistency_proofs_match_the_published_vectors() {
    let v = vectors();
    let t = vector_tree(&v);
    for c in &v.consistency {
        let want: Vec<Hash> = c.proof.iter().map(|s| h(s)).collect();
        assert_eq!(
            t.consistency_proof(c.size1, c.size2).unwrap(),
            want,
            "{} -> {}",
            c.size1,
            c.size2
        );
        let (r1, r2) = (
            h(&v.roots[c.size1 as usize - 1]),
            h(&v.roots[c.size2 as usize - 1]),
        );
        merkle::verify_consistency(c.size1, c.size2, &r1, &r2, &want).unwrap();
        for i in 0..want.len() {
            let mut bad = want.clone();
            bad[i][0] ^= 16;
            assert!(merkle::verify_consistency(c.size1, c.size2, &r1, &r2, &bad).is_err());
        }
        if !want.is_empty() {
            assert!(merkle::verify_consistency(c.size1, c.size2, &r2, &r1, &want).is_err());
            assert!(merkle::verify_consistency(c.size1, c.size2, &r1, &r2, &[]).is_err());
        }
    }
}

/// A journal with some entries and checkpoints, in memory.
async fn journal_with(n: u32) -> Journal {
    let key = NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
    let opts = Options {
        checkpoint_every: 17,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let j = Journal::open(std::sync::Arc::new(MemStore::new()), key, opts).unwrap();
    for i in 0..n {
        let e = NewEvent::new(&RagQueried {
            query_hash: format!("sha256:{i:064x}"),
            top_k: 5,
            document_ids: vec![format!("doc-{i}")],
        })
        .unwrap();
        j.append_one(e).await.unwrap();
    }
    j.checkpoint_now().await.unwrap();
    j
}

#[tokio::test]
async fn checkpoints_verify_with_the_signed_note_crate() {
    let j = journal_with(100).await;
    let vkey = j.verifier_key();
    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    let cps = j.checkpoints().unwrap();
    assert!(cps.len() >= 5);
    for (size, note_text) in &cps {
        let note = signed_note::Note::from_bytes(note_text.as_bytes()).unwrap();
        let (verified, _) = note.verify(&list).unwrap();
        assert_eq!(verified.len(), 1);
        let cp = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
        assert_eq!(cp.origin(), j.origin());
        assert_eq!(cp.size(), *size);
        assert_eq!(cp.hash().0, j.root(*size).unwrap());
        // A forged size is refused by the independent verifier too.
        let forged = note_text.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
        let forged = signed_note::Note::from_bytes(forged.as_bytes()).unwrap();
        assert!(forged.verify(&list).is_err());
    }
    // And our own parser agrees on the same notes.
    let (size, note) = cps.last().unwrap();
    assert_eq!(Checkpoint::open(note, &j.public_key()).unwrap().size, *size);
}

#[tokio::test]
async fn proofs_verify_with_the_tlog_tiles_crate() {
    let j = journal_with(100).await;
    let size = j.durable_len();
    let root = tlog_tiles::Hash(j.root(size).unwrap());
    for i in 0..size {
        let e = j.entry(i).unwrap().unwrap();
        // The independent crate computes the leaf from the entry hash itself.
        let leaf = tlog_tiles::record_hash(&e.hash);
        assert_eq!(leaf.0, e.leaf());
        let proof: Vec<tlog_tiles::Hash> = j
            .inclusion_proof(i, size)
            .unwrap()
            .into_iter()
            .map(tlog_tiles::Hash)
            .collect();
        tlog_tiles::check_record(&proof, size, root, i, leaf)
            .unwrap_or_else(|e| panic!("inclusion of {i}: {e:?}"));
    }
    for old in 1..size {
        let proof: Vec<tlog_tiles::Hash> = j
            .consistency_proof(old, size)
            .unwrap()
            .into_iter()
            .map(tlog_tiles::Hash)
            .collect();
        let old_root = tlog_tiles::Hash(j.root(old).unwrap());
        tlog_tiles::check_tree(&proof, size, root, old, old_root)
            .unwrap_or_else(|e| panic!("consistency {old}: {e:?}"));
    }
    j.shutdown().await.unwrap();
}

/// A store whose range reads wait at a gate once it is armed.
struct GatedStore {
    inner: MemStore,
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Receives (or disconnects) when the gate opens.
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl isnad_journal::LogStore for GatedStore {
    fn append(
        &self,
        entries: &[(u64, Vec<u8>)],
        ids: &[(isnad_schemas::EventId, u64)],
    ) -> isnad_journal::Result<()> {
        self.inner.append(entries, ids)
    }
    fn flush(&self) -> isnad_journal::Result<()> {
        self.inner.flush()
    }
    fn get(&self, seq: u64) -> isnad_journal::Result<Option<Vec<u8>>> {
        self.inner.get(seq)
    }
    fn scan(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> isnad_journal::Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            if let Some(gate) = self.gate.lock().unwrap().take() {
                let _ = gate.recv();
            }
        }
        self.inner.scan(from, to, f)
    }
    fn next_seq(&self) -> isnad_journal::Result<u64> {
        self.inner.next_seq()
    }
    fn seq_of(&self, id: &isnad_schemas::EventId) -> isnad_journal::Result<Option<u64>> {
        self.inner.seq_of(id)
    }
    fn put_checkpoint(&self, size: u64, note: &str) -> isnad_journal::Result<()> {
        self.inner.put_checkpoint(size, note)
    }
    fn checkpoints(&self) -> isnad_journal::Result<Vec<(u64, String)>> {
        self.inner.checkpoints()
    }
    fn meta(&self, key: &str) -> isnad_journal::Result<Option<Vec<u8>>> {
        self.inner.meta(key)
    }
    fn set_meta(&self, key: &str, value: &[u8]) -> isnad_journal::Result<()> {
        self.inner.set_meta(key, value)
    }
    fn cursor(&self, name: &str) -> isnad_journal::Result<Option<u64>> {
        self.inner.cursor(name)
    }
    fn set_cursor(&self, name: &str, seq: u64) -> isnad_journal::Result<()> {
        self.inner.set_cursor(name, seq)
    }
}

fn rag_event(i: u32) -> NewEvent {
    NewEvent::new(&RagQueried {
        query_hash: format!("sha256:{i:064x}"),
        top_k: 5,
        document_ids: vec![format!("doc-{i}")],
    })
    .unwrap()
}

/// A proof into a block that the live tree no longer keeps rereads it from the store; a slow
/// read must not hold up appends (the sequencer takes the tree's lock for every batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_while_a_proof_rereads_an_old_block() {
    let store = std::sync::Arc::new(GatedStore {
        inner: MemStore::new(),
        armed: false.into(),
        entered: std::sync::Mutex::new(None),
        gate: std::sync::Mutex::new(None),
    });
    let key = NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
    let j = Journal::open(store.clone(), key, Options::default()).unwrap();
    // Four blocks of 1,024 entries: the first two are pruned from the live tree.
    for chunk in 0..64u32 {
        j.append((0..64).map(|i| rag_event(chunk * 64 + i)).collect())
            .await
            .unwrap();
    }
    let size = j.durable_len();
    assert_eq!(size, 4096);
    let root = j.root(size).unwrap();

    let (tx, entered) = std::sync::mpsc::channel();
    *store.entered.lock().unwrap() = Some(tx);
    let (open, gate) = std::sync::mpsc::channel();
    *store.gate.lock().unwrap() = Some(gate);
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let prover = {
        let j = j.clone();
        std::thread::spawn(move || j.inclusion_proof(5, size))
    };
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the proof reads the pruned block from the store");
    // The proof waits in the store; an append goes through meanwhile.
    tokio::time::timeout(Duration::from_secs(10), j.append_one(rag_event(99_999)))
        .await
        .expect("an append completes while a proof reads the store")
        .unwrap();
    open.send(()).unwrap();
    let proof = prover.join().unwrap().unwrap();
    let leaf = j.entry(5).unwrap().unwrap().leaf();
    merkle::verify_inclusion(5, size, &leaf, &proof, &root).unwrap();
    j.shutdown().await.unwrap();
}
