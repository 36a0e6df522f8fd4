//! The pair verifier (a cross-encoder on deja's native encoder) against an independent float64
//! reference: `tests/reference/pair_reference.py` writes two tiny random sequence classifiers
//! (a BERT one with a sigmoid head, a RoBERTa NLI one with three labels) in the Hugging Face
//! layout and computes their logits and P(same) with numpy. deja loads them through the real
//! resolution chain (local directory, SHA-256 checked) and must agree.

mod common;

use common::harness::{hash_model, Deja};
use common::mock_upstream::MockUpstream;
use deja::embed::{resolve_model, EmbedSettings, PairModel, PairScorer, ResolveOptions};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

#[derive(Deserialize)]
struct Case {
    query: String,
    stored: String,
    logits: Vec<f32>,
    score: f32,
}

fn options(dir: &Path) -> ResolveOptions {
    ResolveOptions {
        cache_dir: dir.join("cache"),
        hf_offline: true,
        hf_endpoint: None,
        hf_home: dir.join("hf"),
        hf_token: None,
        hf_timeout: std::time::Duration::from_secs(1),
        allow_pip: false,
        python: "python3".into(),
        pip_timeout: std::time::Duration::from_secs(1),
    }
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Runs the reference script into a fresh directory: the two model folders and the cases.
fn generate() -> (tempfile::TempDir, HashMap<String, Vec<Case>>) {
    let dir = tempfile::tempdir().unwrap();
    let python = common::binary::python_with_sdks();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/pair_reference.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .status()
        .expect("run the reference script");
    assert!(status.success(), "pair_reference.py failed");
    let text = std::fs::read_to_string(dir.path().join("reference.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

#[test]
fn cross_encoders_match_the_float64_reference() {
    let (dir, reference) = generate();

    for kind in ["bert", "roberta"] {
        let model_dir = dir.path().join(kind);
        let settings = EmbedSettings {
            model: model_dir.display().to_string(),
            sha256: Some(sha256(&model_dir.join("model.safetensors"))),
            ..EmbedSettings::default()
        };
        let files = resolve_model(&settings, &options(dir.path())).unwrap();
        let model = PairModel::load(&files, 64).unwrap();
        eprintln!("{}", model.describe());
        // On AMX the activations, not only the weights, are rounded to bf16 (8 bits of
        // mantissa) at every layer: its logits drift up to about 1e-2 from float64 on these
        // random models (0.007 seen), where the f16-weight kernels stay within 5e-3.
        let amx = model.describe().contains("amx");
        let (logit_bar, score_bar) = if amx { (2e-2, 5e-3) } else { (5e-3, 2e-3) };
        for case in &reference[kind] {
            let logits = model.logits(&[(&case.query, &case.stored)]).unwrap();
            assert_eq!(logits[0].len(), case.logits.len(), "{kind}");
            for (got, want) in logits[0].iter().zip(&case.logits) {
                assert!(
                    (got - want).abs() < logit_bar,
                    "{kind} {:?}: logits {:?}, reference {:?}",
                    (&case.query, &case.stored),
                    logits[0],
                    case.logits
                );
            }
            let score = model.score(&case.query, &case.stored).unwrap();
            assert!(
                (score - case.score).abs() < score_bar,
                "{kind} {:?}: P(same) {score}, reference {}",
                (&case.query, &case.stored),
                case.score
            );
        }
        // A pair far past the model's positions is truncated (longest first), not refused.
        let long = "how do i reset my password ".repeat(100);
        let s = model.score(&long, "where is my order").unwrap();
        assert!((0.0..=1.0).contains(&s), "{kind}: {s}");
        // The RoBERTa case is NLI: the score is the smaller entailment of the two directions,
        // so it is symmetric; the sigmoid head reads the pair in order.
        if kind == "roberta" {
            let c = &reference[kind][2];
            let (ab, ba) = (
                model.score(&c.query, &c.stored).unwrap(),
                model.score(&c.stored, &c.query).unwrap(),
            );
            assert!((ab - ba).abs() < 1e-6, "bidirectional: {ab} vs {ba}");
        }
    }

    // Weights that are not the pinned ones are refused before anything loads.
    let settings = EmbedSettings {
        model: dir.path().join("bert").display().to_string(),
        sha256: Some("0".repeat(64)),
        ..EmbedSettings::default()
    };
    let err = resolve_model(&settings, &options(dir.path())).unwrap_err();
    assert!(err.to_string().to_lowercase().contains("sha"), "{err}");

    // An embedder's folder (no classification head) is a clear error, not a silent score.
    std::fs::remove_file(dir.path().join("bert/model.safetensors")).unwrap();
    let files = deja::embed::ModelFiles {
        weights: dir.path().join("roberta/model.safetensors"),
        ..resolve_model(
            &EmbedSettings {
                model: dir.path().join("roberta").display().to_string(),
                ..EmbedSettings::default()
            },
            &options(dir.path()),
        )
        .unwrap()
    };
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.config).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertModel"]);
    std::fs::write(&files.config, config.to_string()).unwrap();
    let err = PairModel::load(&files, 64)
        .err()
        .expect("a BertModel is refused");
    assert!(
        err.to_string().contains("ForSequenceClassification"),
        "{err}"
    );
}

/// Through the proxy: a candidate the cosine and the lexical verifier leave open is served on
/// the model's yes (`x-deja-verified: model`, its score in `x-deja-verifier-score`, a `verify`
/// phase in Server-Timing) and missed on its no. The tiny random model's score for the pair is
/// known from the reference, so the bar is set just below it, then just above it.
#[tokio::test]
async fn the_verifier_model_serves_at_its_threshold_and_not_below() {
    let (dir, reference) = generate();
    let case = reference["bert"]
        .iter()
        .find(|c| c.query.contains("france") && c.stored.contains("germany"))
        .expect("the capitals case");
    let chat = |text: &str| serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    for (bar, served) in [(case.score - 0.01, true), (case.score + 0.01, false)] {
        let mock = MockUpstream::start().await;
        // Cosine and lexical bars out of reach, so only the model can serve.
        let rule = format!(
            "threshold = 0.9999\nverified_threshold = 0.9999\n[cache.verifier]\nmodel = \"{}\"\nband = 0.01\nthreshold = {bar}",
            dir.path().join("bert").display()
        );
        let d = Deja::start_with(&mock.base_url(), hash_model(), &rule, "").await;
        let auth = [("authorization", "Bearer k")];
        let first = d
            .post("/v1/chat/completions", &chat(&case.stored), &auth)
            .await;
        assert_eq!(first.header("x-deja-cache"), "miss");
        d.wait_entries(1).await;
        let r = d
            .post("/v1/chat/completions", &chat(&case.query), &auth)
            .await;
        let m = d.state.metrics();
        let calls = |v: &str| m.verifier_model.calls.with_label_values(&[v]).get();
        if served {
            assert_eq!(r.header("x-deja-cache"), "semantic-hit", "{:?}", r.headers);
            assert_eq!(r.header("x-deja-verified"), "model");
            let score: f32 = r.header("x-deja-verifier-score").parse().unwrap();
            assert!(
                (score - case.score).abs() < 2e-3,
                "{score} vs {}",
                case.score
            );
            assert!(r.header("server-timing").contains("verify;dur="));
            assert_eq!(mock.requests().len(), 1, "the hit made no upstream call");
            assert_eq!((calls("same"), calls("different")), (1, 0));
            assert_eq!(m.verifier_decisions.with_label_values(&["model"]).get(), 1);
        } else {
            assert_eq!(r.header("x-deja-cache"), "miss", "{:?}", r.headers);
            assert_eq!(mock.requests().len(), 2);
            assert_eq!((calls("same"), calls("different")), (0, 1));
        }
        d.stop().await;
    }
}
