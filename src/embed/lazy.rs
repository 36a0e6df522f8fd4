//! An embedder that loads its model on first use. It resolves the model's files at once
//! (cheap: no weights are read, a verified checksum is remembered) and takes its id and
//! dimension from the model's `config.json`, so the store's model check runs without the
//! weights; the weights are loaded the first time something is embedded.
//!
//! For offline tools (`deja cache stats|purge|export|import --offline`): most of them open the
//! store, which checks the model id and dimension, but embed nothing. It never serves traffic:
//! the server loads its model before it is ready, so no request waits for a load.

use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::{
    resolve_model, BertEmbedder, EmbedError, EmbedSettings, Embedder, ModelFiles, ResolveOptions,
};

pub struct LazyEmbedder {
    files: ModelFiles,
    settings: EmbedSettings,
    dim: usize,
    /// The loaded model, or why loading failed (kept: a second attempt would fail alike).
    model: OnceLock<Result<Arc<dyn Embedder>, String>>,
}

#[derive(Deserialize)]
struct Dims {
    hidden_size: usize,
}

impl LazyEmbedder {
    /// Resolves the configured model and reads its dimension; loads nothing.
    pub fn resolve(
        settings: &EmbedSettings,
        opts: &ResolveOptions,
    ) -> Result<LazyEmbedder, EmbedError> {
        let files = resolve_model(settings, opts)?;
        let text = std::fs::read_to_string(&files.config)
            .map_err(|e| EmbedError::io(format!("read {}", files.config.display()), e))?;
        let dims: Dims = serde_json::from_str(&text)
            .map_err(|e| EmbedError::InvalidModel(format!("{}: {e}", files.config.display())))?;
        if dims.hidden_size == 0 {
            return Err(EmbedError::InvalidModel(format!(
                "{}: hidden_size is 0",
                files.config.display()
            )));
        }
        Ok(LazyEmbedder {
            files,
            settings: settings.clone(),
            dim: dims.hidden_size,
            model: OnceLock::new(),
        })
    }

    /// Whether the weights have been loaded (or a load was tried).
    pub fn loaded(&self) -> bool {
        self.model.get().is_some()
    }

    fn model(&self) -> Result<&Arc<dyn Embedder>, EmbedError> {
        let loaded = self.model.get_or_init(|| {
            tracing::info!(model = %self.files.model_id, "loading the embedding model");
            BertEmbedder::load(&self.files, &self.settings)
                .map(|m| Arc::new(m) as Arc<dyn Embedder>)
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(m) if m.dim() == self.dim => Ok(m),
            Ok(m) => Err(EmbedError::InvalidModel(format!(
                "{} embeds {} dimensions, its config.json says {}",
                self.files.model_id,
                m.dim(),
                self.dim
            ))),
            Err(e) => Err(EmbedError::InvalidModel(format!(
                "loading {} failed: {e}",
                self.files.model_id
            ))),
        }
    }
}

impl Embedder for LazyEmbedder {
    fn model_id(&self) -> &str {
        &self.files.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.model()?.embed_batch(texts)
    }

    fn describe(&self) -> String {
        match self.model.get() {
            Some(Ok(m)) => m.describe(),
            _ => format!("{} (not loaded)", self.files.model_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory whose config is real but whose weights are not: resolving and the
    /// id and dimension work, embedding fails with the load's error.
    #[test]
    fn id_and_dim_come_without_loading_and_a_bad_model_fails_on_first_embed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-model");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"bert","hidden_size":24,"max_position_embeddings":512}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), "not a tokenizer").unwrap();
        std::fs::write(dir.join("model.safetensors"), "not weights").unwrap();
        let settings = EmbedSettings {
            model: dir.display().to_string(),
            ..EmbedSettings::default()
        };
        let opts = ResolveOptions {
            cache_dir: tmp.path().join("cache"),
            hf_offline: true,
            allow_pip: false,
            ..ResolveOptions::from_env()
        };
        let lazy = LazyEmbedder::resolve(&settings, &opts).unwrap();
        assert_eq!((lazy.model_id(), lazy.dim()), ("tiny-model", 24));
        assert!(!lazy.loaded());
        let err = lazy.embed_batch(&["hello"]).unwrap_err().to_string();
        assert!(lazy.loaded());
        assert!(err.contains("loading tiny-model failed"), "{err}");
        // A config without hidden_size is refused at once.
        std::fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        assert!(LazyEmbedder::resolve(&settings, &opts).is_err());
    }
}
