//! The candle BERT sentence-transformer (all-MiniLM-L6-v2 and other BERT-architecture models):
//! tokenize without padding, truncate at `max_tokens`, run f32 BERT, mean-pool over real tokens,
//! L2-normalize. It owns no threads; callers (the pool) decide where it runs.
//!
//! Traps it avoids: tokenizer.json ships `Fixed(128)` padding, which multiplies the work for short
//! prompts, so padding is switched off and a batch is padded only to its own longest member (with
//! the attention mask); candle's BERT produces NaN in f16/bf16 (its mask adds `f32::MIN`), so the
//! model always runs in f32.

use super::native::isa::Isa;
use super::native::{NativeBert, NativeOptions, Shape};
use super::resolve::ModelFiles;
use super::{CpuBackend, EmbedError, EmbedSettings, Embedder};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::collections::HashMap;
use tokenizers::{Tokenizer, TruncationParams};

/// Bytes of input kept per allowed token. Tokenization runs before truncation, so a multi-MB
/// prompt would otherwise be tokenized in full only to be cut at 256 tokens; a real token never
/// needs this many bytes of text.
pub(super) const BYTES_PER_TOKEN_CAP: usize = 128;

/// Extra padded tokens a group may carry before a longer text starts its own forward pass.
const PAD_SLACK_TOKENS: usize = 32;

/// What runs the forward pass.
enum Engine {
    /// candle-transformers' BertModel: CUDA, Metal, or CPU when `cpu_backend = "candle"`.
    Candle(BertModel),
    /// deja's CPU encoder (the default on CPU).
    Native(NativeBert),
}

pub struct BertEmbedder {
    engine: Engine,
    tokenizer: Tokenizer,
    device: Device,
    model_id: String,
    dim: usize,
    max_tokens: usize,
}

impl BertEmbedder {
    /// Loads weights (f32) onto the configured device and prepares the tokenizer.
    pub fn load(files: &ModelFiles, settings: &EmbedSettings) -> Result<Self, EmbedError> {
        Self::load_with(files, settings, None)
    }

    /// [`BertEmbedder::load`] with the native encoder's kernel family and weight precision
    /// chosen by the caller (tests and benchmarks compare them); `None` detects.
    pub fn load_with(
        files: &ModelFiles,
        settings: &EmbedSettings,
        kernels: Option<(Isa, bool)>,
    ) -> Result<Self, EmbedError> {
        let device = settings.device.to_candle()?;
        let config_text = std::fs::read_to_string(&files.config)
            .map_err(|e| EmbedError::io(format!("read {}", files.config.display()), e))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| EmbedError::InvalidModel(format!("{}: {e}", files.config.display())))?;
        if let Some(kind) = config.model_type.as_deref() {
            if kind != "bert" {
                return Err(EmbedError::InvalidModel(format!(
                    "model_type {kind:?} is not supported (only BERT sentence-transformers)"
                )));
            }
        }
        if settings.max_tokens < 2 || settings.max_tokens > config.max_position_embeddings {
            return Err(EmbedError::InvalidModel(format!(
                "max_tokens {} must be between 2 and the model's max_position_embeddings {}",
                settings.max_tokens, config.max_position_embeddings
            )));
        }

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: settings.max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(format!("truncation: {e}")))?;

        let threads = match settings.compute_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let options = match kernels {
            Some((isa, f16_weights)) => NativeOptions {
                threads,
                isa,
                f16_weights,
            },
            None => NativeOptions::detect(threads),
        };
        // Without AVX2/AVX-512 (e.g. aarch64), candle's gemm (with NEON kernels) beats the
        // native encoder's portable kernel, so it runs unless a caller asks for native.
        let native = device.is_cpu()
            && settings.cpu_backend == CpuBackend::Native
            && (kernels.is_some() || options.isa != Isa::Portable);
        let tensors = load_weights(&files.weights, &device, !native)?;
        let engine = if native {
            let shape = Shape {
                hidden: config.hidden_size,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layers: config.num_hidden_layers,
                max_positions: config.max_position_embeddings,
                eps: config.layer_norm_eps as f32,
                position_offset: 0,
            };
            if !matches!(
                config.hidden_act,
                candle_transformers::models::bert::HiddenAct::Gelu
            ) {
                return Err(EmbedError::InvalidModel(format!(
                    "hidden_act {:?} is not supported by the native CPU encoder; set \
                     embedding.cpu_backend = \"candle\"",
                    config.hidden_act
                )));
            }
            Engine::Native(NativeBert::new(&tensors, shape, options)?)
        } else {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
            Engine::Candle(BertModel::load(vb, &config)?)
        };
        Ok(Self {
            engine,
            tokenizer,
            device,
            model_id: files.model_id.clone(),
            dim: config.hidden_size,
            max_tokens: settings.max_tokens,
        })
    }

    /// Token ids of `text` as the model sees them ([CLS] … [SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let text = clip_bytes(text, self.max_tokens * BYTES_PER_TOKEN_CAP);
        let encoding = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Number of tokens `text` occupies, including [CLS] and [SEP].
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self.token_ids(text)?.len())
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Which implementation runs the model: `native-amx`, `native-avx512`, `native-avx2`,
    /// `native-portable` (with the weight format and thread count) or `candle`.
    pub fn backend(&self) -> String {
        match &self.engine {
            Engine::Native(n) => format!(
                "native-{}-{} ({} threads)",
                n.isa().name(),
                n.weight_format(),
                n.threads()
            ),
            Engine::Candle(_) => "candle".into(),
        }
    }

    /// One candle forward pass over sequences padded to the longest; returns normalized rows.
    fn forward_candle(
        &self,
        model: &BertModel,
        seqs: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let n = seqs.len();
        let max_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(n * max_len);
        let mut mask = Vec::with_capacity(n * max_len);
        for seq in seqs {
            ids.extend_from_slice(seq);
            ids.resize(ids.len() + max_len - seq.len(), 0);
            mask.resize(mask.len() + seq.len(), 1u32);
            mask.resize(mask.len() + max_len - seq.len(), 0u32);
        }
        let input_ids = Tensor::from_vec(ids, (n, max_len), &self.device)?;
        let type_ids = input_ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (n, max_len), &self.device)?;
        let hidden = model.forward(&input_ids, &type_ids, Some(&mask))?;

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1.0, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let rows = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
        Ok(rows)
    }
}

impl Embedder for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.model_id, self.backend())
    }

    fn arithmetic(&self) -> String {
        match &self.engine {
            Engine::Native(n) => format!("native-{}-{}", n.isa().name(), n.weight_format()),
            Engine::Candle(_) => "candle".into(),
        }
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encoded = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        let model = match &self.engine {
            // No padding in the native encoder: the whole batch is one pass.
            Engine::Native(native) => {
                let seqs: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
                return native.embed(&seqs);
            }
            Engine::Candle(model) => model,
        };
        let mut out = vec![Vec::new(); texts.len()];
        for group in length_groups(&encoded) {
            let seqs: Vec<&[u32]> = group.iter().map(|&i| encoded[i].as_slice()).collect();
            let rows = self.forward_candle(model, &seqs)?;
            for (i, row) in group.into_iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

/// Reads the safetensors (read rather than mmap: a safe load, and a file replaced on disk later
/// cannot corrupt the running model) as f32.
///
/// On CPU every linear weight `W` (out × in) is stored as the transposed view of a contiguous
/// `Wᵀ`: candle's `Linear` multiplies by `W.t()`, which then is a plain row-major matrix, and
/// gemm skips its strided packing path. Measured on the 2-core dev machine: one 9×384 · 384×1536
/// product went from 2.4 ms to 0.9 ms, and a 9-token forward pass uses ~25% less CPU (packing
/// fell from a third of the profile to 5%).
pub(super) fn load_weights(
    path: &std::path::Path,
    device: &Device,
    transpose: bool,
) -> Result<HashMap<String, Tensor>, EmbedError> {
    let bytes =
        std::fs::read(path).map_err(|e| EmbedError::io(format!("read {}", path.display()), e))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    drop(bytes);
    for (name, tensor) in tensors.iter_mut() {
        let mut t = tensor.to_dtype(DType::F32)?;
        if transpose
            && device.is_cpu()
            && t.rank() == 2
            && name.ends_with(".weight")
            && !name.contains("embeddings")
        {
            t = t.t()?.contiguous()?.t()?;
        }
        *tensor = t;
    }
    Ok(tensors)
}

/// Splits indices into groups of similar length so one long prompt does not make every short one
/// in its batch pay for its padding.
fn length_groups(encoded: &[Vec<u32>]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = encoded[i].len();
        if let Some(group) = groups.last_mut() {
            // Sorted ascending, so `len` is the new padded length of the whole group.
            let padded = (group.len() + 1) * len;
            let waste = padded - (real + len);
            if waste <= PAD_SLACK_TOKENS.max((real + len) / 4) {
                group.push(i);
                real += len;
                continue;
            }
        }
        groups.push(vec![i]);
        real = len;
    }
    groups
}

pub(super) fn clip_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(lens: &[usize]) -> Vec<Vec<u32>> {
        lens.iter().map(|&l| vec![1; l]).collect()
    }

    #[test]
    fn similar_lengths_share_a_pass_and_outliers_do_not() {
        let groups = length_groups(&seqs(&[9, 12, 10, 256, 13]));
        assert_eq!(groups, vec![vec![0, 2, 1, 4], vec![3]]);
        let all: usize = groups.iter().map(Vec::len).sum();
        assert_eq!(all, 5);
        assert!(length_groups(&[]).is_empty());
    }

    #[test]
    fn clipping_respects_char_boundaries() {
        assert_eq!(clip_bytes("héllo", 2), "h");
        assert_eq!(clip_bytes("héllo", 3), "hé");
        assert_eq!(clip_bytes("abc", 10), "abc");
    }
}
