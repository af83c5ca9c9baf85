//! One journal entry: the event's canonical bytes, its chained hash and its signature.

use ed25519_dalek::{Signer as _, SigningKey};
use isnad_schemas::{sha256_tagged, Event};

use crate::merkle::{leaf_hash, Hash};

/// Domain tag of entry hashes, so they can never be confused with any other SHA-256 in isnad.
pub const ENTRY_TAG: &[u8] = b"isnad/journal/entry/v1\0";

/// Hash of the entry before seq 0.
pub const GENESIS: Hash = [0u8; 32];

/// The signature slot of an entry that is not signed itself: the signature on the last entry of
/// its batch covers it through the hash chain (see [`crate::verify`]).
pub const UNSIGNED: [u8; 64] = [0u8; 64];

/// Length of the fixed prefix (hash and signature) of a stored entry.
pub const STORED_PREFIX: usize = 32 + 64;

/// `SHA-256(tag ‖ seq ‖ prev_hash ‖ canonical event bytes)`.
pub fn entry_hash(seq: u64, prev: &Hash, canonical: &[u8]) -> Hash {
    sha256_tagged(ENTRY_TAG, &[&seq.to_be_bytes(), prev, canonical])
}

/// A sequenced, hashed and signed event.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Chained entry hash.
    pub hash: Hash,
    /// Ed25519 signature of `hash` by the node key, or [`UNSIGNED`] for an entry that the
    /// signature of a later entry in its batch covers.
    pub sig: [u8; 64],
    /// Canonical event bytes (what `hash` covers).
    pub canonical: Vec<u8>,
    /// The decoded event.
    pub event: Event,
}

impl Entry {
    /// Seals `event` after `prev`: computes canonical bytes, hash and signature.
    pub fn seal(event: Event, prev: &Hash, key: &SigningKey) -> isnad_schemas::Result<Self> {
        let mut e = Self::chain(event, prev)?;
        e.sign(key);
        Ok(e)
    }

    /// Chains `event` after `prev` without signing it ([`UNSIGNED`] until [`Entry::sign`]): the
    /// sequencer chains a batch in order, then signs its last entry.
    pub fn chain(event: Event, prev: &Hash) -> isnad_schemas::Result<Self> {
        let canonical = event.canonical_bytes()?;
        let hash = entry_hash(event.seq, prev, &canonical);
        Ok(Self {
            seq: event.seq,
            hash,
            sig: UNSIGNED,
            canonical,
            event,
        })
    }

    /// Signs the entry's hash with the node key.
    pub fn sign(&mut self, key: &SigningKey) {
        self.sig = key.sign(&self.hash).to_bytes();
    }

    /// The stored form: hash ‖ signature ‖ canonical bytes.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(STORED_PREFIX + self.canonical.len());
        v.extend_from_slice(&self.hash);
        v.extend_from_slice(&self.sig);
        v.extend_from_slice(&self.canonical);
        v
    }

    /// Parses the stored form of entry `seq`, checking that the event inside claims that seq.
    /// The hash chain and signature are not checked here (see [`crate::verify`]).
    pub fn from_stored(seq: u64, bytes: &[u8]) -> Result<Self, String> {
        let (hash, sig, canonical) = split_stored(bytes)?;
        let event = Event::from_canonical(canonical).map_err(|e| e.to_string())?;
        if event.seq != seq {
            return Err(format!(
                "entry stored at seq {seq} holds an event for seq {}",
                event.seq
            ));
        }
        Ok(Self {
            seq,
            hash,
            sig,
            canonical: canonical.to_vec(),
            event,
        })
    }

    /// Leaf hash of this entry in the Merkle tree.
    pub fn leaf(&self) -> Hash {
        leaf_hash(&self.hash)
    }

    /// Whether this entry carries its own signature (otherwise a later one covers it).
    pub fn is_signed(&self) -> bool {
        self.sig != UNSIGNED
    }
}

/// Splits stored bytes into hash, signature and canonical bytes.
pub fn split_stored(bytes: &[u8]) -> Result<(Hash, [u8; 64], &[u8]), String> {
    if bytes.len() < STORED_PREFIX + 1 {
        return Err(format!("stored entry is {} bytes, too short", bytes.len()));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[..32]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&bytes[32..STORED_PREFIX]);
    Ok((hash, sig, &bytes[STORED_PREFIX..]))
}
