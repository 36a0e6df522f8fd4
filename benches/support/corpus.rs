//! The corpus of real texts the scale benches share (`index_scale`, `pg_scale`): every distinct
//! text of the shared datasets (133,689), then word windows of them (4–12 words) round-robin,
//! embedded with the default model and cached like `deja bench`'s embeddings (the cache key is
//! the exact text list, so both benches reuse one embedding run of the same `--corpus`).
//! Held-out queries are every `n`-th text; a query's nearest neighbours are often other
//! windows of the same sentence, as a cache's paraphrases are.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

use deja::bench::dataset::{self, Texts};
use deja::bench::embeddings::{default_dir, embed_texts, Vectors};
use deja::embed::{resolve_model, BertEmbedder, EmbedSettings, Embedder, ResolveOptions};

/// Texts the scale benches embed by default: 1M entries plus 2,000 held-out queries.
pub const DEFAULT_CORPUS: usize = 1_002_000;

/// Every distinct text of the shared datasets, in file order.
pub fn base_texts(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut texts = Texts::default();
    for name in [
        "qqp-pairs.jsonl",
        "paraphrase-pairs.jsonl",
        "clinc150-stream.jsonl",
        "sharegpt-stream.jsonl",
    ] {
        dataset::load(&dir.join(name), None)?.add_texts(&mut texts);
    }
    Ok(texts.list)
}

/// `n` distinct texts: the base texts, then round `r` adds the `r`-th word window of every
/// base text that has one (windows of 4–12 words, longest first).
pub fn corpus(base: &[String], n: usize) -> Texts {
    let mut out = Texts::default();
    for t in base.iter().take(n) {
        out.add(t);
    }
    let words: Vec<Vec<&str>> = base
        .iter()
        .map(|t| t.split_whitespace().collect())
        .collect();
    let windows = |w: &[&str]| -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for len in (4..=12.min(w.len().saturating_sub(1))).rev() {
            for start in 0..=w.len() - len {
                v.push((start, len));
            }
        }
        v
    };
    let all: Vec<Vec<(usize, usize)>> = words.iter().map(|w| windows(w)).collect();
    let mut round = 0;
    while out.list.len() < n {
        let mut added = false;
        for (w, wins) in words.iter().zip(&all) {
            if out.list.len() >= n {
                break;
            }
            if let Some(&(s, l)) = wins.get(round) {
                out.add(&w[s..s + l].join(" "));
                added = true;
            }
        }
        if !added {
            break;
        }
        round += 1;
    }
    out
}

/// The first `want` corpus texts embedded with the default model (from the cache when an
/// earlier run embedded them), and the model's id.
pub fn embed(datasets: &Path, want: usize) -> anyhow::Result<(Vectors, String)> {
    let t = Instant::now();
    let base = base_texts(datasets)?;
    let texts = corpus(&base, want);
    anyhow::ensure!(
        texts.list.len() == want,
        "the datasets give only {} distinct texts",
        texts.list.len()
    );
    eprintln!(
        "corpus: {} base texts, {} texts in all ({:.1}s)",
        base.len(),
        texts.list.len(),
        t.elapsed().as_secs_f64()
    );
    let settings = EmbedSettings::default();
    let files = resolve_model(&settings, &ResolveOptions::from_env())?;
    let model = BertEmbedder::load(&files, &settings)?;
    eprintln!("encoder: {}", model.backend());
    let v = embed_texts(&model, texts, &default_dir(), settings.max_tokens)?;
    Ok((v, model.model_id().to_string()))
}

/// Held-out queries: every `stride`-th text, so they spread over base texts and windows alike.
pub fn split(total: usize, queries: usize) -> (Vec<usize>, Vec<usize>) {
    let stride = (total / queries.max(1)).max(2);
    let (mut entries, mut held) = (Vec::new(), Vec::new());
    for i in 0..total {
        if i % stride == 1 && held.len() < queries {
            held.push(i);
        } else {
            entries.push(i);
        }
    }
    (entries, held)
}
