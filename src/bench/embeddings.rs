//! Dataset embeddings for the bench: every distinct text embedded once, in batches of similar
//! length (so padding wastes little), with progress on stderr, and cached on disk keyed by
//! model, token limit and the exact texts, so re-runs skip the model.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dataset::{Dataset, Texts};
use crate::embed::Embedder;

pub struct Vectors {
    pub dim: usize,
    pub texts: Texts,
    data: Vec<f32>,
}

impl Vectors {
    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn of(&self, text: &str) -> Option<&[f32]> {
        self.texts.id(text).map(|i| self.get(i))
    }
}

pub fn default_dir() -> PathBuf {
    std::env::var_os("DEJA_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("deja")
                .join("bench-embeddings")
        })
}

pub fn embed_dataset(
    embedder: &dyn Embedder,
    data: &Dataset,
    cache_dir: &Path,
    max_tokens: usize,
) -> anyhow::Result<Vectors> {
    let mut texts = Texts::default();
    data.add_texts(&mut texts);
    embed_texts(embedder, texts, cache_dir, max_tokens)
}

/// Embeds every text of `texts` (the index of a text is its row), or reads them from the cache.
pub fn embed_texts(
    embedder: &dyn Embedder,
    texts: Texts,
    cache_dir: &Path,
    max_tokens: usize,
) -> anyhow::Result<Vectors> {
    let dim = embedder.dim();
    let mut key = blake3::Hasher::new();
    key.update(embedder.model_id().as_bytes());
    key.update(&(max_tokens as u64).to_le_bytes());
    // Vectors differ in the last bits between kernel families and weight formats.
    key.update(embedder.arithmetic().as_bytes());
    for t in &texts.list {
        key.update(t.as_bytes());
        key.update(&[0]);
    }
    let file = cache_dir.join(format!("{}.f32", &key.finalize().to_hex()[..32]));
    if let Some(data) = read_cached(&file, texts.list.len() * dim) {
        eprintln!(
            "embeddings: {} texts from cache {}",
            texts.list.len(),
            file.display()
        );
        return Ok(Vectors { dim, texts, data });
    }

    let mut order: Vec<usize> = (0..texts.list.len()).collect();
    order.sort_by_key(|&i| texts.list[i].len());
    let mut data = vec![0f32; texts.list.len() * dim];
    let started = Instant::now();
    let mut last_report = Instant::now();
    let batch = 32;
    for (n, chunk) in order.chunks(batch).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(|&i| texts.list[i].as_str()).collect();
        let vecs = embedder.embed_batch(&refs)?;
        for (&i, v) in chunk.iter().zip(vecs) {
            data[i * dim..(i + 1) * dim].copy_from_slice(&v);
        }
        if last_report.elapsed().as_secs() >= 10 {
            let done = ((n + 1) * batch).min(order.len());
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "embeddings: {done}/{} ({rate:.0}/s, ~{:.0}s left)",
                order.len(),
                (order.len() - done) as f64 / rate.max(1e-9)
            );
            last_report = Instant::now();
        }
    }
    eprintln!(
        "embeddings: {} texts in {:.1}s",
        texts.list.len(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = write_cached(&file, &data) {
        eprintln!("embeddings: could not cache to {}: {e}", file.display());
    }
    Ok(Vectors { dim, texts, data })
}

fn read_cached(path: &Path, expected: usize) -> Option<Vec<f32>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() != expected * 4 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn write_cached(path: &Path, data: &[f32]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let mut buf = Vec::with_capacity(data.len() * 4);
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
