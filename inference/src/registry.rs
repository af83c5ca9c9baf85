//! Models and providers from configuration, checked once at load: every error names its key path
//! (`models[1].fallbacks[0]: unknown model "x"`).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reqwest::Url;
use serde::{Deserialize, Serialize};

use isnad_pipeline::egress::EgressPolicy;

use crate::{
    local::{
        manifest,
        runtime::{Device, LocalConfig},
        ChunkStream, LoadReport, LocalModel, LOCAL_PROVIDER,
    },
    upstream::Upstream,
    Error, Result,
};

/// Where a model's requests go.
#[derive(Clone, Debug)]
pub enum Backend {
    /// An OpenAI-compatible server inside the boundary.
    Upstream(Arc<Upstream>),
    /// A model in this process.
    Local(LocalModel),
}

impl Backend {
    /// A non-streaming request for `path` under `/v1/`.
    pub async fn json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        match self {
            Self::Upstream(u) => u.json(path, body).await,
            Self::Local(m) => m.json(path, body).await,
        }
    }

    /// A streaming request: the answer as typed chunks, in order.
    pub async fn stream(&self, path: &str, body: &serde_json::Value) -> Result<ChunkStream> {
        match self {
            Self::Upstream(u) => Ok(Box::pin(u.stream(path, body).await?)),
            Self::Local(m) => m.stream(path, body).await,
        }
    }
}

/// `[providers.NAME]`: an OpenAI-compatible server inside the boundary.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL including `/v1`, e.g. `http://10.0.0.5:8000/v1`.
    pub base_url: String,
    /// Environment variable holding the upstream's API key, if it needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Connect timeout.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Timeout between bytes of a response.
    #[serde(default = "default_read_ms")]
    pub read_timeout_ms: u64,
    /// Retries on connect errors, 429 and 5xx (before any byte was streamed to the client).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_read_ms() -> u64 {
    60_000
}
fn default_retries() -> u32 {
    2
}

pub use isnad_pipeline::policy::{ModelKind, Residency};

/// `[[models]]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Id clients use.
    pub id: String,
    /// Name of a `[providers.NAME]` section.
    pub provider: String,
    /// Model name the upstream knows (default: `id`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Chat or embedding.
    #[serde(default = "default_kind")]
    pub kind: ModelKind,
    /// Residency.
    pub residency: Residency,
    /// Languages the model serves well (ISO 639-1).
    #[serde(default)]
    pub languages: Vec<String>,
    /// Price per 1k input tokens.
    #[serde(default)]
    pub price_per_1k_input: f64,
    /// Price per 1k output tokens.
    #[serde(default)]
    pub price_per_1k_output: f64,
    /// Context length in tokens.
    #[serde(default = "default_context")]
    pub context_length: u32,
    /// Models tried, in order, when this one fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Whether `tools`, `tool_choice` and `response_format` may be passed to this chat model.
    #[serde(default = "default_true")]
    pub supports_tools: bool,
    /// For embedding models: whether the client may choose `dimensions`.
    #[serde(default)]
    pub variable_dimensions: bool,
}

fn default_true() -> bool {
    true
}

fn default_kind() -> ModelKind {
    ModelKind::Chat
}
fn default_context() -> u32 {
    8192
}

/// The chat model served with no configuration.
pub const DEFAULT_CHAT_MODEL: &str = "smollm2-135m-instruct";
/// The embedding model served with no configuration.
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// A checked model with its provider.
#[derive(Clone, Debug)]
pub struct Model {
    /// Configuration.
    pub config: ModelConfig,
    /// Provider name.
    pub provider_name: String,
    /// Provider.
    pub backend: Backend,
}

impl Model {
    /// Name the upstream knows (for a local model: its directory under the models directory).
    pub fn upstream_model(&self) -> &str {
        self.config
            .upstream_model
            .as_deref()
            .unwrap_or(&self.config.id)
    }
}

/// All models, by id, in configuration order.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    models: Vec<Model>,
    default_chat: Option<String>,
    egress: EgressPolicy,
    loaded: Vec<LoadReport>,
}

/// The registry a configuration describes, checked without building anything: no upstream client
/// made, no model file hashed, no engine started. [`Registry::load`] builds from it.
#[derive(Clone, Debug)]
pub struct CheckedRegistry {
    models: Vec<ModelConfig>,
    default_chat: Option<String>,
    egress: EgressPolicy,
    base_urls: BTreeMap<String, Url>,
}

impl CheckedRegistry {
    /// The models, in configuration order.
    pub fn models(&self) -> &[ModelConfig] {
        &self.models
    }

    /// A model by id.
    pub fn get(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The model `auto-router` uses: `[routing] default_model`, else the first chat model.
    pub fn default_chat(&self) -> Option<&ModelConfig> {
        self.default_chat.as_deref().and_then(|d| self.get(d))
    }

    /// The egress policy: exactly the providers' origins.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }
}

impl isnad_pipeline::policy::ModelCatalog for CheckedRegistry {
    fn model(&self, id: &str) -> Option<isnad_pipeline::policy::ModelInfo<'_>> {
        self.get(id).map(ModelConfig::info)
    }

    fn default_chat(&self) -> Option<isnad_pipeline::policy::ModelInfo<'_>> {
        CheckedRegistry::default_chat(self).map(ModelConfig::info)
    }

    fn models(&self) -> Vec<isnad_pipeline::policy::ModelInfo<'_>> {
        self.models.iter().map(ModelConfig::info).collect()
    }
}

/// A price in currency units as integer millionths, so that budgets add exactly (negative or
/// non-finite prices count as free: the config check refuses them).
fn micros(price: f64) -> u64 {
    if price.is_finite() && price > 0.0 {
        (price * 1e6).round() as u64
    } else {
        0
    }
}

impl ModelConfig {
    /// The model as the policy stages see it.
    pub fn info(&self) -> isnad_pipeline::policy::ModelInfo<'_> {
        isnad_pipeline::policy::ModelInfo {
            id: &self.id,
            provider: &self.provider,
            kind: self.kind,
            residency: self.residency,
            supports_tools: self.supports_tools,
            variable_dimensions: self.variable_dimensions,
            price_in_micros_per_1k: micros(self.price_per_1k_input),
            price_out_micros_per_1k: micros(self.price_per_1k_output),
        }
    }
}

impl Registry {
    /// Checks everything [`Registry::load`] checks that needs no model opened: provider names,
    /// base URLs and their API key variables, model ids, providers, fallbacks and the default
    /// model; for models of provider `local`, that the manifest parses, is of the configured
    /// kind and that every file it lists is present (their hashes are checked at load), and that
    /// the ONNX Runtime library is installed. Errors name the key path
    /// (`models[2].fallbacks[0]: unknown model "x"`).
    pub fn check(
        providers: &BTreeMap<String, ProviderConfig>,
        models: &[ModelConfig],
        default_chat: Option<&str>,
        local: &LocalConfig,
    ) -> Result<CheckedRegistry> {
        let mut egress = EgressPolicy::deny_all();
        let mut base_urls = BTreeMap::new();
        for (name, p) in providers {
            if name == LOCAL_PROVIDER {
                return Err(Error::Config(format!(
                    "providers.{LOCAL_PROVIDER}: the name is reserved for in-process models"
                )));
            }
            let url = Url::parse(&p.base_url)
                .map_err(|e| Error::Config(format!("providers.{name}.base_url: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::Config(format!(
                    "providers.{name}.base_url: scheme must be http or https"
                )));
            }
            egress
                .allow(&url)
                .map_err(|e| Error::Config(format!("providers.{name}.base_url: {e}")))?;
            if let Some(var) = &p.api_key_env {
                // Only whether it is set: the key itself is read when the upstream is built.
                if std::env::var_os(var).is_none() {
                    return Err(Error::Config(format!(
                        "providers.{name}.api_key_env: environment variable {var} is not set"
                    )));
                }
            }
            base_urls.insert(name.clone(), url);
        }
        let mut first_local = None;
        for (i, m) in models.iter().enumerate() {
            if m.id.is_empty() || m.id.contains(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "models[{i}].id: must be non-empty without spaces"
                )));
            }
            if models[..i].iter().any(|o| o.id == m.id) {
                return Err(Error::Config(format!(
                    "models[{i}].id: duplicate model id \"{}\"",
                    m.id
                )));
            }
            if m.provider == LOCAL_PROVIDER {
                check_local(local, i, m)?;
                first_local.get_or_insert(i);
            } else if !base_urls.contains_key(&m.provider) {
                return Err(Error::Config(format!(
                    "models[{i}].provider: unknown provider \"{}\"",
                    m.provider
                )));
            }
        }
        if let Some(i) = first_local {
            check_runtime(local).map_err(|e| Error::Config(format!("models[{i}]: {e}")))?;
        }
        for (i, m) in models.iter().enumerate() {
            for (j, f) in m.fallbacks.iter().enumerate() {
                let Some(target) = models.iter().find(|o| &o.id == f) else {
                    return Err(Error::Config(format!(
                        "models[{i}].fallbacks[{j}]: unknown model \"{f}\""
                    )));
                };
                if target.kind != m.kind {
                    return Err(Error::Config(format!(
                        "models[{i}].fallbacks[{j}]: \"{f}\" is not a {:?} model",
                        m.kind
                    )));
                }
            }
        }
        if let Some(d) = default_chat {
            match models.iter().find(|o| o.id == d) {
                Some(m) if m.kind == ModelKind::Chat => {}
                Some(_) => {
                    return Err(Error::Config(format!(
                        "routing.default_model: \"{d}\" is not a chat model"
                    )))
                }
                None => {
                    return Err(Error::Config(format!(
                        "routing.default_model: unknown model \"{d}\""
                    )))
                }
            }
        }
        let default_chat = default_chat.map(str::to_owned).or_else(|| {
            models
                .iter()
                .find(|m| m.kind == ModelKind::Chat)
                .map(|m| m.id.clone())
        });
        Ok(CheckedRegistry {
            models: models.to_vec(),
            default_chat,
            egress,
            base_urls,
        })
    }

    /// Checks (see [`Registry::check`]) and builds the registry; the egress policy allows exactly
    /// the providers' origins. Models of provider `local` are verified against their manifests
    /// and started.
    pub fn load(
        providers: &BTreeMap<String, ProviderConfig>,
        models: &[ModelConfig],
        default_chat: Option<&str>,
        local: &LocalConfig,
    ) -> Result<Self> {
        let checked = Self::check(providers, models, default_chat, local)?;
        let mut built: BTreeMap<&str, Arc<Upstream>> = BTreeMap::new();
        for (name, url) in &checked.base_urls {
            // `base_urls` holds exactly the names of `providers`.
            let Some(p) = providers.get(name) else {
                continue;
            };
            let api_key = match &p.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    Error::Config(format!(
                        "providers.{name}.api_key_env: environment variable {var} is not set"
                    ))
                })?),
                None => None,
            };
            let upstream = Upstream::new(
                name,
                url.clone(),
                api_key,
                Duration::from_millis(p.connect_timeout_ms),
                Duration::from_millis(p.read_timeout_ms),
                p.max_retries,
            )?;
            built.insert(name, Arc::new(upstream));
        }
        let mut out: Vec<Model> = Vec::new();
        let mut loaded = Vec::new();
        for (i, m) in checked.models.iter().enumerate() {
            let backend = if m.provider == LOCAL_PROVIDER {
                let dir = m.upstream_model.as_deref().unwrap_or(&m.id);
                let (model, report) = LocalModel::load(local, dir)
                    .map_err(|e| Error::Config(format!("models[{i}]: {e}")))?;
                if model.kind() != m.kind {
                    return Err(Error::Config(format!(
                        "models[{i}].kind: \"{dir}\" is a {} model",
                        model.kind().as_str()
                    )));
                }
                loaded.push(report);
                Backend::Local(model)
            } else {
                let upstream = built.get(m.provider.as_str()).ok_or_else(|| {
                    Error::Config(format!(
                        "models[{i}].provider: unknown provider \"{}\"",
                        m.provider
                    ))
                })?;
                Backend::Upstream(upstream.clone())
            };
            out.push(Model {
                config: m.clone(),
                provider_name: m.provider.clone(),
                backend,
            });
        }
        Ok(Self {
            models: out,
            default_chat: checked.default_chat,
            egress: checked.egress,
            loaded,
        })
    }

    /// The local models loaded, with their file hashes.
    pub fn loaded(&self) -> &[LoadReport] {
        &self.loaded
    }

    /// The models `isnad serve` offers with no configuration: the in-process chat and embedding
    /// models the setup step installs.
    pub fn default_local_models() -> Vec<ModelConfig> {
        let local = |id: &str, kind, context_length| ModelConfig {
            id: id.into(),
            provider: LOCAL_PROVIDER.into(),
            upstream_model: None,
            kind,
            residency: Residency::Local,
            languages: vec!["en".into()],
            price_per_1k_input: 0.0,
            price_per_1k_output: 0.0,
            context_length,
            fallbacks: vec![],
            supports_tools: false,
            variable_dimensions: false,
        };
        vec![
            local(DEFAULT_CHAT_MODEL, ModelKind::Chat, 8192),
            local(DEFAULT_EMBEDDING_MODEL, ModelKind::Embedding, 256),
        ]
    }

    /// A model by id.
    pub fn get(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.config.id == id)
    }

    /// All models.
    pub fn all(&self) -> &[Model] {
        &self.models
    }

    /// The model `auto-router` uses.
    pub fn default_chat(&self) -> Option<&Model> {
        self.default_chat.as_deref().and_then(|d| self.get(d))
    }

    /// The egress policy derived from the providers.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// The model followed by its fallbacks, each once.
    pub fn with_fallbacks(&self, id: &str) -> Vec<&Model> {
        let mut out: Vec<&Model> = Vec::new();
        let mut queue = vec![id.to_owned()];
        while let Some(next) = queue.pop() {
            if out.iter().any(|m| m.config.id == next) {
                continue;
            }
            if let Some(m) = self.get(&next) {
                out.push(m);
                queue.extend(m.config.fallbacks.iter().rev().cloned());
            }
        }
        out
    }
}

/// The checks of a `local` model that open no model file: its manifest parses, is of the
/// configured kind, and lists files that are all present.
fn check_local(local: &LocalConfig, i: usize, m: &ModelConfig) -> Result<()> {
    let name = m.upstream_model.as_deref().unwrap_or(&m.id);
    let dir = local.models_dir().join(name);
    let manifest =
        manifest::read_manifest(&dir).map_err(|e| Error::Config(format!("models[{i}]: {e}")))?;
    if manifest.files.is_empty() {
        return Err(Error::Config(format!(
            "models[{i}]: {}: manifest lists no files",
            dir.display()
        )));
    }
    if let Some(missing) = manifest.files.keys().find(|f| !dir.join(f).is_file()) {
        return Err(Error::Config(format!(
            "models[{i}]: model {}: {} is missing; run `{}`",
            manifest.name,
            dir.join(missing).display(),
            manifest::SETUP_COMMAND
        )));
    }
    if manifest.kind != m.kind.as_str() {
        return Err(Error::Config(format!(
            "models[{i}].kind: the manifest of \"{name}\" says kind \"{}\"",
            manifest.kind
        )));
    }
    Ok(())
}

/// Whether the ONNX Runtime library that local models need is installed where
/// [`crate::local::runtime::environment`] looks: the GPU build when asked for and present, else
/// the CPU one.
fn check_runtime(local: &LocalConfig) -> std::result::Result<(), String> {
    let models = local.models_dir();
    let lib = "libonnxruntime.so";
    if local.device == Device::Cuda && models.join("onnxruntime-gpu").join(lib).exists() {
        return Ok(());
    }
    let cpu = models.join("onnxruntime").join(lib);
    if cpu.exists() {
        Ok(())
    } else {
        Err(format!(
            "ONNX Runtime library {} not found; run `{}`",
            cpu.display(),
            manifest::SETUP_COMMAND
        ))
    }
}

impl isnad_pipeline::policy::ModelCatalog for Registry {
    fn model(&self, id: &str) -> Option<isnad_pipeline::policy::ModelInfo<'_>> {
        self.get(id).map(Model::info)
    }

    fn default_chat(&self) -> Option<isnad_pipeline::policy::ModelInfo<'_>> {
        Registry::default_chat(self).map(Model::info)
    }

    fn models(&self) -> Vec<isnad_pipeline::policy::ModelInfo<'_>> {
        self.all().iter().map(Model::info).collect()
    }
}

impl Model {
    /// The model as the policy stages see it.
    pub fn info(&self) -> isnad_pipeline::policy::ModelInfo<'_> {
        isnad_pipeline::policy::ModelInfo {
            provider: &self.provider_name,
            ..self.config.info()
        }
    }
}

/// A chat model's configuration with the defaults, for tests.
#[cfg(test)]
pub(crate) fn chat_model(
    id: &str,
    provider: &str,
    residency: Residency,
    fallbacks: &[&str],
) -> ModelConfig {
    ModelConfig {
        id: id.into(),
        provider: provider.into(),
        upstream_model: None,
        kind: ModelKind::Chat,
        residency,
        languages: vec![],
        price_per_1k_input: 0.0,
        price_per_1k_output: 0.0,
        context_length: 4096,
        fallbacks: fallbacks.iter().map(|s| (*s).to_owned()).collect(),
        supports_tools: true,
        variable_dimensions: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(url: &str) -> ProviderConfig {
        ProviderConfig {
            base_url: url.into(),
            api_key_env: None,
            connect_timeout_ms: 100,
            read_timeout_ms: 100,
            max_retries: 0,
        }
    }

    fn model(id: &str, provider: &str, fallbacks: &[&str]) -> ModelConfig {
        chat_model(id, provider, Residency::Local, fallbacks)
    }

    #[test]
    fn errors_name_the_key_path() {
        let providers = BTreeMap::from([("a".to_owned(), provider("http://127.0.0.1:9/v1"))]);
        let e = Registry::load(
            &providers,
            &[model("m", "b", &[])],
            None,
            &LocalConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("models[0].provider"), "{e}");
        let e = Registry::load(
            &providers,
            &[model("m", "a", &["x"])],
            None,
            &LocalConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("models[0].fallbacks[0]"), "{e}");
        let e = Registry::load(
            &providers,
            &[model("m", "a", &[])],
            Some("z"),
            &LocalConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("routing.default_model"), "{e}");
        let bad = BTreeMap::from([("a".to_owned(), provider("ftp://x/v1"))]);
        assert!(Registry::load(&bad, &[], None, &LocalConfig::default())
            .unwrap_err()
            .to_string()
            .contains("providers.a.base_url"));
    }

    #[test]
    fn check_and_load_refuse_alike() {
        let providers = BTreeMap::from([("a".to_owned(), provider("http://127.0.0.1:9/v1"))]);
        let cases: [(&[ModelConfig], Option<&str>); 4] = [
            (&[model("m", "b", &[])], None),
            (&[model("m", "a", &["x"])], None),
            (&[model("m", "a", &[]), model("m", "a", &[])], None),
            (&[model("m", "a", &[])], Some("z")),
        ];
        for (models, default) in cases {
            let local = LocalConfig::default();
            let checked = Registry::check(&providers, models, default, &local).unwrap_err();
            let loaded = Registry::load(&providers, models, default, &local).unwrap_err();
            assert_eq!(checked.to_string(), loaded.to_string());
        }
        let checked = Registry::check(
            &providers,
            &[model("m1", "a", &[]), model("m2", "a", &["m1"])],
            None,
            &LocalConfig::default(),
        )
        .unwrap();
        assert_eq!(checked.models().len(), 2);
        assert_eq!(checked.default_chat().unwrap().id, "m1");
    }

    #[test]
    fn local_models_are_checked_without_being_opened() {
        // The models directory of this test is the one `ISNAD_MODELS_DIR` names when it is set.
        if std::env::var_os("ISNAD_MODELS_DIR").is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let local = LocalConfig {
            models_dir: dir.path().to_owned(),
            ..LocalConfig::default()
        };
        let m = ModelConfig {
            provider: LOCAL_PROVIDER.into(),
            ..model("tiny", "", &[])
        };
        let check = || {
            Registry::check(&BTreeMap::new(), std::slice::from_ref(&m), None, &local)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = check().unwrap_err();
        assert!(
            e.starts_with("models[0]: ") && e.contains("manifest.json"),
            "{e}"
        );
        let model_dir = dir.path().join("tiny");
        std::fs::create_dir(&model_dir).unwrap();
        let manifest = |kind: &str| {
            format!(r#"{{"name": "tiny", "kind": "{kind}", "files": {{"model.onnx": "00"}}}}"#)
        };
        std::fs::write(model_dir.join("manifest.json"), manifest("chat")).unwrap();
        let e = check().unwrap_err();
        assert!(e.starts_with("models[0]: model tiny: ") && e.contains("model.onnx is missing"));
        // Not an ONNX model, and its hash is not the pinned one: only loading would tell.
        std::fs::write(model_dir.join("model.onnx"), "not a model").unwrap();
        let e = check().unwrap_err();
        assert!(e.starts_with("models[0]: ONNX Runtime library"), "{e}");
        std::fs::create_dir(dir.path().join("onnxruntime")).unwrap();
        std::fs::write(
            dir.path().join("onnxruntime/libonnxruntime.so"),
            "not a library",
        )
        .unwrap();
        check().unwrap();
        std::fs::write(model_dir.join("manifest.json"), manifest("embedding")).unwrap();
        assert_eq!(
            check().unwrap_err(),
            "models[0].kind: the manifest of \"tiny\" says kind \"embedding\""
        );
    }

    #[test]
    fn fallbacks_are_ordered_and_cycle_free() {
        let providers = BTreeMap::from([("a".to_owned(), provider("http://127.0.0.1:9/v1"))]);
        let models = [
            model("m1", "a", &["m2", "m3"]),
            model("m2", "a", &["m1"]),
            model("m3", "a", &[]),
        ];
        let r = Registry::load(&providers, &models, None, &LocalConfig::default()).unwrap();
        let chain: Vec<&str> = r
            .with_fallbacks("m1")
            .iter()
            .map(|m| m.config.id.as_str())
            .collect();
        assert_eq!(chain, ["m1", "m2", "m3"]);
        assert_eq!(r.default_chat().unwrap().config.id, "m1");
    }
}
