//! The ONNX Runtime environment: loaded once per process from the library the setup step
//! unpacked (never downloaded), telemetry off, CUDA when built with the `cuda` feature and a GPU
//! answers, else CPU with a warning.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    session::{builder::GraphOptimizationLevel, Session},
};
use serde::{Deserialize, Serialize};

use crate::{local::manifest::SETUP_COMMAND, Error, Result};

/// Where models run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CPU execution provider.
    #[default]
    Cpu,
    /// CUDA execution provider (needs the `cuda` feature and the onnxruntime-gpu library); falls
    /// back to CPU with a warning when no GPU is usable.
    Cuda,
}

impl Device {
    /// `cpu` or `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// `[local]`: in-process models.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Directory the setup step fills (`ISNAD_MODELS_DIR` overrides).
    pub models_dir: PathBuf,
    /// Threads per model session (0: one per core).
    pub threads: usize,
    /// CPU or CUDA.
    pub device: Device,
    /// Most chat sequences decoded together.
    pub max_batch: usize,
    /// Chat requests waiting beyond the running batch before new ones are refused (503).
    pub max_queue: usize,
    /// Most inputs an embedding batch gathers.
    pub embed_max_batch: usize,
    /// How long an embedding batch waits for more inputs, in microseconds.
    pub embed_max_wait_us: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            threads: 0,
            device: Device::Cpu,
            max_batch: 8,
            max_queue: 64,
            embed_max_batch: 64,
            embed_max_wait_us: 2_000,
        }
    }
}

impl LocalConfig {
    /// The models directory, with `ISNAD_MODELS_DIR` taking precedence.
    pub fn models_dir(&self) -> PathBuf {
        std::env::var_os("ISNAD_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.models_dir.clone())
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The ONNX Runtime build to load: `onnxruntime-gpu/` (from `scripts/setup-models --gpu`) when
/// CUDA is asked for and installed, else the CPU build in `onnxruntime/`.
fn runtime_dir(cfg: &LocalConfig) -> PathBuf {
    let models = cfg.models_dir();
    let gpu = models.join("onnxruntime-gpu");
    if cfg.device == Device::Cuda {
        if gpu.join("libonnxruntime.so").exists() {
            return gpu;
        }
        tracing::warn!(
            "device = \"cuda\" but {} is not installed (`{SETUP_COMMAND} --gpu`); using the CPU build",
            gpu.display()
        );
    }
    models.join("onnxruntime")
}

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment(cfg: &LocalConfig) -> Result<&'static Environment> {
    let env = ENV.get_or_init(|| {
        let dir = runtime_dir(cfg);
        let lib = dir.join("libonnxruntime.so");
        if !lib.exists() {
            return Err(format!(
                "ONNX Runtime library {} not found; run `{SETUP_COMMAND}`",
                lib.display()
            ));
        }
        // The runtime is pinned like the models: a library that differs from its manifest is
        // not loaded into the process.
        crate::local::manifest::verify(&dir).map_err(|e| e.to_string())?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("isnad")
            .with_telemetry(false)
            .build()
            // ort's tracing bridge registers at verbose level; only warnings are wanted.
            .inspect(|env| env.set_log_level(ort::logging::LogLevel::Warning))
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    });
    env.as_ref().map_err(|e| Error::Runtime(e.clone()))
}

/// Opens a session on `model` with the configured device and threads.
pub fn session(cfg: &LocalConfig, model: &Path) -> Result<(Session, Device)> {
    let env = environment(cfg)?;
    let err = |e: ort::Error| Error::Runtime(format!("{}: {e}", model.display()));
    let mut builder = Session::builder(env)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(e.into()))?
        .with_intra_threads(cfg.threads())
        .map_err(|e| err(e.into()))?
        .with_log_level(ort::logging::LogLevel::Warning)
        .map_err(|e| err(e.into()))?;
    let mut device = Device::Cpu;
    if cfg.device == Device::Cuda {
        let (b, refused) = with_cuda(builder);
        builder = b;
        match refused {
            None => device = Device::Cuda,
            Some(why) => {
                tracing::warn!(model = %model.display(), reason = %why, "CUDA unavailable; running on CPU");
            }
        }
    }
    let session = builder.commit_from_file(model).map_err(err)?;
    Ok((session, device))
}

type Builder = ort::session::builder::SessionBuilder;

/// The builder with the CUDA execution provider registered, or unchanged with the reason it
/// could not be.
#[cfg(feature = "cuda")]
fn with_cuda(builder: Builder) -> (Builder, Option<String>) {
    match builder.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]) {
        Ok(b) => (b, None),
        Err(e) => {
            let why = e.to_string();
            (e.recover(), Some(why))
        }
    }
}

/// Without the `cuda` feature there is no CUDA provider to register.
#[cfg(not(feature = "cuda"))]
fn with_cuda(builder: Builder) -> (Builder, Option<String>) {
    (
        builder,
        Some("isnad was built without the `cuda` feature".to_owned()),
    )
}
