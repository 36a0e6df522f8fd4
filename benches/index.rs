//! Index search latency by size and `ef`, on seeded clustered 384-d vectors: the flat scan
//! (exact) against the HNSW graph, to place `flat_max`. Sizes default to 10k and 100k; set
//! `DEJA_BENCH_INDEX_SIZES=10000` for a quicker run (building the 100k graph takes minutes on
//! 2 cores, even in parallel).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deja::index::synth::Synth;
use deja::index::{FlatIndex, HnswIndex, IndexConfig, VectorSearch, VectorWrite};
use std::hint::black_box;
use std::time::Duration;

const DIM: usize = 384;

fn sizes() -> Vec<usize> {
    std::env::var("DEJA_BENCH_INDEX_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000])
}

fn search(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_search_k5");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in sizes() {
        let mut synth = Synth::new(7, DIM, (n / 100).max(1));
        let vecs = synth.vectors(n);
        let queries: Vec<Vec<f32>> = (0..256)
            .map(|_| {
                let i = synth.pick(n);
                synth.perturb(&vecs[i], 0.017)
            })
            .collect();
        let mut flat = FlatIndex::new(DIM);
        for (id, v) in vecs.iter().enumerate() {
            flat.insert(id as u64, v).expect("insert");
        }
        // Parallel build: the graph is the same kind, and the bench stays minutes shorter.
        let mut hnsw = HnswIndex::new(&IndexConfig::default(), n);
        let items: Vec<(u64, &[f32])> = vecs
            .iter()
            .enumerate()
            .map(|(id, v)| (id as u64, v.as_slice()))
            .collect();
        hnsw.bulk_insert(&items).expect("bulk insert");
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("flat", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(flat.search(&queries[i], 5).expect("search"))
            })
        });
        for ef in [16usize, 64, 128] {
            hnsw.set_ef_search(ef);
            group.bench_with_input(BenchmarkId::new(format!("hnsw_ef{ef}"), n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    black_box(hnsw.search(&queries[i], 5).expect("search"))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
