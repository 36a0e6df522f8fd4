//! The Hugging Face Hub source: the HF cache when offline, otherwise hf-hub's blocking client
//! on a thread of its own with a deadline. It returns paths or a one-line reason; it never
//! verifies, and never blocks its caller longer than `hf_timeout`.
//!
//! Why hf-hub 0.4 and not 1.0: 0.4's `api::sync` is a small blocking ureq client that reads
//! and writes the standard HF cache layout (`HF_HOME/hub/models--owner--name/snapshots/..`).
//! 1.0 is async-first on reqwest/tokio and pulls in the hf-xet transfer stack; deja fetches
//! three files once, at startup or from `deja model fetch`, outside any runtime, so the small
//! synchronous client is the better trade. 0.4 has no socket timeouts, hence the thread.

use super::resolve::{ResolveOptions, REQUIRED_FILES};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;
use std::sync::mpsc;

fn repo(model: &str, revision: Option<&str>) -> Repo {
    match revision {
        Some(rev) => Repo::with_revision(model.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(model.to_string(), RepoType::Model),
    }
}

/// The three files of `model` from the HF cache or the Hub, or why not.
pub(crate) fn fetch(
    model: &str,
    revision: Option<&str>,
    opts: &ResolveOptions,
) -> Result<[PathBuf; 3], String> {
    let cache = Cache::new(opts.hf_home.join("hub"));
    let cache_repo = cache.repo(repo(model, revision));
    if let [Some(c), Some(t), Some(w)] = REQUIRED_FILES.map(|f| cache_repo.get(f)) {
        return Ok([c, t, w]);
    }
    if opts.hf_offline {
        return Err(format!(
            "offline (HF_HUB_OFFLINE) and not complete in the HF cache {}",
            opts.hf_home.join("hub").display()
        ));
    }

    let (tx, rx) = mpsc::channel();
    let model_owned = model.to_string();
    let revision_owned = revision.map(str::to_string);
    let opts_owned = opts.clone();
    let spawned = std::thread::Builder::new()
        .name("deja-hf-hub".into())
        .spawn(move || {
            let result = download(&model_owned, revision_owned.as_deref(), &opts_owned);
            // The receiver may have given up already; nothing to do then.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the download thread: {e}"));
    }
    // On timeout the thread is left to finish or fail on its own: ureq has no cancel, and a
    // late download only fills the HF cache for the next start.
    match rx.recv_timeout(opts.hf_timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no answer from {} within {:?} (network unreachable?)",
            endpoint(opts),
            opts.hf_timeout
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the download thread failed unexpectedly".to_string())
        }
    }
}

fn endpoint(opts: &ResolveOptions) -> String {
    opts.hf_endpoint
        .clone()
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

fn download(
    model: &str,
    revision: Option<&str>,
    opts: &ResolveOptions,
) -> Result<[PathBuf; 3], String> {
    let mut builder = ApiBuilder::from_cache(Cache::new(opts.hf_home.join("hub")))
        .with_progress(false)
        .with_endpoint(endpoint(opts));
    if opts.hf_token.is_some() {
        builder = builder.with_token(opts.hf_token.clone());
    }
    let api = builder.build().map_err(|e| format!("client: {e}"))?;
    let api_repo = api.repo(repo(model, revision));
    let mut out: [PathBuf; 3] = Default::default();
    for (slot, file) in out.iter_mut().zip(REQUIRED_FILES) {
        *slot = api_repo
            .get(file)
            .map_err(|e| format!("{file} from {}: {e}", endpoint(opts)))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn opts(home: &std::path::Path, endpoint: String, offline: bool) -> ResolveOptions {
        ResolveOptions {
            cache_dir: home.join("deja"),
            hf_offline: offline,
            hf_endpoint: Some(endpoint),
            hf_home: home.join("hf"),
            hf_token: None,
            hf_timeout: Duration::from_millis(500),
            allow_pip: false,
            python: "python3".into(),
            pip_timeout: Duration::from_secs(1),
        }
    }

    /// A server that accepts and never answers must not hang resolution.
    #[test]
    fn silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let err = fetch(
            "acme/model",
            None,
            &opts(tmp.path(), format!("http://{addr}"), false),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("no answer"), "{err}");
        drop(listener);
    }

    #[test]
    fn refused_connection_fails_fast_with_a_reason() {
        // Bind then drop: the port is (very likely) closed, so connect is refused at once.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch(
            "acme/model",
            None,
            &opts(tmp.path(), format!("http://{addr}"), false),
        )
        .unwrap_err();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn offline_reads_a_populated_hf_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("hf/hub/models--acme--model");
        let snapshot = repo_dir.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "abc123").unwrap();
        for f in REQUIRED_FILES {
            std::fs::write(snapshot.join(f), f).unwrap();
        }
        let o = opts(tmp.path(), "http://offline.invalid".into(), true);
        let files = fetch("acme/model", None, &o).unwrap();
        assert_eq!(files[2], snapshot.join("model.safetensors"));
        let err = fetch("acme/other", None, &o).unwrap_err();
        assert!(err.contains("offline"), "{err}");
    }
}
