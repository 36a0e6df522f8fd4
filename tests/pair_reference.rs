//! The pair verifier (a cross-encoder on deja's native encoder) against an independent float64
//! reference: `tests/reference/pair_reference.py` writes two tiny random sequence classifiers
//! (a BERT one with a sigmoid head, a RoBERTa NLI one with three labels) in the Hugging Face
//! layout and computes their logits and P(same) with numpy. deja loads them through the real
//! resolution chain (local directory, SHA-256 checked) and must agree.

mod common;

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

#[test]
fn cross_encoders_match_the_float64_reference() {
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
    let reference: HashMap<String, Vec<Case>> = serde_json::from_str(&text).unwrap();

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
        for case in &reference[kind] {
            let logits = model.logits(&[(&case.query, &case.stored)]).unwrap();
            assert_eq!(logits[0].len(), case.logits.len(), "{kind}");
            for (got, want) in logits[0].iter().zip(&case.logits) {
                assert!(
                    (got - want).abs() < 5e-3,
                    "{kind} {:?}: logits {:?}, reference {:?}",
                    (&case.query, &case.stored),
                    logits[0],
                    case.logits
                );
            }
            let score = model.score(&case.query, &case.stored).unwrap();
            assert!(
                (score - case.score).abs() < 2e-3,
                "{kind} {:?}: P(same) {score}, reference {}",
                (&case.query, &case.stored),
                case.score
            );
        }
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
