//! The native CPU encoder: BERT's forward pass written for the shapes a cache sees.
//!
//! candle stays the loader (safetensors → tensors) and the GPU path; on CPU this module runs the
//! same arithmetic with three changes that profiles of candle's path called for:
//! - every linear weight is packed once at load into the matmul kernel's panel layout
//!   ([`gemm::PackedB`]) instead of being re-packed on every call; Q, K and V are one fused
//!   1152-wide product;
//! - the texts of a batch are concatenated, not padded: the linear layers see one
//!   `tokens × hidden` matrix and attention runs per text over its own rows, so a batch costs the
//!   sum of its lengths and no mask is needed;
//! - GELU, softmax and layer norm are vectorized polynomial loops (see [`ops`]), and the work is
//!   split over a dedicated rayon pool (column panels for the linears, (text, head) pairs for
//!   attention) whose size the caller sets, so concurrent requests never oversubscribe cores;
//! - where the CPU has AMX ([`Isa::Amx`]), the linears run on bf16 tiles ([`amx`]) with f32
//!   accumulation; attention, softmax and layer norm stay f32.
//!
//! The SIMD kernels are reachable only through the ISA tokens of [`isa`], which only runtime
//! detection creates, so safe code cannot run a kernel the CPU lacks. What tests and benchmarks
//! need from outside the crate (the tokens, [`gemm::matmul`], [`isa::Amx::matmul`]) is safe;
//! the partial products that threads write concurrently are `unsafe fn`s inside the crate.
//!
//! `tests/embed_reference.rs` holds it to the float64 reference (cosine ≥ 0.9999) and to candle's
//! own forward pass on the same weights.

pub mod amx;
pub mod gemm;
pub mod isa;
pub(crate) mod ops;

use super::EmbedError;
use candle_core::Tensor;
use gemm::{Epilogue, OutPtr, PackedB, Rows};
use isa::Isa;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// The architecture numbers the forward pass needs (from the model's config.json).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub max_positions: usize,
    pub eps: f32,
    /// Position id of a text's first token: 0 for BERT, `pad_token_id + 1` for RoBERTa (whose
    /// position table reserves the rows up to its padding id).
    pub position_offset: usize,
}

/// What a forward pass returns per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readout {
    /// Mean-pooled, L2-normalized (a sentence-transformer's embedding).
    Mean,
    /// The first token's final hidden state ([CLS] / `<s>`), as a classification head reads it.
    First,
}

struct Layer {
    qkv: PackedB,
    qkv_bias: Vec<f32>,
    out: PackedB,
    out_bias: Vec<f32>,
    ln1_gamma: Vec<f32>,
    ln1_beta: Vec<f32>,
    up: PackedB,
    up_bias: Vec<f32>,
    down: PackedB,
    down_bias: Vec<f32>,
    ln2_gamma: Vec<f32>,
    ln2_beta: Vec<f32>,
}

pub(crate) struct NativeBert {
    shape: Shape,
    isa: Isa,
    weights: &'static str,
    pool: rayon::ThreadPool,
    threads: usize,
    buffers: parking_lot::Mutex<Buffers>,
    word: Vec<f32>,
    vocab: usize,
    position: Vec<f32>,
    /// The token-type table, `types × hidden` (BERT has 2 rows, RoBERTa 1).
    token_types: Vec<f32>,
    types: usize,
    emb_gamma: Vec<f32>,
    emb_beta: Vec<f32>,
    layers: Vec<Layer>,
}

/// Batches up to this many tokens reuse the encoder's activation buffers (~14 MB for
/// MiniLM at this size); larger ones allocate their own and free them after.
const KEEP_BUFFERS_TOKENS: usize = 1024;

/// The activations of one forward pass: every element is written before it is read, so a
/// reused buffer is only resized, never cleared.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    up: Vec<f32>,
    /// The current linear layer's input as bf16 rows (AMX only).
    bf16: Vec<u16>,
}

impl Buffers {
    fn size(&mut self, tokens: usize, hidden: usize, intermediate: usize) {
        self.x.resize(tokens * hidden, 0.0);
        self.qkv.resize(tokens * 3 * hidden, 0.0);
        self.ctx.resize(tokens * hidden, 0.0);
        self.tmp.resize(tokens * hidden, 0.0);
        self.up.resize(tokens * intermediate, 0.0);
    }
}

/// Per-thread scratch for attention (scores can be 512 × 512 floats; reusing the buffers avoids
/// a page-faulting allocation per head).
struct Scratch {
    keys: PackedB,
    values: PackedB,
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        keys: PackedB::default(),
        values: PackedB::default(),
        scores: Vec::new(),
    });
}

/// How the encoder runs on this machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeOptions {
    /// Size of its compute pool (at least 1).
    pub threads: usize,
    pub isa: Isa,
    /// Linear weights stored as f16 (arithmetic stays f32). The AVX-512 and AVX2 kernels convert
    /// them in registers; the portable one uses f32 regardless.
    pub f16_weights: bool,
}

impl NativeOptions {
    /// The detected kernel family, f16 weights where it has them (`DEJA_NATIVE_WEIGHTS=f32`
    /// keeps f32, for comparisons).
    pub fn detect(threads: usize) -> Self {
        Self {
            threads,
            isa: Isa::detect(),
            f16_weights: std::env::var("DEJA_NATIVE_WEIGHTS").as_deref() != Ok("f32"),
        }
    }
}

impl NativeBert {
    /// Builds the encoder from the safetensors' tensors (names with or without a `bert.` or
    /// `roberta.` prefix).
    pub fn new(
        tensors: &HashMap<String, Tensor>,
        shape: Shape,
        options: NativeOptions,
    ) -> Result<Self, EmbedError> {
        // No check that the CPU runs `options.isa`: holding its token is the proof.
        let weights = match options.isa {
            Isa::Amx(_) => "bf16",
            Isa::Portable => "f32",
            _ if options.f16_weights => "f16",
            _ => "f32",
        };
        let pack = |src: &[f32], k: usize, n: usize| match weights {
            "bf16" => PackedB::pack_bf16_tiles(src, k, n, 1, k),
            "f16" => PackedB::pack_f16(src, k, n, 1, k),
            _ => PackedB::pack(src, k, n, 1, k),
        };
        if shape.heads == 0 || !shape.hidden.is_multiple_of(shape.heads) {
            return Err(EmbedError::InvalidModel(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                shape.hidden, shape.heads
            )));
        }
        let tensor = |name: &str| -> Result<&Tensor, EmbedError> {
            tensors
                .get(name)
                .or_else(|| tensors.get(&format!("bert.{name}")))
                .or_else(|| tensors.get(&format!("roberta.{name}")))
                .ok_or_else(|| EmbedError::InvalidModel(format!("missing tensor {name}")))
        };
        let rows_of = |name: &str| -> Result<usize, EmbedError> {
            Ok(tensor(name)?.dims().first().copied().unwrap_or(0))
        };
        let get = |name: &str, dims: &[usize]| -> Result<Vec<f32>, EmbedError> {
            let t = tensor(name)?;
            if t.dims() != dims {
                return Err(EmbedError::InvalidModel(format!(
                    "tensor {name} has shape {:?}, expected {dims:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (h, i) = (shape.hidden, shape.intermediate);
        // A linear weight is stored out × in; the product needs B[in][out] = W[out][in].
        let linear = |prefix: &str, n_in: usize, n_out: usize| -> Result<_, EmbedError> {
            let w = get(&format!("{prefix}.weight"), &[n_out, n_in])?;
            let b = get(&format!("{prefix}.bias"), &[n_out])?;
            Ok((w, b))
        };
        let vocab = rows_of("embeddings.word_embeddings.weight")?;
        let word = get("embeddings.word_embeddings.weight", &[vocab, h])?;
        let position = get(
            "embeddings.position_embeddings.weight",
            &[shape.max_positions, h],
        )?;
        let types = rows_of("embeddings.token_type_embeddings.weight")?;
        if types == 0 {
            return Err(EmbedError::InvalidModel(
                "empty token_type_embeddings".into(),
            ));
        }
        let token_types = get("embeddings.token_type_embeddings.weight", &[types, h])?;
        if shape.position_offset >= shape.max_positions {
            return Err(EmbedError::InvalidModel(format!(
                "position offset {} leaves no positions of {}",
                shape.position_offset, shape.max_positions
            )));
        }
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let p = format!("encoder.layer.{l}");
            let (wq, bq) = linear(&format!("{p}.attention.self.query"), h, h)?;
            let (wk, bk) = linear(&format!("{p}.attention.self.key"), h, h)?;
            let (wv, bv) = linear(&format!("{p}.attention.self.value"), h, h)?;
            // Fused QKV: rows of the three out × in weights stacked → (3h) × h, i.e. B = its
            // transpose, columns q | k | v.
            let wqkv: Vec<f32> = [wq, wk, wv].concat();
            let qkv_bias: Vec<f32> = [bq, bk, bv].concat();
            let (wo, out_bias) = linear(&format!("{p}.attention.output.dense"), h, h)?;
            let (wu, up_bias) = linear(&format!("{p}.intermediate.dense"), h, i)?;
            let (wd, down_bias) = linear(&format!("{p}.output.dense"), i, h)?;
            layers.push(Layer {
                qkv: pack(&wqkv, h, 3 * h),
                qkv_bias,
                out: pack(&wo, h, h),
                out_bias,
                ln1_gamma: get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_beta: get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                up: pack(&wu, h, i),
                up_bias,
                down: pack(&wd, i, h),
                down_bias,
                ln2_gamma: get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_beta: get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        let threads = options.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("deja-encoder-{i}"))
            .build()
            .map_err(|e| EmbedError::Internal(format!("encoder thread pool: {e}")))?;
        Ok(Self {
            shape,
            isa: options.isa,
            weights,
            pool,
            threads,
            buffers: parking_lot::Mutex::new(Buffers::default()),
            word,
            vocab,
            position,
            token_types,
            types,
            emb_gamma: get("embeddings.LayerNorm.weight", &[h])?,
            emb_beta: get("embeddings.LayerNorm.bias", &[h])?,
            layers,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// How the linear weights are held: `f32`, `f16` (converted in registers) or `bf16` (AMX
    /// tiles).
    pub fn weight_format(&self) -> &'static str {
        self.weights
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Rows of the token-type table (BERT 2, RoBERTa 1).
    pub fn token_types(&self) -> usize {
        self.types
    }

    /// Most tokens one text may have: the position table less the rows before the offset.
    pub fn max_tokens(&self) -> usize {
        self.shape.max_positions - self.shape.position_offset
    }

    /// Mean-pooled, L2-normalized embeddings of already tokenized texts (each at most
    /// [`Self::max_tokens`] ids, none empty).
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.check(seqs, None)?;
        Ok(self
            .pool
            .install(|| self.forward(seqs, None, Readout::Mean)))
    }

    /// The first token's final hidden state of each tokenized text, with its token types (a
    /// sentence pair: 0 for the first sentence, 1 for the second), for a classification head.
    pub fn first_token(
        &self,
        seqs: &[&[u32]],
        types: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.check(seqs, Some(types))?;
        Ok(self
            .pool
            .install(|| self.forward(seqs, Some(types), Readout::First)))
    }

    fn check(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<(), EmbedError> {
        for (i, seq) in seqs.iter().enumerate() {
            if seq.is_empty() || seq.len() > self.max_tokens() {
                return Err(EmbedError::Internal(format!(
                    "sequence of {} tokens (expected 1..={})",
                    seq.len(),
                    self.max_tokens()
                )));
            }
            if let Some(bad) = seq.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(EmbedError::Internal(format!(
                    "token id {bad} outside the vocabulary"
                )));
            }
            if let Some(types) = types {
                let t = types.get(i).copied().unwrap_or_default();
                if t.len() != seq.len() || t.iter().any(|&ty| ty as usize >= self.types) {
                    return Err(EmbedError::Internal(format!(
                        "token types of text {i} do not match its tokens or the model's {} types",
                        self.types
                    )));
                }
            }
        }
        if types.is_some_and(|t| t.len() != seqs.len()) {
            return Err(EmbedError::Internal("one token-type list per text".into()));
        }
        Ok(())
    }

    fn forward(
        &self,
        seqs: &[&[u32]],
        types: Option<&[&[u32]]>,
        readout: Readout,
    ) -> Vec<Vec<f32>> {
        let Shape {
            hidden: h,
            intermediate: inter,
            eps,
            ..
        } = self.shape;
        let isa = self.isa;
        // Row ranges of each text in the concatenated batch.
        let mut spans = Vec::with_capacity(seqs.len());
        let mut total = 0;
        for seq in seqs {
            spans.push(total..total + seq.len());
            total += seq.len();
        }

        // Activations: reused across calls while they stay small (the common case), so a
        // request does not pay for fresh, page-faulting allocations; large batches allocate.
        let mut reused = (total <= KEEP_BUFFERS_TOKENS)
            .then(|| self.buffers.try_lock())
            .flatten();
        let mut fresh = Buffers::default();
        let buffers = reused.as_deref_mut().unwrap_or(&mut fresh);
        buffers.size(total, h, inter);
        let Buffers {
            x,
            qkv,
            ctx,
            tmp,
            up,
            bf16,
        } = buffers;
        let zeros = vec![0.0f32; h];
        let offset = self.shape.position_offset;
        x.par_chunks_mut(h)
            .zip(
                seqs.iter()
                    .enumerate()
                    .flat_map(|(i, s)| {
                        let t = types.and_then(|t| t.get(i)).copied().unwrap_or_default();
                        s.iter()
                            .enumerate()
                            .map(move |(pos, id)| (pos, id, t.get(pos).copied().unwrap_or(0)))
                    })
                    .collect::<Vec<_>>(),
            )
            .for_each(|(row, (pos, &id, ty))| {
                let (id, pos, ty) = (id as usize, pos + offset, ty as usize);
                for (j, v) in row.iter_mut().enumerate() {
                    *v = self.word[id * h + j]
                        + self.position[pos * h + j]
                        + self.token_types[ty * h + j];
                }
                ops::add_layer_norm(isa, row, &zeros, &self.emb_gamma, &self.emb_beta, eps);
            });

        for layer in &self.layers {
            self.linear(
                x,
                h,
                total,
                &layer.qkv,
                &layer.qkv_bias,
                Epilogue::None,
                qkv,
                bf16,
            );
            self.attention(qkv, &spans, ctx);
            self.linear(
                ctx,
                h,
                total,
                &layer.out,
                &layer.out_bias,
                Epilogue::None,
                tmp,
                bf16,
            );
            self.rows_layer_norm(x, tmp, &layer.ln1_gamma, &layer.ln1_beta);
            self.linear(
                x,
                h,
                total,
                &layer.up,
                &layer.up_bias,
                Epilogue::Gelu,
                up,
                bf16,
            );
            self.linear(
                up,
                inter,
                total,
                &layer.down,
                &layer.down_bias,
                Epilogue::None,
                tmp,
                bf16,
            );
            self.rows_layer_norm(x, tmp, &layer.ln2_gamma, &layer.ln2_beta);
        }

        if readout == Readout::First {
            return spans
                .iter()
                .map(|span| x[span.start * h..(span.start + 1) * h].to_vec())
                .collect();
        }
        spans
            .iter()
            .map(|span| {
                let mut mean = vec![0.0f32; h];
                for row in x[span.start * h..span.end * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                // Mean then normalize: the 1/len factor cancels in the normalization.
                mean.iter_mut().for_each(|v| *v /= norm);
                mean
            })
            .collect()
    }

    /// `out = a · W + bias` over `rows` rows, column panels spread over the pool (AMX: `a` is
    /// first rounded into `bf16`).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        a: &[f32],
        lda: usize,
        rows: usize,
        w: &PackedB,
        bias: &[f32],
        epilogue: Epilogue,
        out: &mut [f32],
        bf16: &mut Vec<u16>,
    ) {
        let c = OutPtr::new(out, w.n());
        if let (Isa::Amx(amx), Some(_)) = (self.isa, w.bf16_tiles()) {
            let k = w.k();
            let ld = amx::size_rows(bf16, rows, k);
            let convert = |(src, dst): (&[f32], &mut [u16])| amx.convert_row(&src[..k], dst);
            if rows < 64 {
                a.chunks(lda).zip(bf16.chunks_mut(ld)).for_each(convert);
            } else {
                a.par_chunks(lda)
                    .zip(bf16.par_chunks_mut(ld))
                    .for_each(convert);
            }
            let a = amx::Bf16Rows { data: bf16, ld };
            gemm::tasks(rows, w, self.threads)
                .into_par_iter()
                .for_each(|(rows, panels)| {
                    // SAFETY: `gemm::tasks` gives every (row, panel) cell to exactly one task
                    // (its test `tasks_cover_every_cell_once`), so no two tasks write a cell,
                    // and `c` borrows `out` until they have all finished.
                    unsafe { amx.matmul_part(a, rows, w, Some(bias), epilogue, c, panels) };
                });
            return;
        }
        let a = Rows { data: a, ld: lda };
        let isa = self.isa;
        gemm::tasks(rows, w, self.threads)
            .into_par_iter()
            .for_each(|(rows, panels)| {
                // SAFETY: as above, `gemm::tasks` splits the cells between the tasks.
                unsafe { gemm::matmul_part(isa, a, rows, w, Some(bias), epilogue, c, panels) };
            });
    }

    /// Multi-head self-attention per text: `ctx[text, head] = softmax(Q Kᵀ/√d) V`.
    fn attention(&self, qkv: &[f32], spans: &[std::ops::Range<usize>], ctx: &mut [f32]) {
        let Shape {
            hidden: h, heads, ..
        } = self.shape;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let isa = self.isa;
        let c = OutPtr::new(ctx, h);
        let ld = 3 * h;
        let work: Vec<(usize, usize)> = (0..spans.len())
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        work.into_par_iter().for_each(|(s, head)| {
            let span = &spans[s];
            let len = span.len();
            let base = span.start * ld;
            let q = &qkv[base + head * d..];
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let Scratch {
                    keys,
                    values,
                    scores,
                } = &mut *scratch;
                // Kᵀ as a d × len operand, V as len × d, both read in place from qkv.
                keys.repack(&qkv[base + h + head * d..], d, len, 1, ld);
                values.repack(&qkv[base + 2 * h + head * d..], len, d, ld, 1);
                scores.clear();
                scores.resize(len * len, 0.0);
                gemm::matmul(
                    isa,
                    Rows { data: q, ld },
                    len,
                    keys,
                    None,
                    Epilogue::None,
                    scores,
                    len,
                );
                for row in scores.chunks_exact_mut(len) {
                    ops::softmax(isa, row, scale);
                }
                let out = c.offset(span.start, head * d);
                let scores = Rows {
                    data: scores,
                    ld: len,
                };
                let panels = 0..values.panels();
                // SAFETY: this task writes rows `span` and columns `head * d..(head + 1) * d`
                // of `ctx`; the spans of one batch are disjoint (consecutive in `forward`) and
                // so are the heads' columns, so no two (text, head) tasks share a cell, and `c`
                // borrows `ctx` until they have all finished.
                unsafe {
                    gemm::matmul_part(
                        isa,
                        scores,
                        0..len,
                        values,
                        None,
                        Epilogue::None,
                        out,
                        panels,
                    )
                };
            });
        });
    }

    /// `x[r] = LayerNorm(x[r] + add[r])` for every row.
    fn rows_layer_norm(&self, x: &mut [f32], add: &[f32], gamma: &[f32], beta: &[f32]) {
        let h = self.shape.hidden;
        let (isa, eps) = (self.isa, self.shape.eps);
        // Rows are cheap (~0.3 µs each): only large batches are worth splitting.
        if x.len() / h < 64 {
            for (row, add) in x.chunks_exact_mut(h).zip(add.chunks_exact(h)) {
                ops::add_layer_norm(isa, row, add, gamma, beta, eps);
            }
        } else {
            x.par_chunks_mut(h)
                .zip(add.par_chunks(h))
                .for_each(|(row, add)| ops::add_layer_norm(isa, row, add, gamma, beta, eps));
        }
    }
}
