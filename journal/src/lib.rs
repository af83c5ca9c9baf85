//! The journal: isnad's append-only, hash-chained, signed event log, and the only crate that opens
//! the log's storage.
//!
//! - [`Journal`]: group-committed durable appends (idempotent by event id), range reads, tail
//!   subscriptions served from memory with catch-up from disk, persisted consumer cursors.
//! - Every entry is `SHA-256(tag ‖ seq ‖ prev_hash ‖ canonical event bytes)`, signed with the node's
//!   Ed25519 key ([`keys`]), and a leaf of an RFC 6962 Merkle tree ([`merkle`]).
//! - C2SP `tlog-checkpoint` signed notes ([`checkpoint`]) every N entries, every T ms and at
//!   shutdown; inclusion and consistency proofs.
//! - Offline verification ([`verify`]) and export ([`export`]) for auditors.
//!
//! Storage sits behind [`LogStore`]: [`SegmentStore`] on disk (entries in segment files, metadata in
//! sled), [`SledStore`] for logs written before it, [`MemStore`] in memory; all three pass the same
//! conformance suite.

pub mod checkpoint;
mod checkpoint_log;
pub mod entry;
mod error;
pub mod export;
mod ids;
mod journal;
pub mod keys;
pub mod merkle;
pub mod segments;
pub mod store;
mod tree_files;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use entry::Entry;
pub use error::{Error, Result};
pub use journal::{
    open_store, open_store_read_only, store_path, Journal, Options, Receipt, SavedState,
    Subscription, Watermark,
};
pub use keys::NodeKey;
pub use merkle::Hash;
pub use segments::{SegmentOptions, SegmentStore};
pub use store::{LogStore, MemStore, SledStore, TornTail};
