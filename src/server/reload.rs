//! Hot reload: on SIGHUP or when the config file changes, re-read it; if it is valid, swap in
//! the new thresholds, guards, routes, providers and LLM judge; if not, keep the running config
//! and log every problem. Settings that need a restart (listen address, store, model, body limit) are
//! reported, not silently ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::cache::EngineSettings;
use crate::config::Config;
use crate::providers::RouteSettings;
use crate::server::build_router;
use crate::server::state::AppState;

/// Re-reads the config file and applies it. Returns the problems when it was rejected.
pub fn reload(state: &AppState) -> Result<(), String> {
    let Some(path) = state.0.config_path.clone() else {
        return Err("no config file to reload".into());
    };
    let old = state.config();
    let current = state.router();
    let result = Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|new| {
            // Same providers: keep the router's connection pools, breakers and counters.
            let router = if new.providers == old.providers {
                current
                    .with_routes(new.routes.iter().map(RouteSettings::from).collect())
                    .map_err(|e| e.to_string())
            } else {
                build_router(&new).map_err(|e| e.to_string())
            };
            router.map(|r| (new, r))
        });
    match result {
        Ok((mut new, router)) => {
            // Held until the new config is in place, as `admin::keys::install` holds it.
            let admin_keys = state.0.admin_keys.lock();
            new.keys = new.keys.with_admin_keys(&admin_keys);
            new.log_warnings();
            for note in restart_only_changes(&old, &new) {
                tracing::warn!("config reload: {note} changed; it takes effect after a restart");
            }
            if let Some(engine) = state.engine() {
                engine.set_settings(EngineSettings::from(&new.cache));
            }
            let router = Arc::new(router);
            let judge = state.judge_for(&new, &router);
            *state.0.router.write() = router;
            *state.0.judge.write() = judge;
            *state.0.config.write() = Arc::new(new);
            drop(admin_keys);
            state.metrics().reloads.with_label_values(&["ok"]).inc();
            tracing::info!(path = %path.display(), "config reloaded");
            Ok(())
        }
        Err(problems) => {
            state
                .metrics()
                .reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(path = %path.display(), "config reload rejected, keeping the running config: {problems}");
            Err(problems)
        }
    }
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if old.server.max_body_bytes != new.server.max_body_bytes {
        out.push("server.max_body_bytes");
    }
    if old.cache.dir != new.cache.dir {
        out.push("cache.dir");
    }
    if old.cache.max_entries != new.cache.max_entries {
        out.push("cache.max_entries");
    }
    if old.embedding.model != new.embedding.model || old.embedding.device != new.embedding.device {
        out.push("embedding");
    }
    if old.index.flat_max != new.index.flat_max || old.index.ef_search != new.index.ef_search {
        out.push("index");
    }
    // The model loads at start; its threshold and band are part of the rule and reload.
    let model = |c: &Config| {
        c.cache.verifier.as_ref().map(|v| {
            (
                v.model.clone(),
                v.revision.clone(),
                v.sha256.clone(),
                v.max_tokens,
            )
        })
    };
    if model(old) != model(new) {
        out.push("cache.verifier model");
    }
    out
}

/// Reloads on SIGHUP and on changes to the config file (debounced), until the task is dropped.
pub fn spawn_watchers(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let path = state.0.config_path.clone()?;
    let watch = state.config().server.watch_config;
    Some(tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let _watcher = if watch {
            file_watcher(&path, tx.clone())
        } else {
            None
        };
        #[cfg(unix)]
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        while rx.recv().await.is_some() {
            // Editors write in several steps: let them finish, then reload once.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&st)).await;
        }
    }))
}

fn file_watcher(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let target: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let dir = target.parent()?.to_path_buf();
    let name = target.file_name()?.to_os_string();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let relevant = event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()));
            let changes = matches!(
                event.kind,
                notify::EventKind::Modify(_) | notify::EventKind::Create(_)
            );
            if relevant && changes {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(
        |e| tracing::warn!(error = %e, "config file watcher unavailable; SIGHUP still reloads"),
    )
    .ok()?;
    // Watch the directory: editors replace files by rename, which a file watch would miss.
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, "cannot watch config directory; SIGHUP still reloads");
        return None;
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[cache]\ndir = \"/tmp/deja-reload-test\"\n{extra}");
        Config::from_toml_str(
            &text,
            Vec::<(String, String)>::new(),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn a_new_verifier_model_needs_a_restart_but_its_bars_reload() {
        let none = config("");
        let a = config("[cache.verifier]\nmodel = \"/m/a\"\nthreshold = 0.5");
        let a_stricter = config("[cache.verifier]\nmodel = \"/m/a\"\nthreshold = 0.8\nband = 0.9");
        let b = config("[cache.verifier]\nmodel = \"/m/b\"");
        assert_eq!(restart_only_changes(&none, &a), ["cache.verifier model"]);
        assert_eq!(restart_only_changes(&a, &b), ["cache.verifier model"]);
        assert!(restart_only_changes(&a, &a_stricter).is_empty());
        assert_eq!(
            a_stricter.rule_for("x").model.map(|m| m.threshold),
            Some(0.8)
        );
    }
}
