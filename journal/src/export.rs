//! Offline auditing: verifying a data directory, exporting the log as self-contained JSONL, and
//! verifying such an export with nothing but the file (and, ideally, a pinned key).
//!
//! Export format `isnad-journal-export/2`, one JSON object per line:
//!
//! 1. a header: `{"format", "origin", "public_key", "verifier_key", "entries"}`;
//! 2. one line per entry, in order: `{"seq", "hash", "sig", "event", "view"}` where `event` is the
//!    base64 canonical bytes (what is hashed) and `view` the JSON rendering of them. `sig` is the
//!    base64 signature of `hash`, or `null` on an entry that the next signed entry (the last of
//!    its batch) covers through the chain; format 1, where every entry was signed, still verifies;
//! 3. after the entry that completes a checkpointed size, `{"checkpoint_size", "note"}`.
//!
//! Every entry line must be byte-for-byte the line this module renders from its canonical bytes,
//! so no edit anywhere in a line (including the human-readable `view`) goes unnoticed.

use std::io::{BufRead, Write};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::VerifyingKey;
use isnad_schemas::EventJson;
use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::{verifier_key, Checkpoint},
    entry::{Entry, UNSIGNED},
    keys::parse_public_key,
    store::LogStore,
    verify::{ChainVerifier, Problem, Summary},
    Error, Result,
};

/// Format name in the export header.
pub const EXPORT_FORMAT: &str = "isnad-journal-export/2";

/// The earlier format, every entry signed, which [`verify_export`] still reads.
pub const EXPORT_FORMAT_1: &str = "isnad-journal-export/1";

/// Header line of an export.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// Log origin.
    pub origin: String,
    /// Base64 Ed25519 public key that signed the entries.
    pub public_key: String,
    /// Signed-note verifier key of the checkpoints.
    pub verifier_key: String,
    /// Number of entry lines that follow.
    pub entries: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLine {
    seq: u64,
    hash: String,
    sig: Option<String>,
    event: String,
    view: EventJson,
}

impl EntryLine {
    /// The stored form (hash ‖ signature ‖ canonical bytes) the line carries.
    fn stored(&self) -> Result<Vec<u8>, String> {
        let hash = hex::decode(&self.hash).map_err(|e| format!("hash: {e}"))?;
        let sig = match &self.sig {
            Some(sig) => B64.decode(sig).map_err(|e| format!("sig: {e}"))?,
            None => UNSIGNED.to_vec(),
        };
        let event = B64.decode(&self.event).map_err(|e| format!("event: {e}"))?;
        if hash.len() != 32 || sig.len() != 64 {
            return Err("hash or signature has the wrong length".into());
        }
        let mut stored = hash;
        stored.extend_from_slice(&sig);
        stored.extend_from_slice(&event);
        Ok(stored)
    }
}

/// Parses one entry line of an export into its entry (no chain or signature check: that is
/// [`verify_export`]'s job). Returns `Ok(None)` for header and checkpoint lines.
pub fn parse_entry_line(line: &str) -> Result<Option<Entry>, String> {
    if !line.starts_with("{\"seq\"") {
        return Ok(None);
    }
    let parsed: EntryLine =
        serde_json::from_str(line).map_err(|e| format!("bad entry line: {e}"))?;
    Entry::from_stored(parsed.seq, &parsed.stored()?).map(Some)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint_size: u64,
    note: String,
}

/// The JSONL line of an entry (without the newline).
pub fn render_entry(entry: &Entry) -> String {
    let line = EntryLine {
        seq: entry.seq,
        hash: hex::encode(entry.hash),
        sig: entry.is_signed().then(|| B64.encode(entry.sig)),
        event: B64.encode(&entry.canonical),
        view: entry.event.to_json(),
    };
    // Serialising plain data to a String cannot fail; fall back to an empty line, which any
    // verifier rejects, rather than panic.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Public key and origin recorded in a store.
pub fn store_identity(store: &dyn LogStore) -> Result<(VerifyingKey, String)> {
    let key = store
        .meta("public_key")?
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or(Error::Corrupt {
            seq: 0,
            reason: "no valid public key recorded in the log".into(),
        })?;
    let origin = store
        .meta("origin")?
        .and_then(|o| String::from_utf8(o).ok())
        .ok_or(Error::Corrupt {
            seq: 0,
            reason: "no origin recorded in the log".into(),
        })?;
    Ok((key, origin))
}

/// Verifies a whole store: every entry, signature and checkpoint. `pinned` is the key the auditor
/// expects (from `node.pub`, obtained out of band); without it the key recorded in the log is used.
pub fn verify_store(
    store: &dyn LogStore,
    pinned: Option<&VerifyingKey>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Result<Summary, Problem>> {
    let (recorded, origin) = store_identity(store)?;
    if let Some(p) = pinned {
        if *p != recorded {
            return Ok(Err(Problem {
                seq: 0,
                reason: format!(
                    "log records public key {} but {} was expected",
                    B64.encode(recorded.as_bytes()),
                    B64.encode(p.as_bytes())
                ),
            }));
        }
    }
    let total = store.next_seq()?;
    let checkpoints = match store.checkpoints() {
        // A note the store itself finds damaged (a checksum) is a problem like a forged one.
        Err(Error::Corrupt { seq, reason }) => return Ok(Err(Problem { seq, reason })),
        other => other?,
    };
    let mut v = ChainVerifier::new(recorded, Some(origin), checkpoints);
    let mut problem = None;
    let scanned = store.scan(0, total, &mut |seq, bytes| {
        if seq % 8192 == 0 {
            progress(seq, total);
        }
        match v.push(seq, bytes) {
            Ok(()) => true,
            Err(p) => {
                problem = Some(p);
                false
            }
        }
    });
    match scanned {
        // A record the store itself finds damaged (a checksum) is the first bad entry.
        Err(Error::Corrupt { seq, reason }) if problem.is_none() => {
            return Ok(Err(Problem { seq, reason }))
        }
        other => other?,
    }
    progress(total, total);
    Ok(match problem {
        Some(p) => Err(p),
        None => v.finish(),
    })
}

/// Writes the store as an export: every entry, or the first `upto` when given. Returns the number
/// of entries written.
pub fn export_store(store: &dyn LogStore, upto: Option<u64>, out: &mut dyn Write) -> Result<u64> {
    let (key, origin) = store_identity(store)?;
    let total = store.next_seq()?.min(upto.unwrap_or(u64::MAX));
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        public_key: B64.encode(key.as_bytes()),
        verifier_key: verifier_key(&origin, &key),
        origin,
        entries: total,
    };
    let io = |e: std::io::Error| Error::Io {
        path: "export".into(),
        source: e,
    };
    writeln!(
        out,
        "{}",
        serde_json::to_string(&header).map_err(|e| Error::Invalid(e.to_string()))?
    )
    .map_err(io)?;
    let checkpoints: std::collections::BTreeMap<u64, String> =
        store.checkpoints()?.into_iter().collect();
    let mut err: Option<Error> = None;
    store.scan(0, total, &mut |seq, bytes| {
        let entry = match Entry::from_stored(seq, bytes) {
            Ok(e) => e,
            Err(reason) => {
                err = Some(Error::Corrupt { seq, reason });
                return false;
            }
        };
        let mut write = || -> std::io::Result<()> {
            writeln!(out, "{}", render_entry(&entry))?;
            if let Some(note) = checkpoints.get(&(seq + 1)) {
                let line = CheckpointLine {
                    checkpoint_size: seq + 1,
                    note: note.clone(),
                };
                writeln!(out, "{}", serde_json::to_string(&line).unwrap_or_default())?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            err = Some(io(e));
            return false;
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    out.flush().map_err(io)?;
    Ok(total)
}

/// Verifies an export read from `input`. `pinned_key` is the key the auditor expects;
/// `pinned_checkpoint` a signed note obtained independently, which the export must contain.
pub fn verify_export(
    input: &mut dyn BufRead,
    pinned_key: Option<&VerifyingKey>,
    pinned_checkpoint: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, Problem> {
    let at = |seq: u64, reason: String| Problem { seq, reason };
    let mut lines = input.lines();
    let header_line = lines
        .next()
        .ok_or_else(|| at(0, "empty export".into()))?
        .map_err(|e| at(0, format!("cannot read header: {e}")))?;
    let header: ExportHeader =
        serde_json::from_str(&header_line).map_err(|e| at(0, format!("bad header: {e}")))?;
    if header.format != EXPORT_FORMAT && header.format != EXPORT_FORMAT_1 {
        return Err(at(0, format!("unknown export format {}", header.format)));
    }
    let key = parse_public_key(&header.public_key).map_err(|e| at(0, format!("header: {e}")))?;
    if let Some(p) = pinned_key {
        if *p != key {
            return Err(at(
                0,
                format!(
                    "export is signed by {} but {} was expected",
                    header.public_key,
                    B64.encode(p.as_bytes())
                ),
            ));
        }
    }
    if header.verifier_key != verifier_key(&header.origin, &key) {
        return Err(at(
            0,
            "header verifier key does not match origin and public key".into(),
        ));
    }
    let pinned_cp = match pinned_checkpoint {
        Some(note) => Some(
            Checkpoint::open(note, &key).map_err(|e| at(0, format!("pinned checkpoint: {e}")))?,
        ),
        None => None,
    };
    let mut v = ChainVerifier::new(key, Some(header.origin.clone()), Vec::new());
    if let Some(cp) = &pinned_cp {
        if let Some(note) = pinned_checkpoint {
            v.add_checkpoint(cp.size, note.to_owned());
        }
    }
    for line in lines {
        let expected = v.next_seq();
        let line = line.map_err(|e| at(expected, format!("cannot read line: {e}")))?;
        if line.starts_with("{\"checkpoint_size\"") {
            let cp: CheckpointLine = serde_json::from_str(&line).map_err(|e| {
                at(
                    expected.saturating_sub(1),
                    format!("bad checkpoint line: {e}"),
                )
            })?;
            if cp.checkpoint_size != expected {
                let seq = expected.min(cp.checkpoint_size);
                return Err(at(seq, format!("checkpoint for size {} found after {expected} entries: entries missing or out of place", cp.checkpoint_size)));
            }
            let rendered = serde_json::to_string(&cp).unwrap_or_default();
            if rendered != line {
                return Err(at(
                    expected.saturating_sub(1),
                    "checkpoint line is not in canonical form".into(),
                ));
            }
            v.check_checkpoint_now(&cp.note)?;
            continue;
        }
        let parsed: EntryLine = serde_json::from_str(&line)
            .map_err(|e| at(expected, format!("bad entry line: {e}")))?;
        if parsed.seq != expected {
            // Let the verifier word it (missing vs out of order), with the right seq.
            v.push(parsed.seq, &[])?;
        }
        let stored = parsed.stored().map_err(|r| at(expected, r))?;
        v.push(parsed.seq, &stored)?;
        let entry = Entry::from_stored(parsed.seq, &stored).map_err(|r| at(expected, r))?;
        if render_entry(&entry) != line {
            return Err(at(expected, "entry line differs from its canonical rendering (the view or the encoding was edited)".into()));
        }
        if expected.is_multiple_of(8192) {
            progress(expected, header.entries);
        }
    }
    let summary = v.finish()?;
    if summary.entries != header.entries {
        return Err(at(
            summary.entries.min(header.entries),
            format!(
                "header announces {} entries, export holds {}",
                header.entries, summary.entries
            ),
        ));
    }
    progress(summary.entries, header.entries);
    Ok(summary)
}

/// Rebuilds the Merkle tree of a store from its stored entry hashes (no signature checks; use
/// [`verify_store`] for that).
pub fn tree_of(store: &dyn LogStore) -> Result<crate::merkle::MerkleTree> {
    let total = store.next_seq()?;
    let mut tree = crate::merkle::MerkleTree::new();
    let mut err = None;
    store.scan(0, total, &mut |seq, bytes| {
        if seq != tree.size() {
            err = Some(Error::Corrupt {
                seq: tree.size(),
                reason: "entry missing".into(),
            });
            return false;
        }
        match crate::entry::split_stored(bytes) {
            Ok((hash, _, _)) => {
                tree.push_leaf_hash(crate::merkle::leaf_hash(&hash));
                true
            }
            Err(reason) => {
                err = Some(Error::Corrupt { seq, reason });
                false
            }
        }
    })?;
    err.map_or(Ok(tree), Err)
}

/// Format name of an inclusion proof bundle.
pub const PROOF_FORMAT: &str = "isnad-inclusion-proof/1";

/// Everything an auditor needs to check, offline and with only the node's public key, that one
/// event is in the log: the entry, the hash before it, an RFC 6962 audit path, and the signed
/// checkpoint whose root the path leads to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InclusionBundle {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// Sequence number of the entry.
    pub seq: u64,
    /// Hex hash of the previous entry (zeros for seq 0).
    pub prev_hash: String,
    /// The entry, exactly as an export line.
    pub entry: serde_json::Value,
    /// Tree size of the checkpoint.
    pub tree_size: u64,
    /// Hex audit path.
    pub proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl InclusionBundle {
    /// Assembles a bundle.
    pub fn new(
        entry: &Entry,
        prev_hash: &crate::merkle::Hash,
        tree_size: u64,
        proof: &[crate::merkle::Hash],
        checkpoint: &str,
    ) -> Result<Self> {
        let line = render_entry(entry);
        Ok(Self {
            format: PROOF_FORMAT.into(),
            seq: entry.seq,
            prev_hash: hex::encode(prev_hash),
            entry: serde_json::from_str(&line).map_err(|e| Error::Invalid(e.to_string()))?,
            tree_size,
            proof: proof.iter().map(hex::encode).collect(),
            checkpoint: checkpoint.to_owned(),
        })
    }

    /// Checks the bundle against the node's public key: the entry's hash and its signature when
    /// it carries one, the checkpoint's signature, and the audit path to the checkpoint's root
    /// (which vouches for the entry whether or not it is signed itself).
    pub fn verify(&self, key: &VerifyingKey) -> Result<Checkpoint, String> {
        if self.format != PROOF_FORMAT {
            return Err(format!("unknown proof format {}", self.format));
        }
        let line: EntryLine =
            serde_json::from_value(self.entry.clone()).map_err(|e| format!("entry: {e}"))?;
        if line.seq != self.seq {
            return Err(format!(
                "bundle is for seq {} but holds entry {}",
                self.seq, line.seq
            ));
        }
        let hex32 = |s: &str, what: &str| -> Result<crate::merkle::Hash, String> {
            hex::decode(s)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("{what} is not 32 hex bytes"))
        };
        let prev = hex32(&self.prev_hash, "prev_hash")?;
        let entry = Entry::from_stored(self.seq, &line.stored()?)?;
        if crate::entry::entry_hash(self.seq, &prev, &entry.canonical) != entry.hash {
            return Err("entry hash does not match its event, position and previous hash".into());
        }
        if entry.is_signed() {
            key.verify_strict(
                &entry.hash,
                &ed25519_dalek::Signature::from_bytes(&entry.sig),
            )
            .map_err(|_| "entry signature does not verify with the node key".to_owned())?;
        }
        let rendered: serde_json::Value =
            serde_json::from_str(&render_entry(&entry)).map_err(|e| e.to_string())?;
        if rendered != self.entry {
            return Err("entry view differs from its signed bytes".into());
        }
        let cp = Checkpoint::open(&self.checkpoint, key).map_err(|e| format!("checkpoint: {e}"))?;
        if cp.size != self.tree_size {
            return Err(format!(
                "checkpoint is for size {} but the proof for size {}",
                cp.size, self.tree_size
            ));
        }
        let proof = self
            .proof
            .iter()
            .map(|p| hex32(p, "proof hash"))
            .collect::<Result<Vec<_>, _>>()?;
        crate::merkle::verify_inclusion(self.seq, self.tree_size, &entry.leaf(), &proof, &cp.root)
            .map_err(|e| format!("inclusion proof: {e}"))?;
        Ok(cp)
    }
}
