//! The node's Ed25519 signing key: made on first start, kept in a 0600 file, public half exported.

use std::{fs, io::Write as _, path::Path};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// File name of the private key inside the data directory.
pub const KEY_FILE: &str = "node.key";
/// File name of the exported public key inside the data directory.
pub const PUB_FILE: &str = "node.pub";

/// The node's signing identity.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

impl NodeKey {
    /// Wraps an existing key (tests, benchmarks, HSM-less imports).
    pub fn from_signing_key(signing: SigningKey) -> Self {
        Self { signing }
    }

    /// Loads `dir/node.key`, or makes a new key there (mode 0600) and exports `dir/node.pub`.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(KEY_FILE);
        let key = if path.exists() {
            let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let raw = B64
                .decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    Error::Key(format!("{} is not a base64 Ed25519 seed", path.display()))
                })?;
            Self {
                signing: SigningKey::from_bytes(&raw),
            }
        } else {
            let key = Self {
                signing: SigningKey::generate(&mut rand::rngs::OsRng),
            };
            write_private(&path, &format!("{}\n", B64.encode(key.signing.to_bytes())))?;
            key
        };
        let pub_path = dir.join(PUB_FILE);
        let exported = format!("{}\n", key.public_base64());
        if fs::read_to_string(&pub_path).ok().as_deref() != Some(exported.as_str()) {
            fs::write(&pub_path, exported).map_err(|e| Error::io(&pub_path, e))?;
        }
        Ok(key)
    }

    /// The signing key.
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The public key.
    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Base64 of the public key, as exported in `node.pub`.
    pub fn public_base64(&self) -> String {
        B64.encode(self.verifying().as_bytes())
    }

    /// Short stable node id: first 8 bytes of SHA-256 of the public key, hex.
    pub fn node_id(&self) -> String {
        node_id(&self.verifying())
    }
}

/// Node id of a public key.
pub fn node_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Parses a base64 public key (the contents of `node.pub`).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey> {
    B64.decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| Error::Key("not a base64 Ed25519 public key".into()))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::File::create_new(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeKey::load_or_create(dir.path()).unwrap();
        let b = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_base64(), b.public_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let exported = fs::read_to_string(dir.path().join(PUB_FILE)).unwrap();
        assert_eq!(parse_public_key(&exported).unwrap(), a.verifying());
    }
}
