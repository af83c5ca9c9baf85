//! Configuration: one TOML file (optional; every setting has a built-in default), then environment
//! and command-line overrides. Unknown keys are refused with their path.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Journal.
    pub journal: JournalConfig,
    /// In-boundary OpenAI-compatible upstreams, by name (`[providers.NAME]`).
    pub providers: std::collections::BTreeMap<String, isnad_inference::registry::ProviderConfig>,
    /// Models (`[[models]]`).
    pub models: Vec<isnad_inference::registry::ModelConfig>,
    /// Routing.
    pub routing: RoutingConfig,
    /// In-process models: where they are, threads, device, batching.
    pub local: isnad_inference::local::runtime::LocalConfig,
    /// API keys besides the admin token (`[[keys]]`).
    pub keys: Vec<crate::auth::KeyConfig>,
    /// The request path's policy stages (`[pipeline]`).
    pub pipeline: isnad_pipeline::policy::PolicyConfig,
}

/// `[routing]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Model that `auto-router` picks (default: the first chat model).
    pub default_model: Option<String>,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Static admin token (until keys and roles exist). Prefer `ISNAD_ADMIN_KEY`.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time limit to a response's headers, in milliseconds.
    pub request_timeout_ms: u64,
    /// Gateway requests served at once; more are shed with 503 and `Retry-After`.
    pub max_concurrent_requests: usize,
    /// TLS 1.3 (and optional mTLS). Without it, plain HTTP is served on loopback addresses only,
    /// unless `plain_http = true`.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy, say).
    pub plain_http: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 120_000,
            max_concurrent_requests: 1024,
            tls: None,
            plain_http: false,
        }
    }
}

/// `[journal]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Checkpoint origin (fixed when the log is created); default `isnad.local/<node id>`.
    pub origin: Option<String>,
    /// Checkpoint after this many entries.
    pub checkpoint_every: u64,
    /// Checkpoint after this many milliseconds with new entries.
    pub checkpoint_interval_ms: u64,
    /// sled's page cache, in MiB (appends need little; whole-log scans like more).
    pub cache_mb: u64,
    /// Size of a log segment file, in MiB: a segment is closed and the next begun past it.
    pub segment_mib: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            origin: None,
            checkpoint_every: 1024,
            checkpoint_interval_ms: 1000,
            cache_mb: 12,
            segment_mib: 64,
        }
    }
}

impl JournalConfig {
    /// Journal options from this section.
    pub fn options(&self) -> isnad_journal::Options {
        isnad_journal::Options {
            origin: self.origin.clone(),
            checkpoint_every: self.checkpoint_every.max(1),
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms.max(1)),
            cache_bytes: self.cache_mb.max(1) * 1024 * 1024,
            segment_bytes: self.segment_mib.max(1) * 1024 * 1024,
            ..isnad_journal::Options::default()
        }
    }
}

/// A configuration error, naming the file and key path.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file (or `built-in defaults`).
    pub file: String,
    /// What is wrong, with the key path.
    pub message: String,
}

impl Config {
    /// The model registry (and with it the egress policy) from `[providers]`, `[[models]]` and
    /// `[routing]`.
    pub fn registry(&self) -> Result<isnad_inference::registry::Registry, ConfigError> {
        // With no models configured, the gateway serves the in-process defaults.
        let defaults;
        let models = if self.models.is_empty() && self.providers.is_empty() {
            defaults = isnad_inference::registry::Registry::default_local_models();
            &defaults
        } else {
            &self.models
        };
        isnad_inference::registry::Registry::load(
            &self.providers,
            models,
            self.routing.default_model.as_deref(),
            &self.local,
        )
        .map_err(|e| ConfigError {
            file: "configuration".into(),
            message: e.to_string(),
        })
    }

    /// Loads `path` if given, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError {
            file: file.clone(),
            message,
        })?;
        config.pipeline.check().map_err(|e| ConfigError {
            file,
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Parses TOML text; errors name the key path and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// `sha256:` of the effective configuration, secrets excluded (journaled in `node.started`).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(json)))
    }
}

/// Where the server keeps its state.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The data directory.
    pub data_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse(
            "[server]\nlisten = \"0.0.0.0:9000\"\n[journal]\ncheckpoint_every = 10\n",
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.journal.checkpoint_every, 10);
        assert_eq!(c.journal.checkpoint_interval_ms, 1000);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = Config::parse("[journal]\ncheckpoint_evry = 10\n").unwrap_err();
        assert!(err.contains("checkpoint_evry"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn hash_excludes_the_admin_token() {
        let mut a = Config::default();
        let b = a.clone();
        a.server.admin_token = Some("secret".into());
        assert_eq!(a.hash(), b.hash());
        assert!(!serde_json::to_string(&a).unwrap().contains("secret"));
    }
}
