//! The pair verifier: a cross-encoder that reads the query and a cached prompt together and
//! scores whether they ask the same thing. A bi-encoder compares two vectors made apart, so a
//! negation, a swapped argument or a different entity barely moves the cosine; a cross-encoder
//! attends across both texts and sees them.
//!
//! It is BERT (or RoBERTa) plus a classification head, so it runs on deja's native encoder
//! ([`super::native`]): the same packed weights and kernels, the first token's hidden state read
//! out instead of the mean, then the head:
//! - `BertForSequenceClassification`: `logits = classifier(tanh(pooler(h_cls)))`;
//! - `RobertaForSequenceClassification`: `logits = out_proj(tanh(dense(h_<s>)))`.
//!
//! Logits become one score in 0..1 (P(same)) by what the model was trained as:
//! one label → sigmoid (sentence-transformers' cross-encoders for duplicates and STS);
//! two labels → softmax of the positive one (label 1, or one named like duplicate/paraphrase);
//! an NLI model (a label named `entailment`) → softmax of entailment in **both directions**, the
//! smaller of the two (bidirectional entailment is equivalence; one direction is not).
//!
//! Files resolve like the embedder's (local dir → deja cache → Hugging Face Hub), weights
//! checked by SHA-256 when one is configured. No cross-encoder is reachable from deja's own
//! build machines (see docs/verifier-models.md), so none is a default: the operator names one.
//! It runs on CPU (the native encoder) whatever device the embedder uses.

use super::bert::{clip_bytes as clip, load_weights, BYTES_PER_TOKEN_CAP};
use super::native::{NativeBert, NativeOptions, Shape};
use super::resolve::{resolve_model, ModelFiles, ResolveOptions};
use super::{EmbedError, EmbedSettings};
use serde::Deserialize;
use std::collections::HashMap;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// Scores (query, cached prompt) pairs. Synchronous and CPU bound: call it from a blocking
/// thread (the engine's lookup threads), never from an async task.
pub trait PairScorer: Send + Sync + 'static {
    /// Identifier for logs and the store of verdicts (the HF id or directory name).
    fn model_id(&self) -> &str;
    /// P(both ask the same thing), 0..1.
    fn score(&self, query: &str, stored: &str) -> Result<f32, EmbedError>;
}

/// Resolves `[cache.verifier]`'s model (local dir → deja cache → Hugging Face Hub, SHA-256
/// checked when configured) and loads it; a forward pass uses `compute_threads` threads (0 =
/// every core, as `embedding.compute_threads`). Blocking: seconds.
pub fn load_verifier(
    v: &crate::config::VerifierConfig,
    compute_threads: usize,
    opts: &ResolveOptions,
) -> Result<PairModel, EmbedError> {
    let settings = EmbedSettings {
        model: v.model.clone(),
        revision: v.revision.clone(),
        sha256: v.sha256.clone(),
        ..EmbedSettings::default()
    };
    let files = resolve_model(&settings, opts)?;
    PairModel::load_with_threads(&files, v.max_tokens, compute_threads)
}

#[derive(Debug, Deserialize)]
struct PairConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    pad_token_id: Option<usize>,
    #[serde(default)]
    id2label: HashMap<String, String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

/// The classification head's two linear layers (out × in, row-major).
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
}

impl Linear {
    fn load(
        tensors: &HashMap<String, candle_core::Tensor>,
        prefix: &str,
        n_in: usize,
    ) -> Result<Self, EmbedError> {
        let get = |name: String| -> Result<candle_core::Tensor, EmbedError> {
            tensors
                .get(&name)
                .cloned()
                .ok_or_else(|| EmbedError::InvalidModel(format!("missing tensor {name}")))
        };
        let w = get(format!("{prefix}.weight"))?;
        let b = get(format!("{prefix}.bias"))?;
        let dims = w.dims().to_vec();
        if dims.len() != 2 || dims[1] != n_in || b.dims() != [dims[0]] {
            return Err(EmbedError::InvalidModel(format!(
                "{prefix}: weight {dims:?} / bias {:?} do not fit an input of {n_in}",
                b.dims()
            )));
        }
        let flat = |t: candle_core::Tensor| -> Result<Vec<f32>, EmbedError> {
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        Ok(Self {
            w: flat(w)?,
            b: flat(b)?,
            n_in,
        })
    }

    fn outputs(&self) -> usize {
        self.b.len()
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.b
            .iter()
            .enumerate()
            .map(|(o, bias)| {
                let row = &self.w[o * self.n_in..(o + 1) * self.n_in];
                bias + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>()
            })
            .collect()
    }
}

/// How logits become P(same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Sigmoid,
    Softmax {
        positive: usize,
    },
    /// Softmax of the entailment label, both directions, the smaller.
    Entailment {
        label: usize,
    },
}

/// A loaded cross-encoder.
pub struct PairModel {
    encoder: NativeBert,
    tokenizer: Tokenizer,
    /// First dense layer of the head (BERT's pooler, RoBERTa's `classifier.dense`), then tanh.
    dense: Linear,
    /// The layer giving the logits.
    logits: Linear,
    output: Output,
    model_id: String,
    max_tokens: usize,
}

impl PairModel {
    /// Loads a sequence-classification BERT or RoBERTa from resolved files; `max_tokens` bounds
    /// each pair (both texts and the special tokens; longest first is truncated).
    pub fn load(files: &ModelFiles, max_tokens: usize) -> Result<Self, EmbedError> {
        Self::load_with_threads(files, max_tokens, 0)
    }

    /// [`Self::load`] with the forward pass on `threads` threads (0 = every core).
    pub fn load_with_threads(
        files: &ModelFiles,
        max_tokens: usize,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(&files.config)
            .map_err(|e| EmbedError::io(format!("read {}", files.config.display()), e))?;
        let config: PairConfig = serde_json::from_str(&text)
            .map_err(|e| EmbedError::InvalidModel(format!("{}: {e}", files.config.display())))?;
        let kind = config.model_type.as_deref().unwrap_or("bert");
        let roberta = match kind {
            "bert" => false,
            "roberta" => true,
            other => {
                return Err(EmbedError::InvalidModel(format!(
                    "verifier model_type {other:?} is not supported (BERT or RoBERTa \
                     sequence classification)"
                )))
            }
        };
        if !config.architectures.is_empty()
            && !config
                .architectures
                .iter()
                .any(|a| a.ends_with("ForSequenceClassification"))
        {
            return Err(EmbedError::InvalidModel(format!(
                "verifier architectures {:?}: expected a *ForSequenceClassification model \
                 (a cross-encoder)",
                config.architectures
            )));
        }
        if config.hidden_act != "gelu" {
            return Err(EmbedError::InvalidModel(format!(
                "verifier hidden_act {:?} is not supported (gelu)",
                config.hidden_act
            )));
        }
        // RoBERTa numbers positions from pad_token_id + 1.
        let position_offset = if roberta {
            config.pad_token_id.unwrap_or(1) + 1
        } else {
            0
        };
        let shape = Shape {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            layers: config.num_hidden_layers,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            position_offset,
        };
        let tensors = load_weights(&files.weights, &candle_core::Device::Cpu, false)?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let encoder = NativeBert::new(&tensors, shape, NativeOptions::detect(threads))?;
        let h = config.hidden_size;
        let (dense, logits) = if roberta {
            (
                Linear::load(&tensors, "classifier.dense", h)?,
                Linear::load(&tensors, "classifier.out_proj", h)?,
            )
        } else {
            (
                Linear::load(&tensors, "bert.pooler.dense", h)
                    .or_else(|_| Linear::load(&tensors, "pooler.dense", h))?,
                Linear::load(&tensors, "classifier", h)?,
            )
        };
        if dense.outputs() != h {
            return Err(EmbedError::InvalidModel(format!(
                "verifier head's dense layer has {} outputs, expected {h}",
                dense.outputs()
            )));
        }
        let output = output_of(logits.outputs(), &config.id2label)?;
        let max_tokens = max_tokens.clamp(4, encoder.max_tokens());
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(format!("truncation: {e}")))?;
        Ok(Self {
            encoder,
            tokenizer,
            dense,
            logits,
            output,
            model_id: files.model_id.clone(),
            max_tokens,
        })
    }

    /// How the model runs, for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "{} on native-{}-{} ({})",
            self.model_id,
            self.encoder.isa().name(),
            self.encoder.weight_format(),
            match self.output {
                Output::Sigmoid => "sigmoid",
                Output::Softmax { .. } => "softmax",
                Output::Entailment { .. } => "bidirectional entailment",
            }
        )
    }

    /// The logits of each (first, second) pair, in one forward pass.
    pub fn logits(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let cap = self.max_tokens * BYTES_PER_TOKEN_CAP;
        let mut ids = Vec::with_capacity(pairs.len());
        let mut types = Vec::with_capacity(pairs.len());
        for (a, b) in pairs {
            let encoding = self
                .tokenizer
                .encode((clip(a, cap), clip(b, cap)), true)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            ids.push(encoding.get_ids().to_vec());
            // A model with one token type (RoBERTa) is fed zeros, whatever the tokenizer says.
            types.push(if self.encoder.token_types() > 1 {
                encoding.get_type_ids().to_vec()
            } else {
                vec![0; encoding.get_ids().len()]
            });
        }
        let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let type_rows: Vec<&[u32]> = types.iter().map(Vec::as_slice).collect();
        let first = self.encoder.first_token(&seqs, &type_rows)?;
        Ok(first
            .iter()
            .map(|cls| {
                let pooled: Vec<f32> = self.dense.apply(cls).iter().map(|v| v.tanh()).collect();
                self.logits.apply(&pooled)
            })
            .collect())
    }
}

impl PairScorer for PairModel {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn score(&self, query: &str, stored: &str) -> Result<f32, EmbedError> {
        match self.output {
            Output::Sigmoid => {
                let l = self.logits(&[(query, stored)])?;
                Ok(sigmoid(first(&l, 0)?))
            }
            Output::Softmax { positive } => {
                let l = self.logits(&[(query, stored)])?;
                Ok(softmax_at(row(&l, 0)?, positive))
            }
            Output::Entailment { label } => {
                let l = self.logits(&[(query, stored), (stored, query)])?;
                Ok(softmax_at(row(&l, 0)?, label).min(softmax_at(row(&l, 1)?, label)))
            }
        }
    }
}

fn row(l: &[Vec<f32>], i: usize) -> Result<&[f32], EmbedError> {
    l.get(i)
        .map(Vec::as_slice)
        .ok_or_else(|| EmbedError::Internal("verifier returned too few rows".into()))
}

fn first(l: &[Vec<f32>], i: usize) -> Result<f32, EmbedError> {
    row(l, i)?
        .first()
        .copied()
        .ok_or_else(|| EmbedError::Internal("verifier returned no logit".into()))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax_at(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.get(i).map_or(0.0, |l| (l - max).exp() / sum)
}

/// Picks how logits become P(same) from the number of labels and their names.
fn output_of(labels: usize, id2label: &HashMap<String, String>) -> Result<Output, EmbedError> {
    let named = |want: &[&str]| {
        id2label.iter().find_map(|(id, name)| {
            let name = name.to_ascii_lowercase();
            want.iter()
                .any(|w| name == *w)
                .then(|| id.parse::<usize>().ok())
                .flatten()
                .filter(|&i| i < labels)
        })
    };
    match labels {
        0 => Err(EmbedError::InvalidModel(
            "verifier head has no outputs".into(),
        )),
        1 => Ok(Output::Sigmoid),
        _ => {
            if let Some(label) = named(&["entailment"]) {
                return Ok(Output::Entailment { label });
            }
            if labels == 2 {
                let positive =
                    named(&["duplicate", "paraphrase", "same", "equivalent", "1"]).unwrap_or(1);
                return Ok(Output::Softmax { positive });
            }
            Err(EmbedError::InvalidModel(format!(
                "verifier head has {labels} labels and none named \"entailment\" (id2label: \
                 {id2label:?})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_output_follows_the_labels() {
        assert_eq!(output_of(1, &HashMap::new()).unwrap(), Output::Sigmoid);
        assert_eq!(
            output_of(2, &HashMap::new()).unwrap(),
            Output::Softmax { positive: 1 }
        );
        assert_eq!(
            output_of(2, &labels(&[("0", "duplicate"), ("1", "different")])).unwrap(),
            Output::Softmax { positive: 0 }
        );
        assert_eq!(
            output_of(
                3,
                &labels(&[
                    ("0", "contradiction"),
                    ("1", "ENTAILMENT"),
                    ("2", "neutral")
                ])
            )
            .unwrap(),
            Output::Entailment { label: 1 }
        );
        let err = output_of(3, &labels(&[("0", "a"), ("1", "b"), ("2", "c")])).unwrap_err();
        assert!(err.to_string().contains("entailment"), "{err}");
        assert!(output_of(0, &HashMap::new()).is_err());
    }

    #[test]
    fn softmax_and_sigmoid_are_probabilities() {
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-6);
        assert!((softmax_at(&[1.0, 1.0], 0) - 0.5).abs() < 1e-6);
        assert!(softmax_at(&[1000.0, 0.0], 0) > 0.999);
        assert_eq!(softmax_at(&[1.0], 5), 0.0);
    }
}
