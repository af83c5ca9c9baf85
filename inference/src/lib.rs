//! Inference providers, the model registry and the inference stage.
//!
//! - [`registry`]: models from configuration (id, provider, upstream name, residency, languages,
//!   prices, context length, fallbacks), checked without side effects ([`registry::Registry::check`],
//!   errors naming the key path), then loaded; it is the policy stages' model catalogue
//!   ([`isnad_pipeline::policy::ModelCatalog`]).
//! - [`upstream`]: an OpenAI-compatible upstream (vLLM, llama.cpp's server, TGI, Ollama, another
//!   isnad): pooled connections, HTTP/2 where offered, connect and read timeouts, retries with
//!   backoff on connect errors, 429 and 5xx; a stream's SSE events are parsed here into typed
//!   chunks ([`isnad_schemas::openai::ChatCompletionChunk`]).
//! - [`stages`]: the inference stage: calls the model a request was routed to (and its
//!   fallbacks), streams typed items back to the handler, journals the outcome. A failure is
//!   sent as a typed [`Error`]; the API decides the status.
//! - [`local`]: models inside the process on ONNX Runtime (chat with a key/value cache and
//!   continuous batching; batched embeddings), every file pinned by its manifest.
//! - Egress: every upstream request goes through [`isnad_pipeline::egress`], the process's only
//!   door out. A request to a host that is not a configured upstream is refused before any
//!   socket is opened, and redirects are never followed.

pub mod local;
pub mod registry;
pub mod stages;
pub mod upstream;

/// Errors from providers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The destination is not a configured upstream.
    #[error("egress refused: {0} is not a configured upstream")]
    Egress(String),
    /// Could not connect (after retries).
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered with an error status.
    #[error("upstream returned {status}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body (the upstream's error message, for logs).
        body: String,
    },
    /// The stream broke after it started.
    #[error("upstream stream failed: {0}")]
    Stream(String),
    /// Bad configuration; the message names the key path.
    #[error("{0}")]
    Config(String),
    /// A local model's files are missing, damaged, or not what its manifest says.
    #[error("{0}")]
    ModelFiles(String),
    /// ONNX Runtime failed to load or run a model.
    #[error("{0}")]
    Runtime(String),
    /// A local model's worker could not start or has stopped.
    #[error("{0}")]
    Stopped(String),
    /// A bug: something that should not happen did.
    #[error("{0}")]
    Internal(String),
    /// The journal could not record the outcome.
    #[error("the activity journal is unavailable: {0}")]
    Journal(String),
    /// The client's request cannot be served as sent (a local model's validation).
    #[error("{0}")]
    BadRequest(String),
    /// A local model's queue is full.
    #[error("{0}")]
    Overloaded(String),
}

impl From<isnad_pipeline::egress::EgressError> for Error {
    fn from(e: isnad_pipeline::egress::EgressError) -> Self {
        use isnad_pipeline::egress::EgressError as E;
        match e {
            E::Refused(to) => Self::Egress(to),
            E::BadUrl(why) => Self::Config(why),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
