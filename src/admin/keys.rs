//! Deja keys managed on the admin listener (issue 16): `GET /admin/keys` lists every key (the
//! config file's and the admin API's, with their limits and what their budgets have left, never
//! a key or its full hash), `POST /admin/keys` makes one (the key is in that answer once, and
//! only its hash is kept), `DELETE /admin/keys/{name}` revokes one the admin API made.
//!
//! Keys made here are kept in `<cache.dir>/admin-keys.json` (their hashes and limits, written
//! to a temporary file and renamed, so a crash leaves the old list or the new one), read at
//! start, and merged into every config snapshot, a hot-reloaded one included: a request sees
//! them exactly as `[[keys]]` entries. The config file wins a conflict (a name or a key both
//! have): the admin key is left out, with a warning. At most [`MAX_ADMIN_KEYS`], so metric
//! labels by key name stay bounded. A key's usage counters are kept by name (`cache::budget`):
//! a key made again under a revoked key's name continues its spend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AdminState;
use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::config::keys::{new_key, validate_admin_key, KeyConfig, RawKey};
use crate::config::{Config, KeyHash};
use crate::server::AppState;

/// The file under `cache.dir`.
pub const FILE: &str = "admin-keys.json";
/// Keys the admin API keeps at most.
pub const MAX_ADMIN_KEYS: usize = 1000;
/// The largest admin-keys file read (1000 keys of a few hundred bytes fit many times over).
const MAX_FILE_BYTES: u64 = 4 << 20;
/// The largest `POST /admin/keys` body.
const MAX_BODY_BYTES: usize = 16 << 10;

pub fn file(config: &Config) -> PathBuf {
    config.cache.dir.join(FILE)
}

/// The keys kept in `path` (none when there is no file yet). Blocking.
pub fn load(path: &Path) -> Result<Vec<RawKey>, String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // No file yet; or no directory, which opening the store reports in its own words.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(format!("cannot read the admin keys in {shown}: {e}")),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "the admin keys in {shown} are over {MAX_FILE_BYTES} bytes: not a file deja wrote"
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read the admin keys in {shown}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the admin keys in {shown} are damaged ({e}); restore the file, or move it away to \
             start without the keys made through the admin API"
        )
    })
}

/// Writes `keys` to `path` atomically (a temporary file beside it, synced, then renamed).
fn save(path: &Path, keys: &[RawKey]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(tmp.as_file_mut(), keys)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub fn any_spend_limits(keys: &[RawKey]) -> bool {
    keys.iter()
        .any(|k| k.tpm.is_some() || k.budget_daily_usd.is_some() || k.budget_monthly_usd.is_some())
}

/// Makes `keys` the admin keys of `state` and of its current config snapshot. The admin-keys
/// lock is held across the swap, as hot reload holds it, so neither loses the other's change.
pub fn install(state: &AppState, keys: Vec<RawKey>) {
    let mut held = state.0.admin_keys.lock();
    *held = keys;
    let mut config = state.0.config.write();
    let mut next = (**config).clone();
    next.keys = next.keys.with_admin_keys(&held);
    *config = Arc::new(next);
}

/// `POST /admin/keys`: what a new key may do, as a `[[keys]]` entry says it (no `hash`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    namespace: Option<String>,
    models: Option<Vec<String>>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    budget_daily_usd: Option<f64>,
    budget_monthly_usd: Option<f64>,
    reserve_output_tokens: Option<u64>,
}

fn fail(e: ApiError) -> Response {
    e.into_response_for(Some(ApiKind::Chat))
}

/// The first 12 hex digits of a hash: enough to tell keys apart, not a key's whole digest.
fn short_hash(h: &KeyHash) -> String {
    let full = h.to_string();
    let cut = full.len().min("sha256:".len() + 12);
    format!("{}…", &full[..cut])
}

fn describe(state: &AppState, k: &KeyConfig) -> Value {
    let usd = |n: Option<u64>| n.map(|n| n as f64 / 1e9);
    let mut v = json!({
        "name": k.name,
        "source": if k.admin { "admin" } else { "config" },
        "hash": short_hash(&k.hash),
        "namespace": k.namespace,
        "models": k.models.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "budget_daily_usd": usd(k.budget_daily_nano),
        "budget_monthly_usd": usd(k.budget_monthly_nano),
        "reserve_output_tokens": k.reserve_output_tokens,
    });
    if k.has_spend_limits() {
        let left = state
            .0
            .ledger
            .remaining(k, crate::cache::budget::Now::system());
        v["remaining"] = json!({
            "tokens_this_minute": left.tokens.map(|(_, r, _)| r),
            "daily_usd": usd(left.daily_nano),
            "monthly_usd": usd(left.monthly_nano),
        });
    }
    v
}

/// A save's outcome (on its blocking thread) as the error the admin gets, if it failed.
fn saved_or_error(
    saved: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), ApiError> {
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!("saving the admin keys failed: {e}"))
    };
    match saved {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(failed(&e)),
    }
}

/// `GET /admin/keys`.
pub async fn list(State(state): State<AdminState>) -> Response {
    let config = state.app.config();
    let auth = match config.keys.auth {
        crate::config::AuthMode::Keys => "keys",
        crate::config::AuthMode::Passthrough => "passthrough",
    };
    let data: Vec<Value> = config
        .keys
        .keys
        .iter()
        .map(|k| describe(&state.app, k))
        .collect();
    Json(json!({"object": "list", "auth": auth, "data": data})).into_response()
}

/// `POST /admin/keys`: makes a key, keeps its hash, and answers it once.
pub async fn create(State(state): State<AdminState>, body: Body) -> Response {
    let app = &state.app;
    let bytes = match crate::server::read_body_within(app, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let asked: NewKey = match serde_path_to_error::deserialize(de) {
        Ok(k) => k,
        Err(e) => {
            let param = e.path().to_string();
            return fail(ApiError::invalid_request(
                format!("admin key: {}", e.inner()),
                (param != ".").then_some(param),
            ));
        }
    };
    let _one_at_a_time = app.0.admin_keys_write.lock().await;
    let mut keys = app.0.admin_keys.lock().clone();
    if keys.len() >= MAX_ADMIN_KEYS {
        return fail(ApiError::invalid_request(
            format!("this deja keeps at most {MAX_ADMIN_KEYS} keys made through the admin API; delete one first"),
            None,
        ));
    }
    let key = new_key();
    let raw = RawKey {
        name: asked.name,
        hash: KeyHash::of(&key).to_string(),
        namespace: asked.namespace,
        models: asked.models,
        rpm: asked.rpm,
        tpm: asked.tpm,
        budget_daily_usd: asked.budget_daily_usd,
        budget_monthly_usd: asked.budget_monthly_usd,
        reserve_output_tokens: asked.reserve_output_tokens,
    };
    let config = app.config();
    let made = match validate_admin_key(&raw, &config.keys) {
        Ok(k) => k,
        Err(problems) => {
            let p = &problems[0];
            let message = format!("admin key: {}: {}", p.path, p.message);
            return fail(if p.path == "name" && p.message.contains("exists") {
                ApiError::Conflict {
                    message,
                    param: "name".into(),
                }
            } else {
                ApiError::invalid_request(message, Some(p.path.clone()))
            });
        }
    };
    keys.push(raw);
    let path = file(&config);
    let list = keys.clone();
    let spends = made.has_spend_limits();
    let ledger = app.0.ledger.clone();
    let saved = tokio::task::spawn_blocking(move || {
        if spends {
            ledger.open_blocking();
        }
        save(&path, &list)
    })
    .await;
    if let Err(e) = saved_or_error(saved) {
        return fail(e);
    }
    install(app, keys);
    tracing::info!(key = %made.name, "admin: key made");
    let mut out = describe(app, &made);
    out["key"] = json!(key);
    out["note"] = json!("the key is shown once: deja keeps only its hash");
    (StatusCode::CREATED, Json(out)).into_response()
}

/// `DELETE /admin/keys/{name}`: revokes a key the admin API made; the next request with it is
/// a 401. A key of the config file is removed there (409 here).
pub async fn delete(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    let app = &state.app;
    let _one_at_a_time = app.0.admin_keys_write.lock().await;
    let config = app.config();
    let mut keys = app.0.admin_keys.lock().clone();
    let Some(at) = keys.iter().position(|k| k.name == name) else {
        return fail(match config.keys.keys.iter().any(|k| k.name == name) {
            true => ApiError::Conflict {
                message: format!(
                    "the key '{name}' is defined in the config file ([[keys]]): remove it there"
                ),
                param: "name".into(),
            },
            false => ApiError::UnknownId {
                message: format!("no key named '{name}'"),
                param: "name".into(),
            },
        });
    };
    keys.remove(at);
    let (path, list) = (file(&config), keys.clone());
    let saved = tokio::task::spawn_blocking(move || save(&path, &list)).await;
    if let Err(e) = saved_or_error(saved) {
        return fail(e);
    }
    install(app, keys);
    tracing::info!(key = %name, "admin: key deleted");
    Json(json!({"deleted": name})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_damage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE);
        assert!(load(&path).unwrap().is_empty(), "no file yet: no keys");
        let k = RawKey {
            name: "ops".into(),
            hash: KeyHash::of("dk-x").to_string(),
            namespace: None,
            models: Some(vec!["gpt-*".into()]),
            rpm: Some(5),
            tpm: None,
            budget_daily_usd: Some(1.5),
            budget_monthly_usd: None,
            reserve_output_tokens: None,
        };
        save(&path, std::slice::from_ref(&k)).unwrap();
        let back = load(&path).unwrap();
        assert_eq!((back[0].name.as_str(), back[0].rpm), ("ops", Some(5)));
        assert!(any_spend_limits(&back));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("dk-x"), "only the hash is kept");
        std::fs::write(&path, b"{not json").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains(FILE) && e.contains("damaged"), "{e}");
        std::fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.contains("over"),
            "a file past the read cap is refused: {e}"
        );
    }

    #[test]
    fn short_hashes_tell_keys_apart_without_the_digest() {
        let h = KeyHash::of("dk-a");
        let s = short_hash(&h);
        assert!(
            s.starts_with("sha256:") && s.len() < h.to_string().len(),
            "{s}"
        );
    }
}
