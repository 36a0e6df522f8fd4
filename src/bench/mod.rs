//! `deja bench`: replays labeled data through the same cache code as the server (prompt
//! normalization, exact layer, per-scope index, precision guards, the hit rule in
//! [`crate::cache::engine::select`]) on a temporary store, sweeps the threshold and recommends
//! the lowest one that keeps served hits at the target precision. Embeddings are computed once
//! per dataset (batched, sorted by length) and cached on disk, so a second run, or a run with
//! `--no-guards`, only pays for the cache work. Deterministic for a given model and dataset.

pub mod dataset;
pub mod embeddings;
mod protocols;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::config::Config;
use crate::embed::ResolveOptions;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Protocol {
    /// cosine(a, b) for every pair.
    Pairwise,
    /// Insert every distinct `a`, then query each `b`.
    Cache,
    /// Replay a stream through a cold cache: hit or insert.
    Replay,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Pairwise => "pairwise",
            Protocol::Cache => "cache",
            Protocol::Replay => "replay",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// JSONL dataset (pairs `{"a","b","same"}` or stream `{"text","class"}`).
    #[arg(long)]
    pub dataset: PathBuf,
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Threshold sweep: start:end:step, one value, or several joined by commas. The default
    /// is fine-grained above 0.99, where high-precision thresholds live.
    #[arg(long, default_value = "0.70:0.99:0.01,0.991:0.999:0.001")]
    pub thresholds: String,
    /// The lexical verifier's sweep: `verified_threshold` values tried with the configured
    /// `threshold` (a second table in the report).
    #[arg(long, default_value = "0.80:0.99:0.01")]
    pub verified_thresholds: String,
    /// Precision the recommended threshold must keep.
    #[arg(long, default_value_t = 0.99)]
    pub target_precision: f64,
    /// Where report.json, report.csv and report.svg go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Disable the precision guards (to measure what they buy).
    #[arg(long)]
    pub no_guards: bool,
    /// Use only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Config file for the embedding model, index and cache settings (defaults when absent).
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
    /// Directory for cached dataset embeddings (default: the user cache dir).
    #[arg(long)]
    pub embedding_cache: Option<PathBuf>,
    /// The request model whose configured decision rule the `configured` row evaluates
    /// (per-model and per-route thresholds apply as in the server).
    #[arg(long, default_value = "")]
    pub model: String,
}

/// The decision rule the bench evaluates is the server's own ([`crate::cache::verify`]): the
/// sweeps vary its bars, the `configured` row is the rule the config ships, so `report.json`
/// scores exactly what the server serves.
pub use crate::cache::verify::Rule;

/// A sweep: `start:end:step`, one value, or several of those joined by commas (sorted, with
/// duplicates removed), e.g. `0.70:0.99:0.01,0.991:0.999:0.001`.
pub fn parse_thresholds(spec: &str) -> anyhow::Result<Vec<f32>> {
    let mut all = Vec::new();
    for part in spec.split(',') {
        all.extend(parse_range(part)?);
    }
    all.sort_by(f32::total_cmp);
    all.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    Ok(all)
}

fn parse_range(spec: &str) -> anyhow::Result<Vec<f32>> {
    let parts: Vec<&str> = spec.split(':').collect();
    let parse = |s: &str| -> anyhow::Result<f64> {
        s.trim()
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--thresholds: '{s}' is not a number"))
    };
    let (start, end, step) = match parts.as_slice() {
        [single] => {
            let v = parse(single)?;
            (v, v, 1.0)
        }
        [a, b, c] => (parse(a)?, parse(b)?, parse(c)?),
        _ => {
            anyhow::bail!("--thresholds must be start:end:step (e.g. 0.70:0.99:0.01) or one value")
        }
    };
    if !(-1.0..=1.0).contains(&start) || !(-1.0..=1.0).contains(&end) || start > end || step <= 0.0
    {
        anyhow::bail!("--thresholds: need -1 ≤ start ≤ end ≤ 1 and step > 0");
    }
    let n = ((end - start) / step + 1e-9).floor() as usize + 1;
    Ok((0..n).map(|i| (start + i as f64 * step) as f32).collect())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let thresholds = parse_thresholds(&args.thresholds)?;
    let config = if args.config.exists() {
        Config::load(&args.config)?
    } else {
        Config::from_toml_str("", std::env::vars(), std::path::Path::new("."))?
    };
    let data = dataset::load(&args.dataset, args.limit)?;
    match (args.protocol, &data) {
        (Protocol::Replay, dataset::Dataset::Pairs(_)) => {
            anyhow::bail!("the replay protocol needs a stream dataset")
        }
        (Protocol::Pairwise | Protocol::Cache, dataset::Dataset::Stream(_)) => {
            anyhow::bail!(
                "the {} protocol needs a pairs dataset",
                args.protocol.as_str()
            )
        }
        _ => {}
    }
    eprintln!(
        "deja bench: {} rows of {} ({}), protocol {}",
        data.len(),
        args.dataset.display(),
        data.kind(),
        args.protocol.as_str()
    );
    let settings = crate::embed::EmbedSettings::from(&config.embedding);
    let embedder = crate::embed::load_default(&settings, &ResolveOptions::from_env())?;
    let cache_dir = args
        .embedding_cache
        .clone()
        .unwrap_or_else(embeddings::default_dir);
    let embed_started = Instant::now();
    let vectors = embeddings::embed_dataset(&*embedder, &data, &cache_dir, settings.max_tokens)?;
    let embed_seconds = embed_started.elapsed().as_secs_f64();
    let pair = match &config.cache.verifier {
        Some(v) => {
            let threads = config.embedding.compute_threads;
            let model = crate::embed::load_verifier(v, threads, &ResolveOptions::from_env())?;
            eprintln!("verifier model: {}", model.describe());
            Some(model)
        }
        None => None,
    };
    let pair = pair.as_ref().map(|m| m as &dyn crate::embed::PairScorer);
    let guards = !args.no_guards;
    // The sweep's rules, then the configured rule last (evaluated in the same pass).
    let configured_rule = config.rule_for(&args.model);
    let mut rules: Vec<Rule> = thresholds
        .iter()
        .map(|&threshold| Rule::cosine(threshold, guards))
        .collect();
    let verified = parse_thresholds(&args.verified_thresholds)?;
    rules.extend(verified.iter().map(|&v| Rule {
        verified_threshold: v,
        guards,
        ..configured_rule
    }));
    rules.push(configured_rule);
    let mut audit = Vec::new();
    let (mut rows, ceiling) = match (&data, args.protocol) {
        (dataset::Dataset::Pairs(p), Protocol::Pairwise) => (
            protocols::pairwise(p, &vectors, &rules, pair, &mut audit),
            None,
        ),
        (dataset::Dataset::Pairs(p), Protocol::Cache) => (
            protocols::cache(
                p,
                &vectors,
                &rules,
                &config,
                embedder.clone(),
                pair,
                &mut audit,
            )?,
            None,
        ),
        (dataset::Dataset::Stream(s), Protocol::Replay) => {
            let (rows, ceiling) = protocols::replay(
                s,
                &vectors,
                &rules,
                &config,
                embedder.clone(),
                pair,
                &mut audit,
            )?;
            (rows, Some(ceiling))
        }
        _ => anyhow::bail!("protocol and dataset do not match"),
    };
    let (verifier_us_p50, verifier_us_p99) = verifier_latency(&vectors.texts.list);
    let model_us = pair.map(|p| model_latency(p, &vectors.texts.list));
    let configured = rows
        .pop()
        .map(|row| report::Configured::new(configured_rule, row));
    let mut verified_rows = rows.split_off(thresholds.len());
    for (row, v) in verified_rows.iter_mut().zip(&verified) {
        row.threshold = (*v as f64 * 1000.0).round() / 1000.0;
    }
    let report = report::Report {
        dataset: args
            .dataset
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        protocol: args.protocol.as_str().into(),
        model: embedder.model_id().into(),
        guards,
        target_precision: args.target_precision,
        recommended: report::recommend(&rows, args.target_precision),
        rows,
        verified_rows,
        configured,
        ceiling,
        rows_in_dataset: data.len(),
        verifier_us_p50,
        verifier_us_p99,
        model_us_p50: model_us.map(|m| m.0),
        model_us_p99: model_us.map(|m| m.1),
        wall_seconds: started.elapsed().as_secs_f64(),
        embed_seconds,
    };
    print!("{}", report.table());
    report.write(&args.out)?;
    report::write_false_hits(&args.out, audit)?;
    eprintln!(
        "wrote {}/report.{{json,csv,svg}} and the configured rule's false hits to {}/false-hits.jsonl",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

/// What the guards and the lexical verifier add to a semantic lookup, in microseconds (p50,
/// p99): both prompts' features and the comparisons, as the engine runs them per candidate,
/// timed over up to 5,000 pairs of neighbouring dataset texts.
fn verifier_latency(texts: &[String]) -> (f64, f64) {
    let us: Vec<f64> = texts
        .windows(2)
        .take(5_000)
        .map(|w| {
            let started = Instant::now();
            let (q, c) = (
                crate::cache::guards::Features::of(&w[0]),
                crate::cache::guards::Features::of(&w[1]),
            );
            std::hint::black_box((q.compare(&c), q.same_content(&c)));
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    percentiles(us)
}

/// What the verifier model adds to a lookup it scores, in microseconds (p50, p99): one
/// [`crate::embed::PairScorer::score`] of neighbouring dataset texts, over up to 300 pairs.
fn model_latency(pair: &dyn crate::embed::PairScorer, texts: &[String]) -> (f64, f64) {
    let us: Vec<f64> = texts
        .windows(2)
        .take(300)
        .map(|w| {
            let started = Instant::now();
            let _ = std::hint::black_box(pair.score(&w[0], &w[1]));
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    percentiles(us)
}

/// (p50, p99) of `us`, rounded to 0.01; zeros when empty.
fn percentiles(mut us: Vec<f64>) -> (f64, f64) {
    if us.is_empty() {
        return (0.0, 0.0);
    }
    us.sort_by(f64::total_cmp);
    let at = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    (
        (at(0.5) * 100.0).round() / 100.0,
        (at(0.99) * 100.0).round() / 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_specs() {
        let t = parse_thresholds("0.70:0.99:0.01").unwrap();
        assert_eq!(t.len(), 30);
        assert!((t[29] - 0.99).abs() < 1e-6);
        assert_eq!(parse_thresholds("0.9").unwrap(), vec![0.9]);
        assert!(parse_thresholds("0.9:0.8:0.01").is_err());
        assert!(parse_thresholds("a:b:c").is_err());
        // Ranges and values joined by commas: sorted, duplicates dropped.
        let t = parse_thresholds("0.99:0.999:0.001,0.9,0.99").unwrap();
        assert_eq!(t.len(), 11);
        assert_eq!((t[0], t[1]), (0.9, 0.99));
        assert!((t[10] - 0.999).abs() < 1e-6);
        assert!(parse_thresholds("0.9,x").is_err());
        let default = parse_thresholds("0.70:0.99:0.01,0.991:0.999:0.001").unwrap();
        assert_eq!(default.len(), 30 + 9);
    }

    #[test]
    fn the_configured_rule_follows_per_model_thresholds_and_guards() {
        let config = Config::from_toml_str(
            "[cache]\nthreshold = 0.97\nguards = false\n[[cache.thresholds]]\nmodel = \"gpt-4o*\"\nthreshold = 0.93\n",
            Vec::<(String, String)>::new(),
            std::path::Path::new("/"),
        )
        .unwrap();
        let any = config.rule_for("");
        assert_eq!((any.threshold, any.guards), (0.97, false));
        assert_eq!(
            any.verified_threshold, 0.97,
            "a config that sets only `threshold` keeps a plain cosine rule"
        );
        let gpt = config.rule_for("gpt-4o-mini");
        assert_eq!((gpt.threshold, gpt.verified_threshold), (0.93, 0.93));
        let both = Config::from_toml_str(
            "[cache]\nthreshold = 0.99\nverified_threshold = 0.9\n[[cache.thresholds]]\nmodel = \"x*\"\nthreshold = 0.995\nverified_threshold = 0.95\n",
            Vec::<(String, String)>::new(),
            std::path::Path::new("/"),
        )
        .unwrap();
        let d = both.rule_for("gpt");
        assert_eq!((d.threshold, d.verified_threshold), (0.99, 0.9));
        let x = both.rule_for("x1");
        assert_eq!((x.threshold, x.verified_threshold), (0.995, 0.95));
    }
}
