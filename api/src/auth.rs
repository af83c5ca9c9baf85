//! Credentials: the bootstrap admin token (from configuration or `ISNAD_ADMIN_KEY`, else
//! generated on first start and printed once; only its SHA-256 is kept, in `admin.sha256`, mode
//! 0600) and the API keys of `[[keys]]`, each known only by its SHA-256, with a role and a scope.

use std::{collections::HashMap, path::Path, sync::Arc};

use isnad_pipeline::policy::{ModelCatalog, Residency, Scope, AUTO_ROUTER};
use serde::{Deserialize, Serialize};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::RngCore as _;

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

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

/// What a key may do (the roles of DESIGN.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its own team's keys and policy, and inference.
    Operator,
    /// Inference, RAG and uploads.
    #[default]
    Member,
    /// The journal and its proofs; no inference.
    Auditor,
}

impl Role {
    /// `admin`, `operator`, `member` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Member => "member",
            Self::Auditor => "auditor",
        }
    }

    /// Whether the role may call models (chat, embeddings).
    pub fn may_infer(self) -> bool {
        self != Self::Auditor
    }

    /// Whether the role may read the activity journal and its proofs.
    pub fn may_audit(self) -> bool {
        matches!(self, Self::Admin | Self::Auditor)
    }
}

/// `[[keys]]`: an API key known by its SHA-256 (the key itself is never in the file).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Who uses the key; journaled as the actor of its requests.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Role.
    #[serde(default)]
    pub role: Role,
    /// Model ids the key may use (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `local`: the key's data never leaves the boundary; external models are routed around or
    /// refused with 451.
    #[serde(default)]
    pub residency: Option<Residency>,
    /// The team the key belongs to: journaled with its requests, and what per-team policy and
    /// tenancy key on.
    #[serde(default)]
    pub team: Option<String>,
}

/// Who a request comes from, once its key is checked.
#[derive(Debug)]
pub struct Principal {
    /// Actor name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Models and residency it is held to.
    pub scope: Scope,
    /// Its team, if it has one.
    pub team: Option<String>,
}

/// Every credential the gateway accepts.
pub struct Credentials {
    admin: AdminToken,
    admin_principal: Arc<Principal>,
    keys: HashMap<[u8; 32], Arc<Principal>>,
}

impl Credentials {
    /// The admin token and the configured keys, checked against the models in `catalog`.
    /// Errors name the key's path (`keys[i].field`).
    pub fn new(
        admin: AdminToken,
        keys: &[KeyConfig],
        catalog: &dyn ModelCatalog,
    ) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let at = |field: &str| format!("keys[{i}].{field}");
            if k.name.is_empty() || ["admin", "system"].contains(&k.name.as_str()) {
                return Err(format!("{}: `{}` is empty or reserved", at("name"), k.name));
            }
            let hash = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| format!("{}: not a hex SHA-256 (64 hex digits)", at("sha256")))?;
            if hash == admin.hash {
                return Err(format!("{}: this is the admin token's hash", at("sha256")));
            }
            for (j, m) in k.models.iter().flatten().enumerate() {
                if m != AUTO_ROUTER && catalog.model(m).is_none() {
                    return Err(format!("{}: no model `{m}`", at(&format!("models[{j}]"))));
                }
            }
            let principal = Principal {
                name: k.name.clone(),
                role: k.role,
                scope: Scope {
                    models: k.models.as_ref().map(|ms| ms.clone().into()),
                    local_only: k.residency == Some(Residency::Local),
                },
                team: k.team.clone().filter(|t| !t.is_empty()),
            };
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(format!("{}: another key has the same hash", at("sha256")));
            }
        }
        Ok(Self {
            admin,
            admin_principal: Arc::new(Principal {
                name: "admin".into(),
                role: Role::Admin,
                scope: Scope::default(),
                team: None,
            }),
            keys: by_hash,
        })
    }

    /// The principal of a request's `Authorization: Bearer` key, if it is one of ours.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap) -> Option<Arc<Principal>> {
        let token = bearer(headers)?;
        if self.admin.matches(token) {
            return Some(self.admin_principal.clone());
        }
        // A lookup by SHA-256: timing reveals nothing usable about the key itself.
        self.keys.get(&sha256(token.as_bytes())).cloned()
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

    fn key(name: &str, secret: &str) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            sha256: hex::encode(sha256(secret.as_bytes())),
            role: Role::Auditor,
            models: None,
            residency: Some(Residency::Local),
            team: None,
        }
    }

    fn headers(token: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_authenticate_by_hash_and_carry_role_and_scope() {
        let registry = isnad_inference::registry::Registry::default();
        let creds = Credentials::new(
            AdminToken::from_token("root"),
            &[key("audit-desk", "k1")],
            &registry,
        )
        .unwrap();
        let p = creds.authenticate(&headers("k1")).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("audit-desk", Role::Auditor));
        assert!(p.scope.local_only && !p.role.may_infer() && p.role.may_audit());
        assert_eq!(
            creds.authenticate(&headers("root")).unwrap().role,
            Role::Admin
        );
        assert!(creds.authenticate(&headers("k2")).is_none());
        assert!(creds.authenticate(&axum::http::HeaderMap::new()).is_none());
    }

    #[test]
    fn bad_keys_are_refused_with_their_path() {
        let registry = isnad_inference::registry::Registry::default();
        let admin = || AdminToken::from_token("root");
        let mut bad = key("a", "k1");
        bad.sha256 = "xyz".into();
        let e = Credentials::new(admin(), &[bad], &registry).err().unwrap();
        assert!(e.contains("keys[0].sha256"), "{e}");
        let e = Credentials::new(admin(), &[key("a", "k1"), key("b", "k1")], &registry)
            .err()
            .unwrap();
        assert!(
            e.contains("keys[1].sha256") && e.contains("same hash"),
            "{e}"
        );
        let mut unknown = key("a", "k1");
        unknown.models = Some(vec!["nope".into()]);
        let e = Credentials::new(admin(), &[unknown], &registry)
            .err()
            .unwrap();
        assert!(e.contains("keys[0].models[0]") && e.contains("nope"), "{e}");
        let e = Credentials::new(admin(), &[key("admin", "k1")], &registry)
            .err()
            .unwrap();
        assert!(e.contains("keys[0].name"), "{e}");
        let e = Credentials::new(admin(), &[key("x", "root")], &registry)
            .err()
            .unwrap();
        assert!(e.contains("admin token"), "{e}");
    }
}
