//! C2SP `tlog-checkpoint` bodies wrapped in C2SP `signed-note` Ed25519 signatures.
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key id ‖ signature)>
//! ```
//!
//! The key id is the first four bytes of `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)`.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte for Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;

/// A checkpoint: the log's origin, a tree size and the root at that size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log origin line (also the signing key's name).
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// RFC 6962 root at `size`.
    pub root: Hash,
}

/// Why a signed checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a well-formed note or checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// No signature from the expected key.
    #[error("no signature by key {0}")]
    NoSignature(String),
    /// A signature by the expected key that does not verify.
    #[error("bad signature by key {0}")]
    BadSignature(String),
}

/// The signed-note key id of an Ed25519 key with this name.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key string other signed-note tools accept: `name+hex(key id)+base64(0x01‖key)`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut raw = vec![ALG_ED25519];
    raw.extend_from_slice(key.as_bytes());
    format!(
        "{}+{}+{}",
        name,
        hex::encode(key_id(name, key)),
        B64.encode(raw)
    )
}

impl Checkpoint {
    /// The note body (the signed text).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The signed note: body, blank line, one signature line by `key` under the origin's name.
    pub fn sign(&self, key: &SigningKey) -> String {
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        let mut blob = key_id(&self.origin, &key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }

    /// Parses a signed note and checks the signature by `key` (named after the origin).
    pub fn open(note: &str, key: &VerifyingKey) -> Result<Self, NoteError> {
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or(NoteError::Malformed("no blank line"))?;
        let body = format!("{body}\n");
        let cp = Self::parse_body(&body)?;
        let want_id = key_id(&cp.origin, key);
        let mut found = false;
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Malformed("signature line"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line"))?;
            let blob = B64
                .decode(b64)
                .map_err(|_| NoteError::Malformed("signature base64"))?;
            if name != cp.origin || blob.len() != 68 || blob[..4] != want_id {
                continue;
            }
            found = true;
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::Malformed("signature length"))?;
            key.verify(body.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature(cp.origin.clone()))?;
        }
        if !note.ends_with('\n') {
            return Err(NoteError::Malformed("no final newline"));
        }
        if found {
            Ok(cp)
        } else {
            Err(NoteError::NoSignature(cp.origin))
        }
    }

    fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Malformed("origin"))?;
        let size_line = lines.next().ok_or(NoteError::Malformed("size"))?;
        // Canonical decimal only: no sign, no leading zeros.
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(NoteError::Malformed("size"));
        }
        let size = size_line
            .parse()
            .map_err(|_| NoteError::Malformed("size"))?;
        let root_line = lines.next().ok_or(NoteError::Malformed("root"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Malformed("root"))?;
        if B64.encode(root) != root_line {
            return Err(NoteError::Malformed("root"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9u8; 32])
    }

    #[test]
    fn sign_then_open() {
        let cp = Checkpoint {
            origin: "isnad.local/abc".into(),
            size: 12,
            root: [4u8; 32],
        };
        let note = cp.sign(&key());
        assert_eq!(Checkpoint::open(&note, &key().verifying_key()).unwrap(), cp);
    }

    #[test]
    fn any_edit_is_refused() {
        let cp = Checkpoint {
            origin: "isnad.local/abc".into(),
            size: 12,
            root: [4u8; 32],
        };
        let note = cp.sign(&key());
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(Checkpoint::open(&note, &other.verifying_key()).is_err());
        assert!(
            Checkpoint::open(&note.replace("\n12\n", "\n13\n"), &key().verifying_key()).is_err()
        );
        assert!(
            Checkpoint::open(&note.replace("\n12\n", "\n012\n"), &key().verifying_key()).is_err()
        );
        for i in 0..note.len() {
            let mut b = note.clone().into_bytes();
            b[i] ^= 0x20;
            if let Ok(s) = String::from_utf8(b) {
                assert!(
                    Checkpoint::open(&s, &key().verifying_key()).is_err(),
                    "flip at {i}"
                );
            }
        }
    }
}
