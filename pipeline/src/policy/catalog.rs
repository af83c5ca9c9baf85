//! What the policy stages may know of the models: a catalogue they read through a trait, so the
//! pipeline never depends on the engines that serve them (the inference registry implements it).

use serde::{Deserialize, Serialize};

/// Where a model runs relative to the data boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// In-process or an in-boundary upstream.
    Local,
    /// Outside the boundary: sensitive data must never reach it.
    External,
}

impl Residency {
    /// `local` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::External => "external",
        }
    }
}

/// What a model does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Chat completions.
    Chat,
    /// Embeddings.
    Embedding,
}

impl ModelKind {
    /// `chat` or `embedding`, as manifests and events name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

/// One model as the policy stages see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelInfo<'a> {
    /// The id clients use.
    pub id: &'a str,
    /// The provider serving it.
    pub provider: &'a str,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// Inside or outside the boundary.
    pub residency: Residency,
    /// Whether it accepts `tools`, `tool_choice` and `response_format`.
    pub supports_tools: bool,
    /// For an embedding model: whether the client may choose `dimensions`.
    pub variable_dimensions: bool,
    /// Price of 1,000 prompt (input) tokens, in millionths of the currency unit.
    pub price_in_micros_per_1k: u64,
    /// Price of 1,000 completion (output) tokens, in millionths of the currency unit.
    pub price_out_micros_per_1k: u64,
}

/// The models a gateway serves.
pub trait ModelCatalog: Send + Sync + 'static {
    /// The model with this id.
    fn model(&self, id: &str) -> Option<ModelInfo<'_>>;
    /// The chat model `auto-router` prefers, if one is configured.
    fn default_chat(&self) -> Option<ModelInfo<'_>>;
    /// Every model, in configuration order.
    fn models(&self) -> Vec<ModelInfo<'_>>;
}
