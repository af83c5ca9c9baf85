//! Credentials: the bootstrap admin token (from configuration or `ISNAD_ADMIN_KEY`, else
//! generated on first start and printed once; only its SHA-256 is kept, in `admin.sha256`, mode
//! 0600), and the teams and keys of access control ([`isnad_pipeline::access`]): keys issued
//! through the admin API and the `[[keys]]` of the configuration, each known only by its
//! SHA-256, with a role, a team and a scope.

use std::{net::IpAddr, path::Path, sync::Arc};

use axum::http::HeaderMap;
use ipnet::IpNet;
use isnad_journal::Journal;
use isnad_pipeline::{
    access::{Access, ConfigKey, Denied, LimitDefaults, RequestLimits},
    policy::{ModelCatalog, Residency, AUTO_ROUTER},
};
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

pub use isnad_pipeline::access::{Principal, Role};

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

/// Every credential the gateway accepts: the bootstrap admin token, and the teams and keys of
/// [`Access`] (managed keys and the `[[keys]]` of the configuration, folded from the journal).
pub struct Credentials {
    admin: AdminToken,
    admin_principal: Arc<Principal>,
    access: Arc<Access>,
    trusted_proxies: Arc<[IpNet]>,
    limits: Arc<RequestLimits>,
}

/// `[[keys]]` checked against the models in `catalog` and the admin token: what access
/// control folds. Errors name the key's path (`keys[i].field`).
pub fn check_keys(
    admin: &AdminToken,
    keys: &[KeyConfig],
    catalog: &dyn ModelCatalog,
) -> Result<Vec<ConfigKey>, String> {
    let mut out: Vec<ConfigKey> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        if k.name.is_empty() || ["admin", "system", "config"].contains(&k.name.as_str()) {
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
        let team = k.team.clone().filter(|t| !t.is_empty());
        if let Some(t) = &team {
            if !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "{}: letters, digits, `-`, `_` and `.` only",
                    at("team")
                ));
            }
        }
        if out.iter().any(|o| o.sha256 == hash) {
            return Err(format!("{}: another key has the same hash", at("sha256")));
        }
        out.push(ConfigKey {
            label: k.name.clone(),
            sha256: hash,
            role: k.role,
            models: k.models.clone(),
            local_only: k.residency == Some(Residency::Local),
            team,
        });
    }
    Ok(out)
}

impl Credentials {
    /// The admin token and the keys folded from `journal`, with the configured keys journaled
    /// where the log does not have them yet (see [`Access::sync_config`]).
    pub async fn open(
        admin: AdminToken,
        keys: &[KeyConfig],
        catalog: &dyn ModelCatalog,
        journal: Journal,
    ) -> Result<Self, String> {
        let config_keys = check_keys(&admin, keys, catalog)?;
        let access =
            Access::open(journal).map_err(|e| format!("reading keys from the journal: {e}"))?;
        access
            .sync_config(&config_keys)
            .await
            .map_err(|e| format!("journaling the configured keys: {e}"))?;
        Ok(Self::with_access(admin, Arc::new(access)))
    }

    /// Over an open [`Access`].
    pub fn with_access(admin: AdminToken, access: Arc<Access>) -> Self {
        Self {
            admin,
            admin_principal: Principal::admin(),
            access,
            trusted_proxies: Arc::from([]),
            limits: Arc::new(RequestLimits::new(LimitDefaults::default())),
        }
    }

    /// Request limits per key and per address with these defaults (`[limits]`).
    pub fn limit(mut self, defaults: LimitDefaults) -> Self {
        self.limits = Arc::new(RequestLimits::new(defaults));
        self
    }

    /// The request limiters.
    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// A principal's key limits: its own, with the configured defaults where it sets none.
    pub fn key_limits(&self, p: &Principal) -> isnad_pipeline::access::Limits {
        p.limits.or(self.limits.defaults().key)
    }

    /// Proxies whose `X-Forwarded-For` is believed (`[server] trusted_proxies`).
    pub fn trust_proxies(mut self, nets: Vec<IpNet>) -> Self {
        self.trusted_proxies = nets.into();
        self
    }

    /// Teams and keys.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the address
    /// the proxies' `X-Forwarded-For` names (the right-most one no trusted proxy added).
    pub fn client_addr(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let trusted = |a: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(a));
        let peer = peer?;
        if !trusted(&peer) {
            return Some(peer);
        }
        let mut client = peer;
        for v in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(v) = v.to_str() else {
                return Some(client);
            };
            for hop in v.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(a) => {
                        client = a;
                        if !trusted(&a) {
                            return Some(a);
                        }
                    }
                    // Garbage from an untrusted hop: stop at the last address we can vouch for.
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }

    /// The principal of a request's `Authorization: Bearer` key sent from `addr`, or why it is
    /// refused.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        addr: Option<IpAddr>,
    ) -> Result<Arc<Principal>, Denied> {
        let token = bearer(headers).ok_or(Denied::Unknown)?;
        if self.admin.matches(token) {
            return Ok(self.admin_principal.clone());
        }
        self.access.authenticate(token, addr)
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

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn keys_authenticate_by_hash_and_carry_role_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open_dir(dir.path(), isnad_journal::Options::default()).unwrap();
        let registry = isnad_inference::registry::Registry::default();
        let creds = Credentials::open(
            AdminToken::from_token("root"),
            &[key("audit-desk", "k1")],
            &registry,
            journal,
        )
        .await
        .unwrap();
        let p = creds.authenticate(&headers("k1"), None).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("audit-desk", Role::Auditor));
        assert!(p.scope.local_only && !p.role.may_infer() && p.role.may_audit());
        assert_eq!(
            creds.authenticate(&headers("root"), None).unwrap().role,
            Role::Admin
        );
        assert!(creds.authenticate(&headers("k2"), None).is_err());
        assert!(creds.authenticate(&HeaderMap::new(), None).is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let creds = |proxies: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            let journal = Journal::open_dir(dir.path(), isnad_journal::Options::default()).unwrap();
            Credentials::with_access(
                AdminToken::from_token("root"),
                Arc::new(Access::open(journal).unwrap()),
            )
            .trust_proxies(proxies.iter().map(|p| p.parse().unwrap()).collect())
        };
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // No trusted proxy: the peer, whatever the header says.
        assert_eq!(creds(&[]).client_addr(&h, ip("10.0.0.1")), ip("10.0.0.1"));
        // Trusted proxies: the right-most address none of them is, not the spoofable left-most.
        assert_eq!(
            creds(&["10.0.0.0/8"]).client_addr(&h, ip("10.0.0.1")),
            ip("203.0.113.9")
        );
        // A peer outside the trusted set is the client even if it sends the header.
        assert_eq!(
            creds(&["10.0.0.0/8"]).client_addr(&h, ip("198.51.100.1")),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn bad_keys_are_refused_with_their_path() {
        let registry = isnad_inference::registry::Registry::default();
        let admin = AdminToken::from_token("root");
        let mut bad = key("a", "k1");
        bad.sha256 = "xyz".into();
        let e = check_keys(&admin, &[bad], &registry).err().unwrap();
        assert!(e.contains("keys[0].sha256"), "{e}");
        let e = check_keys(&admin, &[key("a", "k1"), key("b", "k1")], &registry)
            .err()
            .unwrap();
        assert!(
            e.contains("keys[1].sha256") && e.contains("same hash"),
            "{e}"
        );
        let mut unknown = key("a", "k1");
        unknown.models = Some(vec!["nope".into()]);
        let e = check_keys(&admin, &[unknown], &registry).err().unwrap();
        assert!(e.contains("keys[0].models[0]") && e.contains("nope"), "{e}");
        let e = check_keys(&admin, &[key("admin", "k1")], &registry)
            .err()
            .unwrap();
        assert!(e.contains("keys[0].name"), "{e}");
        let e = check_keys(&admin, &[key("x", "root")], &registry)
            .err()
            .unwrap();
        assert!(e.contains("admin token"), "{e}");
    }
}
