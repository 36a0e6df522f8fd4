//! Store put and get (by id and by exact key) with 2.5 KB answers and 384-d embeddings, in a
//! temporary directory with the default 200 ms background flush.

use criterion::{criterion_group, criterion_main, Criterion};
use deja::store::{CachedResponse, FinishReason, NewEntry, ScopeId, Store, StoreConfig, Usage};
use std::hint::black_box;
use std::time::Duration;

const DIM: usize = 384;

fn entry(i: u64) -> NewEntry {
    NewEntry {
        scope: ScopeId::from_bytes(&(i % 16).to_le_bytes()),
        prompt: format!("what is the answer to question number {i}?"),
        embedding: Some(
            (0..DIM)
                .map(|d| ((i as usize + d) % 13) as f32 / 13.0)
                .collect(),
        ),
        response: CachedResponse {
            model: "gpt-bench".into(),
            content: "lorem ipsum dolor sit amet ".repeat(95),
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 600,
            }),
            provider: "bench".into(),
            system_fingerprint: None,
            tool_calls: Vec::new(),
        },
        created_ms: i,
        expires_ms: u64::MAX,
        namespace: None,
    }
}

fn store(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let store = Store::open(&StoreConfig {
        max_entries: 0,
        ..StoreConfig::new(dir.path(), "bench-model", DIM)
    })
    .expect("open");
    const PRELOAD: u64 = 10_000;
    let ids: Vec<u64> = (0..PRELOAD)
        .map(|i| store.insert(entry(i)).expect("insert").id)
        .collect();
    let mut group = c.benchmark_group("store");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut next = PRELOAD;
    group.bench_function("put_2.5KB", |b| {
        b.iter(|| {
            next += 1;
            black_box(store.insert(entry(next)).expect("insert"))
        })
    });
    let mut i = 0usize;
    group.bench_function("get_by_id", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.get(ids[i]).expect("get"))
        })
    });
    let probes: Vec<NewEntry> = (0..1_000).map(entry).collect();
    group.bench_function("get_exact", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            let p = &probes[i];
            black_box(store.get_exact(p.scope, &p.prompt).expect("get"))
        })
    });
    group.bench_function("record_hit", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.record_hit(ids[i], i as u64).expect("hit"))
        })
    });
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
