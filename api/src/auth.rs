//! The bootstrap admin token: from configuration or `ISNAD_ADMIN_KEY`, else generated on first
//! start and printed once. Only its SHA-256 is kept (in `admin.sha256`, mode 0600).

use std::path::Path;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::RngCore as _;

use crate::server::sha256;

/// File in the data directory holding the hex SHA-256 of the generated admin token.
pub const ADMIN_HASH_FILE: &str = "admin.sha256";

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// A token check that never holds the token itself.
pub struct AdminToken {
    hash: [u8; 32],
}

impl AdminToken {
    /// From an explicit token (config or environment).
    pub fn from_token(token: &str) -> Self {
        Self {
            hash: sha256(token.as_bytes()),
        }
    }

    /// The configured token, or the one generated earlier in `data_dir`, or a new one (printed
    /// once on standard error, never logged).
    pub fn resolve(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(t) = configured.filter(|t| !t.is_empty()) {
            return Ok(Self::from_token(t));
        }
        let path = data_dir.join(ADMIN_HASH_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let hash = hex::decode(text.trim())
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| anyhow::anyhow!("{} is not a hex SHA-256", path.display()))?;
            return Ok(Self { hash });
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = format!("isnad_sk_{}", URL_SAFE_NO_PAD.encode(raw));
        let me = Self::from_token(&token);
        write_private(&path, &format!("{}\n", hex::encode(me.hash)))?;
        eprintln!("isnad: generated the admin API key (shown only this once; set ISNAD_ADMIN_KEY to choose your own):\n  {token}");
        Ok(me)
    }

    /// Constant-time comparison of a presented token's hash.
    pub fn matches(&self, token: &str) -> bool {
        let h = sha256(token.as_bytes());
        h.iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = AdminToken::resolve(None, dir.path()).unwrap();
        let b = AdminToken::resolve(None, dir.path()).unwrap();
        assert_eq!(a.hash, b.hash);
        assert!(!a.matches("wrong"));
        let c = AdminToken::resolve(Some("s3cret"), dir.path()).unwrap();
        assert!(c.matches("s3cret"));
    }
}
