//! Offline verification of a stream of entries: sequence, event decoding, hash chain, time order,
//! Ed25519 signatures (batched, in parallel) and every checkpoint's root and signature.
//!
//! The journal signs the last entry of each sealed batch; the entries before it in the batch
//! carry an all-zero signature slot ([`crate::entry::UNSIGNED`]). A signature over an entry's
//! chained hash vouches for that entry and, through the chain, for every entry before it, so the
//! verifier requires that every entry be followed (or itself be) a signed entry or the size of a
//! verified checkpoint. A signature that fails is reported at the first entry it covers: any
//! entry from there to the signed one may be the altered one.
//!
//! The same verifier checks a data directory, an export file and, on open, the tail of the log
//! since its last checkpoint. It always names the first bad sequence number.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;

use crate::{
    checkpoint::Checkpoint,
    entry::{entry_hash, split_stored, Entry, GENESIS, UNSIGNED},
    merkle::{leaf_hash, CompactTree, Hash},
};

/// The first problem found, with the sequence number it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {reason}")]
pub struct Problem {
    /// First bad sequence number (for a checkpoint: its size minus one, the last entry it covers;
    /// for missing entries: the first missing seq).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries verified.
    pub entries: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Root over all entries.
    pub root: Hash,
    /// Hash of the last entry.
    pub last_hash: Hash,
}

/// Signatures are checked in batches of this many entries.
const SIG_BATCH: usize = 4096;

/// A streaming verifier. Feed entries in order with [`ChainVerifier::push`], then call
/// [`ChainVerifier::finish`].
pub struct ChainVerifier {
    key: VerifyingKey,
    origin: Option<String>,
    next: u64,
    prev: Hash,
    last_ts: i64,
    tree: Option<CompactTree>,
    checkpoints: BTreeMap<u64, String>,
    verified_checkpoints: u64,
    /// Signatures not yet checked: (first seq it covers, its seq, hash, signature).
    pending: Vec<(u64, u64, Hash, [u8; 64])>,
    /// The first entry not yet covered by a signature or a verified checkpoint.
    uncovered_from: Option<u64>,
    /// A problem found while the signatures before it were not yet checked.
    deferred: Option<Problem>,
}

impl ChainVerifier {
    /// Verifies a log from seq 0. `checkpoints` are the signed notes to check on the way.
    pub fn new(key: VerifyingKey, origin: Option<String>, checkpoints: Vec<(u64, String)>) -> Self {
        Self {
            key,
            origin,
            next: 0,
            prev: GENESIS,
            last_ts: i64::MIN,
            tree: Some(CompactTree::new()),
            checkpoints: checkpoints.into_iter().collect(),
            verified_checkpoints: 0,
            pending: Vec::new(),
            uncovered_from: None,
            deferred: None,
        }
    }

    /// Verifies a tail that starts at `seq` after an entry with hash `prev` and time `last_ts`.
    /// No Merkle tree is kept (the caller checks roots).
    pub fn resume(key: VerifyingKey, seq: u64, prev: Hash, last_ts: i64) -> Self {
        Self {
            tree: None,
            next: seq,
            prev,
            last_ts,
            ..Self::new(key, None, Vec::new())
        }
    }

    /// Adds a checkpoint note to check when the stream reaches its size.
    pub fn add_checkpoint(&mut self, size: u64, note: String) {
        self.checkpoints.insert(size, note);
    }

    /// Sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Feeds the stored form of entry `seq`.
    pub fn push(&mut self, seq: u64, stored: &[u8]) -> Result<(), Problem> {
        if self.deferred.is_some() {
            return Err(self.fail());
        }
        let expected = self.next;
        let fail = |reason: String| Problem {
            seq: expected,
            reason,
        };
        if seq != expected {
            let reason = if seq > expected {
                format!("entry missing (next entry found is seq {seq})")
            } else {
                format!("entry out of order or duplicated (found seq {seq})")
            };
            return self.defer(fail(reason));
        }
        let checked = (|| {
            let (hash, sig, canonical) = split_stored(stored)?;
            let entry = Entry::from_stored(seq, stored)?;
            let want = entry_hash(seq, &self.prev, canonical);
            if want != hash {
                return Err(
                    "hash mismatch: the event, its position or the chain was altered".to_owned(),
                );
            }
            if entry.event.timestamp_us < self.last_ts {
                return Err("timestamp earlier than the previous entry's".to_owned());
            }
            Ok((hash, sig, entry.event.timestamp_us))
        })();
        let (hash, sig, ts) = match checked {
            Ok(v) => v,
            Err(reason) => return self.defer(fail(reason)),
        };
        if sig == UNSIGNED {
            self.uncovered_from.get_or_insert(seq);
        } else {
            let from = self.uncovered_from.take().unwrap_or(seq);
            self.pending.push((from, seq, hash, sig));
        }
        self.prev = hash;
        self.last_ts = ts;
        self.next += 1;
        if let Some(tree) = &mut self.tree {
            tree.push_leaf_hash(leaf_hash(&hash));
            if let Some(note) = self.checkpoints.get(&self.next).cloned() {
                self.check_note(&note)?;
            }
        }
        if self.pending.len() >= SIG_BATCH {
            self.check_signatures()?;
        }
        Ok(())
    }

    /// Checks a signed checkpoint against the entries seen so far (its size must be their count).
    pub fn check_checkpoint_now(&mut self, note: &str) -> Result<(), Problem> {
        if self.deferred.is_some() {
            return Err(self.fail());
        }
        self.check_note(note)
    }

    fn check_note(&mut self, note: &str) -> Result<(), Problem> {
        let size = self.next;
        let Some(root) = self.tree.as_ref().map(CompactTree::root) else {
            return Ok(());
        };
        let problem = |reason: String| Problem {
            seq: size.saturating_sub(1),
            reason,
        };
        let verdict = match Checkpoint::open(note, &self.key) {
            Err(e) => Err(format!("checkpoint at size {size}: {e}")),
            Ok(cp) if cp.size != size => Err(format!(
                "checkpoint filed at size {size} says size {}",
                cp.size
            )),
            Ok(cp) if cp.root != root => Err(format!(
                "checkpoint at size {size}: root does not match the entries"
            )),
            Ok(cp) if self.origin.as_ref().is_some_and(|o| *o != cp.origin) => Err(format!(
                "checkpoint at size {size}: origin {} is not this log's",
                cp.origin
            )),
            Ok(_) => Ok(()),
        };
        match verdict {
            Ok(()) => {
                // The signed root commits to every entry hash so far.
                self.uncovered_from = None;
                self.verified_checkpoints += 1;
                Ok(())
            }
            Err(reason) => self.defer(problem(reason)),
        }
    }

    fn defer(&mut self, p: Problem) -> Result<(), Problem> {
        self.deferred = Some(p);
        Err(self.fail())
    }

    /// The earliest problem: a bad signature before the deferred problem wins.
    fn fail(&mut self) -> Problem {
        match self.check_signatures() {
            Err(p) => p,
            Ok(()) => self.deferred.clone().unwrap_or(Problem {
                seq: self.next,
                reason: "unknown".into(),
            }),
        }
    }

    fn check_signatures(&mut self) -> Result<(), Problem> {
        let pending = std::mem::take(&mut self.pending);
        let key = self.key;
        let bad = pending
            .par_chunks(256)
            .filter_map(|chunk| {
                let msgs: Vec<&[u8]> = chunk.iter().map(|(_, _, h, _)| h.as_slice()).collect();
                let sigs: Vec<Signature> = chunk
                    .iter()
                    .map(|(_, _, _, s)| Signature::from_bytes(s))
                    .collect();
                let keys = vec![key; chunk.len()];
                if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
                    return None;
                }
                // Find the first culprit one by one.
                chunk
                    .iter()
                    .find(|(_, _, h, s)| key.verify_strict(h, &Signature::from_bytes(s)).is_err())
                    .map(|(from, seq, _, _)| (*from, *seq))
            })
            .min();
        match bad {
            Some((from, seq)) => {
                let reason = if from == seq {
                    "signature does not verify with the node key".to_owned()
                } else {
                    format!(
                        "the signature at seq {seq}, which covers seqs {from} to {seq}, does not \
                         verify with the node key"
                    )
                };
                let p = Problem { seq: from, reason };
                self.deferred = Some(p.clone());
                Err(p)
            }
            None => Ok(()),
        }
    }

    /// Ends the stream: checks pending signatures, that no checkpoint claims more entries than
    /// were seen, and that a signature or a checkpoint covers the last entries.
    pub fn finish(mut self) -> Result<Summary, Problem> {
        if self.deferred.is_some() {
            return Err(self.fail());
        }
        self.check_signatures()?;
        if let Some((&size, _)) = self.checkpoints.range(self.next + 1..).next() {
            return Err(Problem {
                seq: self.next,
                reason: format!(
                    "log ends at {} entries but a checkpoint was signed at size {size}: entries were removed",
                    self.next
                ),
            });
        }
        if let Some(from) = self.uncovered_from {
            return Err(Problem {
                seq: from,
                reason: format!(
                    "entries from seq {from} to the end ({}) are covered by no signature: the log \
                     ends inside a signed batch (entries removed, or a signature stripped)",
                    self.next - 1
                ),
            });
        }
        Ok(Summary {
            entries: self.next,
            checkpoints: self.verified_checkpoints,
            root: self
                .tree
                .as_ref()
                .map(CompactTree::root)
                .unwrap_or_default(),
            last_hash: self.prev,
        })
    }
}
