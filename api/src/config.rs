//! Configuration: one TOML file (optional; every setting has a built-in default), then environment
//! and command-line overrides. [`Config::read`] parses it (unknown keys and bad types are refused
//! with their line and key path); [`Config::validate`] checks what the TOML cannot (providers,
//! models, fallbacks, local models present, `[[keys]]`, `[pipeline]`) without loading a model or
//! opening the data directory; [`Config::load`] does both, for `serve`; [`Config::check`] adds the
//! listen address and TLS files and says what would be served (`isnad config check`). Every error
//! is one [`ConfigError`]: `isnad.toml:14: models[2].fallbacks[0]: unknown model "x"`.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use isnad_inference::registry::{CheckedRegistry, ModelConfig, ModelKind, Registry, Residency};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{auth::AdminToken, tls::ClientAuth};

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
    /// How budgets hold (`[budgets]`); the budgets themselves are set through the admin API.
    pub budgets: BudgetsConfig,
    /// Default rate limits (`[limits]`); a key's or a team's own are set through the admin API.
    pub limits: LimitsConfig,
    /// The file it came from, so that errors found after parsing can name their line.
    #[serde(skip)]
    source: Source,
}

/// A configuration's file name and text.
#[derive(Clone, Debug)]
struct Source {
    file: String,
    text: String,
}

impl Default for Source {
    fn default() -> Self {
        Self {
            file: "built-in defaults".into(),
            text: String::new(),
        }
    }
}

impl Source {
    /// An error whose message starts with the key path it is about (`models[1].id: ...`, as the
    /// registry, the credentials and TLS word theirs), with the line of that key.
    fn error(&self, message: &str) -> ConfigError {
        let (key, reason) = split_key(message);
        ConfigError {
            file: self.file.clone(),
            line: key.as_deref().and_then(|k| locate(&self.text, k)),
            key,
            reason,
        }
    }

    /// A TOML syntax, type or unknown-key error, at the line toml points to.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|span| line_of_offset(&self.text, span.start));
        ConfigError {
            file: self.file.clone(),
            line,
            key: line.and_then(|l| key_at(&self.text, l)),
            reason: e.message().trim().to_owned(),
        }
    }
}

/// `[routing]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Model that `auto-router` picks (default: the first chat model).
    pub default_model: Option<String>,
    /// The routing and guardrail policy file (YAML, CEL conditions), relative to this file's
    /// directory. Without one, the built-in policy: national IDs, IBANs, cards and credentials
    /// stay inside the boundary.
    pub policy: Option<std::path::PathBuf>,
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
    /// Addresses or CIDR blocks of reverse proxies whose `X-Forwarded-For` is believed: the
    /// client address that keys' allowlists (and per-address limits) check is then the one
    /// those proxies forwarded. Empty (the default): always the connection's peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
            trusted_proxies: vec![],
        }
    }
}

/// `[budgets]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Completion tokens held for a request that sets no `max_tokens` (the bound by which a
    /// budget can be overrun: see the README).
    pub default_max_tokens: u64,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            default_max_tokens: 4096,
        }
    }
}

/// `[limits]`: the rate limits of every key that sets none of its own, and of every client
/// address. Unset means unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per minute per key.
    pub key_requests_per_minute: Option<u32>,
    /// Requests at once per key on top of the average (default: the per-minute rate).
    pub key_burst: Option<u32>,
    /// Tokens per UTC minute per key.
    pub key_tokens_per_minute: Option<u64>,
    /// Tokens per UTC day per key.
    pub key_tokens_per_day: Option<u64>,
    /// Requests per minute per client address, checked before the key.
    pub address_requests_per_minute: Option<u32>,
    /// Requests at once per client address (default: the per-minute rate).
    pub address_burst: Option<u32>,
}

impl LimitsConfig {
    /// The defaults access control applies.
    pub fn defaults(&self) -> isnad_pipeline::access::LimitDefaults {
        isnad_pipeline::access::LimitDefaults {
            key: isnad_pipeline::access::Limits {
                requests_per_minute: self.key_requests_per_minute.filter(|&n| n > 0),
                burst: self.key_burst.filter(|&n| n > 0),
                tokens_per_minute: self.key_tokens_per_minute,
                tokens_per_day: self.key_tokens_per_day,
            },
            address_requests_per_minute: self.address_requests_per_minute.filter(|&n| n > 0),
            address_burst: self.address_burst.filter(|&n| n > 0),
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

/// A configuration error: the file, the line and key path when known, and what is wrong.
/// Displayed as `isnad.toml:14: models[2].fallbacks[0]: unknown model "x"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file (or `built-in defaults`, or `configuration` when the file is not at hand).
    pub file: String,
    /// Line in the file, from 1.
    pub line: Option<usize>,
    /// Key path, e.g. `models[2].fallbacks[0]`.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// A routing policy error, in the configuration's error shape (its own file, line and key).
fn policy_error(e: isnad_pipeline::policy::PolicyError) -> ConfigError {
    ConfigError {
        file: e.file,
        line: Some(e.line),
        key: (!e.key.is_empty()).then_some(e.key),
        reason: format!("column {}: {}", e.column, e.reason),
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about the configuration found where its file is not at hand; `message` starts
    /// with the key path (`keys[1].sha256: ...`), as the registry and the credentials word theirs.
    pub fn in_configuration(message: String) -> Self {
        let (key, reason) = split_key(&message);
        Self {
            file: "configuration".into(),
            line: None,
            key,
            reason,
        }
    }
}

/// What a configuration that passed [`Config::check`] would serve.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The file checked (or `built-in defaults`).
    pub file: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Whether TLS 1.3 is served (else plain HTTP).
    pub tls: bool,
    /// With TLS: whether clients present certificates.
    pub client_auth: Option<ClientAuth>,
    /// Upstream providers by name, with their base URL.
    pub providers: BTreeMap<String, String>,
    /// The models, in configuration order.
    pub models: Vec<ModelSummary>,
    /// The chat model `auto-router` picks.
    pub default_model: Option<String>,
    /// The request path's policy stages, in order.
    pub request_stages: Vec<String>,
    /// How many `[[keys]]` there are of each role (besides the admin token).
    pub keys: BTreeMap<String, usize>,
}

/// One model of a [`Summary`].
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    /// Id clients use.
    pub id: String,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// Provider name (`local`: in-process).
    pub provider: String,
    /// Inside or outside the boundary.
    pub residency: Residency,
    /// Models tried, in order, when this one fails.
    pub fallbacks: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: OK", self.file)?;
        writeln!(f, "listen: {}", self.listen)?;
        match self.client_auth {
            Some(auth) if self.tls => writeln!(
                f,
                "tls: on (TLS 1.3; client certificates: {})",
                match auth {
                    ClientAuth::None => "none",
                    ClientAuth::Optional => "optional",
                    ClientAuth::Required => "required",
                }
            )?,
            _ => writeln!(f, "tls: off (plain HTTP)")?,
        }
        for (name, url) in &self.providers {
            writeln!(f, "provider {name}: {url}")?;
        }
        writeln!(f, "models:")?;
        for m in &self.models {
            write!(
                f,
                "  {} ({}, provider {}, {})",
                m.id,
                m.kind.as_str(),
                m.provider,
                m.residency.as_str()
            )?;
            if !m.fallbacks.is_empty() {
                write!(f, ", fallbacks: {}", m.fallbacks.join(", "))?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "default chat model: {}",
            self.default_model.as_deref().unwrap_or("none")
        )?;
        writeln!(f, "request stages: {}", self.request_stages.join(", "))?;
        if self.keys.is_empty() {
            write!(f, "keys: none besides the admin token")
        } else {
            let by_role: Vec<String> = self
                .keys
                .iter()
                .map(|(role, n)| format!("{n} {role}"))
                .collect();
            write!(f, "keys: {}", by_role.join(", "))
        }
    }
}

impl Config {
    /// The model configurations served: `[[models]]`, or with no models and no providers
    /// configured, the in-process defaults.
    fn model_configs(&self) -> Cow<'_, [ModelConfig]> {
        if self.models.is_empty() && self.providers.is_empty() {
            Cow::Owned(Registry::default_local_models())
        } else {
            Cow::Borrowed(&self.models)
        }
    }

    /// The model registry (and with it the egress policy) from `[providers]`, `[[models]]` and
    /// `[routing]`: local models are verified and started.
    pub fn registry(&self) -> Result<Registry, ConfigError> {
        Registry::load(
            &self.providers,
            &self.model_configs(),
            self.routing.default_model.as_deref(),
            &self.local,
        )
        .map_err(|e| self.source.error(&e.to_string()))
    }

    /// Reads `path` if given (else the built-in defaults) and runs every check of
    /// [`Config::validate`], so that `serve` refuses a bad configuration before it opens anything.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Self::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses `path` if given, else the built-in defaults; nothing past the TOML
    /// (types and unknown keys) is checked.
    pub fn read(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            reason: e.to_string(),
        })?;
        Self::from_toml(&file, &text)
    }

    /// Parses TOML text (errors name the line and key path); the configuration of no file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml("configuration", text)
    }

    /// Parses TOML text read from `file`; errors name `file`, the line and the key path.
    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let source = Source {
            file: file.to_owned(),
            text: text.to_owned(),
        };
        let mut config: Self = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        config.source = source;
        Ok(config)
    }

    /// Every check past the TOML that does not depend on the command line: `[pipeline]`, the
    /// registry (providers and their API key variables, models, fallbacks, the default model;
    /// local models' manifests and files present, not hashed) and `[[keys]]`. Loads no model,
    /// opens no data directory.
    pub fn validate(&self) -> Result<CheckedRegistry, ConfigError> {
        self.pipeline
            .check()
            .map_err(|e| self.source.error(&e.to_string()))?;
        let registry = Registry::check(
            &self.providers,
            &self.model_configs(),
            self.routing.default_model.as_deref(),
            &self.local,
        )
        .map_err(|e| self.source.error(&e.to_string()))?;
        self.check_keys(&registry)?;
        let policy = self.routing_policy()?;
        let exists = |id: &str| registry.models().iter().any(|m| m.id == id);
        policy.check_models(&exists).map_err(policy_error)?;
        Ok(registry)
    }

    /// The routing policy `[routing] policy` names (read and checked: CEL conditions compiled
    /// and dry-run), else the built-in one. Models are checked by [`Config::validate`].
    pub fn routing_policy(&self) -> Result<isnad_pipeline::policy::RoutingPolicy, ConfigError> {
        let Some(path) = &self.routing.policy else {
            return Ok(isnad_pipeline::policy::RoutingPolicy::builtin());
        };
        let path = match std::path::Path::new(&self.source.file).parent() {
            Some(dir) if path.is_relative() && self.source.file != Source::default().file => {
                dir.join(path)
            }
            _ => path.clone(),
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: self.source.file.clone(),
            line: locate(&self.source.text, "routing.policy"),
            key: Some("routing.policy".into()),
            reason: format!("{file}: {e}"),
        })?;
        isnad_pipeline::policy::RoutingPolicy::parse(&text, &file).map_err(policy_error)
    }

    /// `[[keys]]` as [`crate::auth::check_keys`] checks them, against the checked models (it takes a
    /// loaded registry, so the model lists are checked here).
    fn check_keys(&self, registry: &CheckedRegistry) -> Result<(), ConfigError> {
        // Without a configured admin token, serve reads or generates one in the data directory,
        // which a check does not open: a random token stands in, that no key's hash matches.
        let admin = match self.server.admin_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => AdminToken::from_token(t),
            None => AdminToken::from_token(&hex::encode(rand::random::<[u8; 32]>())),
        };
        crate::auth::check_keys(&admin, &self.keys, registry)
            .map(drop)
            .map_err(|message| self.source.error(&message))
    }

    /// Every check `serve` makes before it opens the data directory, without side effects:
    /// [`Config::validate`], then the listen address against TLS (plain HTTP only on loopback
    /// unless `server.plain_http`) and the TLS files. Returns what would be served.
    pub fn check(&self) -> Result<Summary, ConfigError> {
        let registry = self.validate()?;
        let listen = self.server.listen;
        match &self.server.tls {
            Some(t) => {
                crate::tls::server_config(t).map_err(|e| self.source.error(&format!("{e:#}")))?;
            }
            None if listen.ip().is_loopback() || self.server.plain_http => {}
            None => {
                return Err(self.source.error(&format!(
                    "server.listen: refusing plain HTTP on {listen}: configure [server.tls], \
                     listen on a loopback address, or set server.plain_http = true"
                )))
            }
        }
        let mut keys = BTreeMap::new();
        for k in &self.keys {
            *keys.entry(k.role.as_str().to_owned()).or_insert(0) += 1;
        }
        Ok(Summary {
            file: self.source.file.clone(),
            listen,
            tls: self.server.tls.is_some(),
            client_auth: self.server.tls.as_ref().map(|t| t.client_auth),
            providers: self
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), p.base_url.clone()))
                .collect(),
            models: registry
                .models()
                .iter()
                .map(|m| ModelSummary {
                    id: m.id.clone(),
                    kind: m.kind,
                    provider: m.provider.clone(),
                    residency: m.residency,
                    fallbacks: m.fallbacks.clone(),
                })
                .collect(),
            default_model: registry.default_chat().map(|m| m.id.clone()),
            request_stages: self.pipeline.request_stages.clone(),
            keys,
        })
    }

    /// `sha256:` of the effective configuration, secrets excluded (journaled in `node.started`).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(json)))
    }
}

/// Splits `key.path: reason` into the key path and the reason; a message that does not start
/// with a key path is all reason.
fn split_key(message: &str) -> (Option<String>, String) {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
    };
    match message.split_once(": ") {
        Some((key, reason)) if is_key(key) => (Some(key.to_owned()), reason.to_owned()),
        _ => (None, message.to_owned()),
    }
}

/// One segment of a key path: a name and, for an element of an array, its index.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    name: String,
    index: Option<usize>,
}

fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for (k, s) in path.iter().enumerate() {
        if k > 0 {
            out.push('.');
        }
        out.push_str(&s.name);
        if let Some(i) = s.index {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// `models[2].fallbacks[0]` as segments.
fn parse_path(key: &str) -> Vec<Segment> {
    key.split('.')
        .map(|part| match part.split_once('[') {
            Some((name, rest)) => Segment {
                name: name.to_owned(),
                index: rest.split(']').next().and_then(|i| i.parse().ok()),
            },
            None => Segment {
                name: part.to_owned(),
                index: None,
            },
        })
        .collect()
}

/// What a line of TOML text is, for locating keys.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LineKind {
    /// Blank, a comment, or not understood.
    Other,
    /// Inside a value begun on an earlier line (a multi-line array, table or string).
    Continuation,
    /// A table header (`[server]`, `[[models]]`): its path, with array indices.
    Header(Vec<Segment>),
    /// `key = value`: the key's full path.
    Key(Vec<Segment>),
}

/// The kind of every line of `text`. A small scanner rather than a TOML parser: it follows
/// table headers (counting `[[array]]` tables), dotted and quoted keys, strings and values that
/// span lines, which is all a key path needs.
fn scan_lines(text: &str) -> Vec<LineKind> {
    let mut table: Vec<Segment> = Vec::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut value = ValueState::default();
    let mut out = Vec::new();
    for line in text.lines() {
        if value.open() {
            value.scan(line);
            out.push(LineKind::Continuation);
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(LineKind::Other);
            continue;
        }
        if let Some((names, array)) = parse_header(trimmed) {
            table = header_path(&names, array, &mut arrays);
            out.push(LineKind::Header(table.clone()));
            continue;
        }
        let Some(eq) = find_unquoted(trimmed, '=') else {
            out.push(LineKind::Other);
            continue;
        };
        let mut path = table.clone();
        path.extend(
            split_dotted(&trimmed[..eq])
                .into_iter()
                .map(|name| Segment { name, index: None }),
        );
        value.scan(&trimmed[eq + 1..]);
        out.push(LineKind::Key(path));
    }
    out
}

/// The path of a table header, numbering `[[array]]` tables by how many came before (per
/// enclosing table, for nested arrays).
fn header_path(names: &[String], array: bool, arrays: &mut HashMap<String, usize>) -> Vec<Segment> {
    let mut path = Vec::new();
    let mut canonical = String::new();
    for (k, name) in names.iter().enumerate() {
        if k > 0 {
            canonical.push('.');
        }
        canonical.push_str(name);
        let index = if array && k + 1 == names.len() {
            let n = arrays.entry(canonical.clone()).or_insert(0);
            *n += 1;
            Some(*n - 1)
        } else {
            arrays.get(&canonical).map(|n| n.saturating_sub(1))
        };
        if let Some(i) = index {
            canonical.push_str(&format!("[{i}]"));
        }
        path.push(Segment {
            name: name.clone(),
            index,
        });
    }
    path
}

/// `[a.b]` or `[[a.b]]` (trimmed): the names, and whether it is an array table.
fn parse_header(line: &str) -> Option<(Vec<String>, bool)> {
    let (inner, array) = if let Some(rest) = line.strip_prefix("[[") {
        (&rest[..find_unquoted(rest, ']')?], true)
    } else {
        let rest = line.strip_prefix('[')?;
        (&rest[..find_unquoted(rest, ']')?], false)
    };
    let names = split_dotted(inner);
    (!names.is_empty()).then_some((names, array))
}

/// `a."b.c".d` as `[a, b.c, d]`.
fn split_dotted(key: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => names.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    names.push(current);
    names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Byte offset of the first `target` outside quotes.
fn find_unquoted(s: &str, target: char) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c == target => return Some(i),
            _ => {}
        }
    }
    None
}

/// Whether a value is still open at the end of a line: brackets not yet closed, or a
/// multi-line string.
#[derive(Default)]
struct ValueState {
    depth: usize,
    multiline: Option<&'static str>,
}

impl ValueState {
    fn open(&self) -> bool {
        self.depth > 0 || self.multiline.is_some()
    }

    fn scan(&mut self, mut s: &str) {
        loop {
            if let Some(delim) = self.multiline {
                let Some(end) = s.find(delim) else { return };
                self.multiline = None;
                s = &s[end + delim.len()..];
            }
            let Some((i, c)) = s.char_indices().find(|(_, c)| "\"'[]{}#".contains(*c)) else {
                return;
            };
            let rest = &s[i + c.len_utf8()..];
            match c {
                '#' => return,
                '[' | '{' => {
                    self.depth += 1;
                    s = rest;
                }
                ']' | '}' => {
                    self.depth = self.depth.saturating_sub(1);
                    s = rest;
                }
                _ => {
                    let triple = if c == '"' { "\"\"\"" } else { "'''" };
                    if s[i..].starts_with(triple) {
                        self.multiline = Some(triple);
                        s = &s[i + 3..];
                    } else {
                        s = skip_string(rest, c);
                    }
                }
            }
        }
    }
}

/// The rest of `s` after the one-line string that `quote` opened (a `\` escapes in basic
/// strings).
fn skip_string(s: &str, quote: char) -> &str {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quote == '"' {
            escaped = true;
        } else if c == quote {
            return &s[i + 1..];
        }
    }
    ""
}

/// Whether line path `line` is `target` (`exact`) or an enclosing table or key of it. A key
/// without an index matches an indexed target segment only last: the element of an inline
/// array on that key's line.
fn path_matches(line: &[Segment], target: &[Segment], exact: bool) -> bool {
    if (exact && line.len() != target.len()) || (!exact && line.len() >= target.len()) {
        return false;
    }
    line.iter().zip(target).enumerate().all(|(k, (l, t))| {
        l.name == t.name
            && match (l.index, t.index) {
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
                (None, Some(_)) => k + 1 == line.len(),
                (None, None) => true,
            }
    })
}

/// The line (from 1) where `key` (`models[2].fallbacks[0]`) is set in `text`; where it is not
/// (a default left out), the line of the deepest table or key enclosing it.
fn locate(text: &str, key: &str) -> Option<usize> {
    let target = parse_path(key);
    let lines = scan_lines(text);
    let path_of = |kind: &LineKind| match kind {
        LineKind::Header(p) | LineKind::Key(p) => Some(p.clone()),
        LineKind::Other | LineKind::Continuation => None,
    };
    let mut best: Option<(usize, usize)> = None;
    for (n, kind) in lines.iter().enumerate() {
        let Some(path) = path_of(kind) else { continue };
        if path_matches(&path, &target, true) {
            return Some(n + 1);
        }
        if path_matches(&path, &target, false) && best.is_none_or(|(len, _)| path.len() > len) {
            best = Some((path.len(), n + 1));
        }
    }
    best.map(|(_, line)| line)
}

/// The key path set on `line` (from 1): a key line's key, a header's table, or for a line
/// inside a multi-line value, that value's key.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines = scan_lines(text);
    let mut n = line.checked_sub(1)?;
    loop {
        match lines.get(n)? {
            LineKind::Header(p) | LineKind::Key(p) => return Some(format_path(p)),
            LineKind::Other => return None,
            LineKind::Continuation => n = n.checked_sub(1)?,
        }
    }
}

/// The line (from 1) holding byte `offset` of `text`.
fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
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

    fn err(text: &str) -> ConfigError {
        match Config::from_toml("isnad.toml", text) {
            Ok(c) => c.check().unwrap_err(),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line_and_path() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\n\n[journal]\ncheckpoint_evry = 10\n");
        assert_eq!(e.file, "isnad.toml");
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("journal.checkpoint_evry"));
        assert!(
            e.reason.starts_with("unknown field `checkpoint_evry`"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("isnad.toml:5: journal.checkpoint_evry: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn bad_types_and_missing_fields_name_their_line_and_path() {
        let e = err("[server]\nmax_body_bytes = \"big\"\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("server.max_body_bytes"))
        );
        assert!(e.reason.contains("invalid type"), "{e}");
        let text = "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
                    [[models]]\nid = \"a\"\nprovider = \"up\"\nresidency = \"local\"\n\n\
                    [[models]]\nid = \"b\"\nprovider = \"up\"\nkind = \"chatty\"\n\
                    residency = \"local\"\n";
        let e = err(text);
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(12), Some("models[1].kind"))
        );
        let e = err(&text
            .replace("kind = \"chatty\"\n", "")
            .replace("residency = \"local\"\n\n[[", "\n[["));
        assert!(e.reason.contains("missing field `residency`"), "{e}");
        assert!(
            e.key.as_deref().is_some_and(|k| k.starts_with("models[0]")),
            "{e}"
        );
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8443"

[providers.up]
base_url = "http://10.0.0.5:8000/v1"

[[models]]
id = "home"
provider = "up"
residency = "local"
fallbacks = ["abroad"]

[[models]]
id = "abroad"
provider = "up"
residency = "external"

[[models]]
id = "embed"
provider = "up"
kind = "embedding"
residency = "local"

[routing]
default_model = "home"

[[keys]]
name = "alice"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
models = ["home", "auto-router"]

[[keys]]
name = "audit"
role = "auditor"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
"#;

    #[test]
    fn check_summarises_what_would_be_served() {
        let s = Config::from_toml("isnad.toml", GOOD)
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(s.listen.port(), 8443);
        assert!(!s.tls);
        let ids: Vec<&str> = s.models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["home", "abroad", "embed"]);
        assert_eq!(s.models[0].fallbacks, ["abroad"]);
        assert_eq!(s.default_model.as_deref(), Some("home"));
        assert_eq!(s.request_stages, ["guardrail", "router"]);
        assert_eq!(s.keys.get("member"), Some(&1));
        assert_eq!(s.keys.get("auditor"), Some(&1));
        let text = s.to_string();
        assert!(
            text.contains("home (chat, provider up, local), fallbacks: abroad"),
            "{text}"
        );
        assert!(text.contains("keys: 1 auditor, 1 member"), "{text}");
    }

    #[test]
    fn semantic_errors_name_the_line_of_their_key() {
        let e = err(&GOOD.replace("fallbacks = [\"abroad\"]", "fallbacks = [\"nope\"]"));
        assert_eq!(
            e.to_string(),
            "isnad.toml:12: models[0].fallbacks[0]: unknown model \"nope\""
        );
        let e = err(&GOOD.replace(
            "models = [\"home\", \"auto-router\"]",
            "models = [\"home\", \"x\"]",
        ));
        assert_eq!(
            e.to_string(),
            "isnad.toml:31: keys[0].models[1]: no model `x`"
        );
        let e = err(&GOOD.replace("2222", "1111"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(36), Some("keys[1].sha256"))
        );
        let e = err(&GOOD.replace("id = \"abroad\"", "id = \"home\""));
        assert_eq!((e.line, e.key.as_deref()), (Some(15), Some("models[1].id")));
        let e = err(&GOOD.replace("default_model = \"home\"", "default_model = \"embed\""));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(26), Some("routing.default_model"))
        );
        let e = err(&format!(
            "{GOOD}\n[pipeline]\nrequest_stages = [\"router\", \"nope\"]\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(39), Some("pipeline.request_stages[1]"))
        );
        let e = err(&GOOD.replace("127.0.0.1:8443", "0.0.0.0:8443"));
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("server.listen")));
        assert!(e.reason.contains("plain HTTP"), "{e}");
        let e = err(&GOOD.replace("[providers.up]", "[providers.other]"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(10), Some("models[0].provider"))
        );
    }

    #[test]
    fn a_missing_local_model_is_an_error_at_its_table() {
        let e = err(
            "[[models]]\nid = \"no-such-model-here\"\nprovider = \"local\"\nresidency = \"local\"",
        );
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("models[0]")));
        assert!(e.reason.contains("no-such-model-here"), "{e}");
    }

    #[test]
    fn errors_without_the_file_still_name_the_key() {
        let e = ConfigError::in_configuration("keys[1].sha256: not a hex SHA-256".into());
        assert_eq!(
            e.to_string(),
            "configuration: keys[1].sha256: not a hex SHA-256"
        );
        let e = ConfigError::in_configuration("something broke: badly".into());
        assert_eq!((e.key, e.reason.as_str()), (None, "something broke: badly"));
    }

    #[test]
    fn locate_finds_array_tables_keys_and_elements() {
        let text = r#"# [[models]] in a comment is no table
[server]
listen = "127.0.0.1:1"   # [x]
server_note = """
[[models]]
"""

[[models]]
id = "a"

[[models]]
id = "b"
fallbacks = [
  "a",
  [1, 2],
]

[[models]]
id = "c"
fallbacks = ["a", "x"]

[providers."lab.1"]
base_url = "http://x/v1"

[[keys]]
name = "k"
[[keys]]
name = "l"
sha256 = "00"
[pipeline]
request_stages = ["router"]
routing.default_model = "c"
"#;
        assert_eq!(locate(text, "models[0]"), Some(8));
        assert_eq!(locate(text, "models[1].fallbacks[0]"), Some(13));
        assert_eq!(locate(text, "models[2].fallbacks[1]"), Some(20));
        assert_eq!(locate(text, "models[2].id"), Some(19));
        // A default left out: the table that would hold it.
        assert_eq!(locate(text, "models[2].kind"), Some(18));
        assert_eq!(locate(text, "keys[1].sha256"), Some(29));
        assert_eq!(locate(text, "keys[1].models[0]"), Some(27));
        assert_eq!(locate(text, "pipeline.request_stages[0]"), Some(31));
        assert_eq!(locate(text, "pipeline.routing.default_model"), Some(32));
        assert_eq!(locate(text, "server.listen"), Some(3));
        assert_eq!(locate(text, "models[3].id"), None);
        assert_eq!(locate(text, "routing.default_model"), None);
        assert_eq!(locate("", "server.listen"), None);
        assert_eq!(key_at(text, 14).as_deref(), Some("models[1].fallbacks"));
        assert_eq!(key_at(text, 5).as_deref(), Some("server.server_note"));
        assert_eq!(key_at(text, 22).as_deref(), Some("providers.lab.1"));
        assert_eq!(key_at(text, 1), None);
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
