//! The in-process hit path, without HTTP: `CacheEngine::lookup` on a real engine (real model,
//! native encoder, temporary sled store, default config) seeded with ten support questions.
//!
//! - `exact`: a seeded prompt again (exact key in sled; no model);
//! - `semantic_repeat`: the same paraphrase every time (the embedding LRU answers; index search,
//!   guards and the store read remain);
//! - `semantic_new`: a new paraphrase every iteration (one forward pass + search + guards);
//! - `miss`: a new unrelated prompt (forward pass + search, nothing close enough).
//!
//! `cargo bench --bench hit_path`. The HTTP-level figures are `benches/load.rs`'s.

#[path = "support/prompts.rs"]
mod prompts;

use criterion::{criterion_group, criterion_main, Criterion};
use deja::cache::{CacheEngine, Lookup, LookupTrace, Rule};
use deja::config::Config;
use deja::server;
use deja::store::{CachedResponse, FinishReason, ScopeId};
use prompts::{paraphrase, unrelated, TOPICS};
use std::time::Duration;

fn engine(rt: &tokio::runtime::Runtime) -> (CacheEngine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[cache]\ndir = \"{}\"\n[index]\nsnapshot = false\n[[providers]]\nname = \"p\"\n\
         kind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[routes]]\nmodel = \"*\"\n\
         providers = [\"p\"]\n",
        dir.path().join("store").display()
    );
    let config =
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), dir.path()).expect("config");
    let settings = deja::embed::EmbedSettings::from(&config.embedding);
    let embedder = deja::embed::load_default(&settings, &deja::embed::ResolveOptions::from_env())
        .expect("model");
    let engine = server::open_engine(&config, embedder).expect("engine");
    rt.block_on(async {
        for t in TOPICS {
            let prompt = format!("How do I {t}?");
            let v = engine.embedder().embed(&prompt).await.expect("embed");
            let answer = CachedResponse {
                model: "gpt-4o-mini".into(),
                content: format!("Here is how to {t}."),
                finish_reason: FinishReason::Stop,
                usage: None,
                provider: "bench".into(),
                system_fingerprint: None,
                tool_calls: Vec::new(),
            };
            engine
                .insert(
                    scope(),
                    prompt,
                    Some(v),
                    answer,
                    Duration::from_secs(3600),
                    None,
                )
                .await
                .expect("insert");
        }
    });
    (engine, dir)
}

fn scope() -> ScopeId {
    ScopeId::from_bytes(b"bench-hit-path")
}

fn kind(l: &Lookup) -> &'static str {
    match l {
        Lookup::Exact(_) => "exact",
        Lookup::Semantic { .. } => "semantic",
        Lookup::Uncertain { .. } | Lookup::Miss { .. } => "miss",
    }
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (engine, _dir) = engine(&rt);
    let lookup = |prompt: &str| {
        rt.block_on(engine.lookup(
            scope(),
            prompt,
            true,
            Rule::cosine(0.80, true),
            &mut LookupTrace::default(),
        ))
        .expect("lookup")
    };
    // Each case must take the path it is named after, or its timing means nothing.
    let exact = format!("How do I {}?", TOPICS[0]);
    assert_eq!(kind(&lookup(&exact)), "exact");
    let repeat = paraphrase(1);
    assert_eq!(kind(&lookup(&repeat)), "semantic");
    assert_eq!(kind(&lookup(&unrelated(0, 0))), "miss");

    let mut group = c.benchmark_group("hit_path");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("exact", |b| b.iter(|| lookup(&exact)));
    group.bench_function("semantic_repeat", |b| b.iter(|| lookup(&repeat)));
    let (mut next, mut semantic) = (100usize, 0usize);
    group.bench_function("semantic_new", |b| {
        b.iter(|| {
            next += 1;
            if kind(&lookup(&paraphrase(next))) == "semantic" {
                semantic += 1;
            }
        })
    });
    eprintln!(
        "semantic_new: {semantic} of {} lookups were semantic hits",
        next - 100
    );
    let mut n = 0usize;
    group.bench_function("miss", |b| {
        b.iter(|| {
            n += 1;
            lookup(&unrelated(1, n))
        })
    });
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
