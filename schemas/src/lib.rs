//! Types that every isnad component agrees on, and nothing else: the event envelope, every event
//! payload with its version, the canonical byte encoding that the journal hashes and signs, the
//! OpenAI wire types the gateway speaks ([`openai`]) and the reasons it refuses a request
//! ([`RefusalCode`]).
//!
//! This crate performs no I/O. Two rules keep old journals readable forever:
//!
//! - a payload type, once released under a `(kind, version)` pair, never changes layout; a change
//!   is a new version (a new type), and the old type stays here;
//! - the envelope's canonical bytes start with [`ENVELOPE_FORMAT`], so a future envelope can be
//!   told apart from this one.
//!
//! Canonical bytes are rkyv archives with the format pinned by features (little endian, 32-bit
//! relative pointers, unaligned primitives), so they are identical on every platform and can be
//! read straight out of any buffer, aligned or not.

#[macro_use]
mod wire_enum;

mod event;
pub mod openai;
mod payloads;
mod refusal;

pub use event::{
    sha256_tagged, Event, EventId, EventJson, NewEvent, ENVELOPE_FORMAT, PAYLOAD_UNDECODED,
};
pub use payloads::*;
pub use refusal::RefusalCode;

/// Errors from encoding or decoding schema types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid archive of the expected type.
    #[error("invalid canonical bytes for {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// Serialising a value failed.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The envelope starts with a format byte this build does not know.
    #[error("unknown envelope format {0}")]
    UnknownFormat(u8),
    /// A JSON value does not match the payload type named by its kind and version.
    #[error("payload {kind} v{version}: {reason}")]
    Payload {
        /// Event kind.
        kind: String,
        /// Payload version.
        version: u16,
        /// Why it failed.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
