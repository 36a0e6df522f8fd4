//! The `meta` tree: schema version, embedding model id and dimension, written when a store is
//! created and checked on every open, so vectors from one model are never searched with
//! another's. It never decides what to do about a mismatch beyond reporting it.
//!
//! An older schema is migrated here, before the store is used ([`super::migrate`]).
//!
//! It also holds a random instance id, made when the store is created: files derived from a
//! store (index snapshots) record it, so they are never applied to another store that happens
//! to use the same ids.
//!
//! Next to sled's files it writes a small marker file, because sled treats a damaged log as a
//! torn write and recovers by truncating it: a store whose files were overwritten would
//! otherwise reopen as a silently empty one. Metadata missing while the marker exists is
//! reported as corruption instead.

use super::{migrate, StoreConfig, StoreError};
use sled::Tree;
use std::path::Path;

/// Bumped whenever the layout of any tree changes; an older store is migrated on open
/// ([`super::migrate`]). 1: bincode 1 entries; 2: postcard entries ([`super::codec`]); 3: exact
/// keys hash the prompt's exact form ([`super::exact_key`]); 4: answers carry tool calls
/// ([`super::CachedResponse::tool_calls`]).
pub const SCHEMA_VERSION: u32 = 4;

const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_MODEL: &[u8] = b"model_id";
const KEY_DIM: &[u8] = b"dim";
const KEY_INSTANCE: &[u8] = b"instance_id";

/// Written once the metadata is durable; its presence means "this directory holds a store".
pub const MARKER_FILE: &str = "deja-store";

/// Creates the metadata of a new store, or checks an existing store's against `cfg`. Returns
/// the store's instance id (hex).
pub(crate) fn create_or_verify(
    trees: &migrate::Trees<'_>,
    cfg: &StoreConfig,
    path: &Path,
) -> Result<String, StoreError> {
    verify(trees, cfg, path)?;
    instance_id(trees.meta, path)
}

/// The store's instance id, made on first use (stores created before it existed get one too).
fn instance_id(meta: &Tree, path: &Path) -> Result<String, StoreError> {
    let db = |e| StoreError::from_sled(path, e);
    if let Some(v) = meta.get(KEY_INSTANCE).map_err(db)? {
        return Ok(hex::encode(v));
    }
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(path.to_string_lossy().as_bytes());
    let hash = h.finalize();
    let id = &hash.as_bytes()[..16];
    meta.insert(KEY_INSTANCE, id).map_err(db)?;
    meta.flush().map_err(db)?;
    Ok(hex::encode(id))
}

fn verify(trees: &migrate::Trees<'_>, cfg: &StoreConfig, path: &Path) -> Result<(), StoreError> {
    let (meta, entries) = (trees.meta, trees.entries);
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let db = |e| StoreError::from_sled(path, e);
    let Some(version) = meta.get(KEY_SCHEMA).map_err(db)? else {
        if !entries.is_empty() {
            return Err(corrupt("entries present but no metadata".to_string()));
        }
        if path.join(MARKER_FILE).exists() {
            return Err(corrupt(format!(
                "metadata missing although {MARKER_FILE} shows a store was created here: \
                 sled recovered an empty database from damaged files"
            )));
        }
        meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
            .map_err(db)?;
        meta.insert(KEY_MODEL, cfg.model_id.as_bytes())
            .map_err(db)?;
        meta.insert(KEY_DIM, &(cfg.dim as u64).to_be_bytes())
            .map_err(db)?;
        meta.flush().map_err(db)?;
        return write_marker(cfg, path);
    };
    let version = <[u8; 4]>::try_from(version.as_ref())
        .map(u32::from_be_bytes)
        .map_err(|_| corrupt("schema version is not 4 bytes".to_string()))?;
    if !(migrate::BINCODE_SCHEMA..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::SchemaMismatch {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let model = meta
        .get(KEY_MODEL)
        .map_err(db)?
        .and_then(|v| String::from_utf8(v.to_vec()).ok())
        .ok_or_else(|| corrupt("model id missing or not UTF-8".to_string()))?;
    let dim = meta
        .get(KEY_DIM)
        .map_err(db)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("dimension missing or not 8 bytes".to_string()))?;
    if model != cfg.model_id || dim != cfg.dim as u64 {
        return Err(StoreError::ModelMismatch {
            stored: describe(&model, dim),
            configured: describe(&cfg.model_id, cfg.dim as u64),
        });
    }
    // Only once the store is known to be ours: a mismatched one is left as it is.
    if version == migrate::BINCODE_SCHEMA {
        migrate::from_bincode(meta, entries, KEY_SCHEMA, path)?;
    }
    if version <= migrate::PROMPT_KEY_SCHEMA {
        migrate::rekey_exact(trees, KEY_SCHEMA, path)?;
    }
    if version <= migrate::EXACT_FORM_SCHEMA {
        migrate::add_tool_calls(meta, entries, KEY_SCHEMA, path)?;
        write_marker(cfg, path)?;
    }
    if !path.join(MARKER_FILE).exists() {
        // Created by a run that crashed between the metadata flush and the marker.
        write_marker(cfg, path)?;
    }
    Ok(())
}

fn write_marker(cfg: &StoreConfig, path: &Path) -> Result<(), StoreError> {
    let body = format!(
        "deja store\nschema_version = {SCHEMA_VERSION}\nmodel_id = {}\ndim = {}\n",
        cfg.model_id, cfg.dim
    );
    let io = |source| StoreError::Io {
        path: path.join(MARKER_FILE),
        source,
    };
    let tmp = path.join(format!("{MARKER_FILE}.tmp"));
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path.join(MARKER_FILE)).map_err(io)
}

fn describe(model: &str, dim: u64) -> String {
    format!("{model} ({dim}-d)")
}
