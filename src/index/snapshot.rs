//! Index snapshots: the HNSW graphs written to disk, so a restart reloads them (seconds)
//! instead of rebuilding them from the store (~400 inserts/s on 2 cores: 40 minutes at 1M).
//! The store stays the source of truth: a snapshot only saves work, and whatever it lacks or
//! holds in excess is reconciled against the store at start (see
//! [`crate::cache::engine::load_index`]).
//!
//! # Layout
//!
//! In the snapshot root (`<cache.dir>/index-snapshot/`):
//! - `CURRENT`: the name of the generation to load, replaced atomically;
//! - `gen-<n>/manifest.json`: format, the store's instance id, model and dimension, and per
//!   HNSW scope its files with their sizes and blake3 sums;
//! - `gen-<n>/<scope>.hnsw.graph` and `.hnsw.data` (hnsw_rs's dump, tombstones included) and
//!   `<scope>.ids` (the scope's live ids, little-endian u64, sorted).
//!
//! Flat scopes are not written: the store scan at start re-creates them as fast as it reads
//! them. A generation is written in a `.tmp` directory, synced, renamed, and only then named in
//! `CURRENT`, so a crash mid-snapshot leaves the previous generation in force.
//!
//! # Trust
//!
//! hnsw_rs's reader asserts, unwraps and even exits the process on malformed input, so nothing
//! reaches it unverified: every file's size and blake3 must match the manifest, and the manifest
//! must name this store (instance id), model and dimension. Anything else discards the snapshot
//! with a warning and the index is rebuilt from the store, never served wrong.

use super::hnsw::HnswIndex;
use super::IndexConfig;
use crate::store::{EntryId, ScopeId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bumped when the manifest or file layout changes; other versions are ignored.
pub const FORMAT: u32 = 1;

/// The snapshot root's name inside the cache directory, beside the store.
pub const DIR_NAME: &str = "index-snapshot";

const CURRENT: &str = "CURRENT";
const MANIFEST: &str = "manifest.json";

/// What a snapshot must match to be applied: the store it was taken from and its vectors' model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTag {
    pub store_id: String,
    pub model_id: String,
    pub dim: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is not usable: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    #[serde(flatten)]
    tag: SnapshotTag,
    created_ms: u64,
    scopes: Vec<ScopeFiles>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ScopeFiles {
    scope: String,
    /// hnsw_rs's basename (`<basename>.hnsw.graph`, `.hnsw.data`).
    basename: String,
    nodes: usize,
    live: usize,
    graph: FileSum,
    data: FileSum,
    ids: FileSum,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileSum {
    name: String,
    bytes: u64,
    blake3: String,
}

/// One scope's graph, as handed to [`write`] (taken under the scope's read lock).
pub(crate) struct ScopeDump<'a> {
    pub scope: ScopeId,
    pub index: &'a HnswIndex,
}

/// What one snapshot wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub scopes: usize,
    /// Graph nodes written (live and tombstoned).
    pub nodes: usize,
    pub bytes: u64,
}

/// A fresh generation directory under `root`, written by [`Writer::scope`] then committed.
pub(crate) struct Writer {
    root: PathBuf,
    name: String,
    tmp: PathBuf,
    manifest: Manifest,
    stats: SnapshotStats,
}

impl Writer {
    pub(crate) fn begin(root: &Path, tag: &SnapshotTag) -> Result<Writer, SnapshotError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let created_ms = crate::store::now_ms();
        // Generations sort by name; a clash within one millisecond takes the next number.
        let mut n = created_ms;
        let (name, tmp) = loop {
            let name = format!("gen-{n:020}");
            let tmp = root.join(format!("{name}.tmp"));
            if !root.join(&name).exists() && !tmp.exists() {
                break (name, tmp);
            }
            n += 1;
        };
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        Ok(Writer {
            root: root.to_path_buf(),
            name,
            tmp,
            manifest: Manifest {
                format: FORMAT,
                tag: tag.clone(),
                created_ms,
                scopes: Vec::new(),
            },
            stats: SnapshotStats::default(),
        })
    }

    /// Writes one scope's graph and live ids. The caller holds the scope's read lock.
    pub(crate) fn scope(&mut self, dump: ScopeDump<'_>) -> Result<(), SnapshotError> {
        let hex = dump.scope.to_hex();
        let invalid = |message: String| SnapshotError::Invalid {
            path: self.tmp.clone(),
            message,
        };
        let (basename, live) = dump.index.dump(&self.tmp, &hex).map_err(invalid)?;
        let ids_name = format!("{hex}.ids");
        let mut bytes = Vec::with_capacity(live.len() * 8);
        for id in &live {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        let ids_path = self.tmp.join(&ids_name);
        std::fs::write(&ids_path, &bytes).map_err(io_err(&ids_path))?;
        let files = ScopeFiles {
            scope: hex,
            nodes: dump.index.node_count(),
            live: live.len(),
            graph: sum_file(&self.tmp, &format!("{basename}.hnsw.graph"), true)?,
            data: sum_file(&self.tmp, &format!("{basename}.hnsw.data"), true)?,
            ids: sum_file(&self.tmp, &ids_name, true)?,
            basename,
        };
        self.stats.scopes += 1;
        self.stats.nodes += files.nodes;
        self.stats.bytes += files.graph.bytes + files.data.bytes + files.ids.bytes;
        self.manifest.scopes.push(files);
        Ok(())
    }

    /// Makes the generation durable and current, then deletes older ones.
    pub(crate) fn commit(self) -> Result<SnapshotStats, SnapshotError> {
        let manifest = self.tmp.join(MANIFEST);
        let body =
            serde_json::to_vec_pretty(&self.manifest).map_err(|e| SnapshotError::Invalid {
                path: manifest.clone(),
                message: e.to_string(),
            })?;
        write_synced(&manifest, &body)?;
        sync_dir(&self.tmp)?;
        let dir = self.root.join(&self.name);
        std::fs::rename(&self.tmp, &dir).map_err(io_err(&dir))?;
        sync_dir(&self.root)?;
        let current_tmp = self.root.join(format!("{CURRENT}.tmp"));
        write_synced(&current_tmp, self.name.as_bytes())?;
        let current = self.root.join(CURRENT);
        std::fs::rename(&current_tmp, &current).map_err(io_err(&current))?;
        sync_dir(&self.root)?;
        remove_others(&self.root, &self.name);
        Ok(self.stats.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Uncommitted (an error, or a panic): the half-written generation goes.
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Deletes every generation (and leftover temporary) under `root` but `keep`.
fn remove_others(root: &Path, keep: &str) {
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("gen-") && name != keep {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not delete an old index snapshot");
            }
        }
    }
}

fn write_synced(path: &Path, body: &[u8]) -> Result<(), SnapshotError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(body).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    // Directories can be opened for fsync on Unix; elsewhere renames are durable on their own.
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Size and blake3 of `dir/name`, optionally fsyncing it first.
fn sum_file(dir: &Path, name: &str, sync: bool) -> Result<FileSum, SnapshotError> {
    let path = dir.join(name);
    let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
    if sync {
        f.sync_all().map_err(io_err(&path))?;
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(&path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        name: name.to_string(),
        bytes,
        blake3: h.finalize().to_hex().to_string(),
    })
}

/// A committed snapshot, opened and checked against the store it is meant for.
pub struct Snapshot {
    dir: PathBuf,
    manifest: Manifest,
}

/// One scope of a [`Snapshot`], with its live ids read and verified.
pub struct SnapshotScope {
    pub scope: ScopeId,
    pub live: HashSet<EntryId>,
    files: ScopeFiles,
}

impl SnapshotScope {
    /// Graph nodes in the snapshot (live and tombstoned).
    pub fn nodes(&self) -> usize {
        self.files.nodes
    }
}

impl Snapshot {
    /// The current generation under `root`, if any. `Ok(None)` when there is none; an error
    /// when one exists but cannot be used (another store, model or format, a damaged manifest).
    pub fn open(root: &Path, tag: &SnapshotTag) -> Result<Option<Snapshot>, SnapshotError> {
        let current = root.join(CURRENT);
        let name = match std::fs::read_to_string(&current) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&current)(e)),
        };
        let invalid = |path: &Path, message: String| SnapshotError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if !name.starts_with("gen-") || name.contains(['/', '\\']) || name.contains("..") {
            return Err(invalid(
                &current,
                format!("names a bad generation {name:?}"),
            ));
        }
        let dir = root.join(&name);
        let path = dir.join(MANIFEST);
        let body = std::fs::read(&path).map_err(io_err(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| invalid(&path, e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(invalid(
                &path,
                format!("format {} (this deja reads {FORMAT})", manifest.format),
            ));
        }
        if manifest.tag != *tag {
            return Err(invalid(
                &path,
                format!(
                    "taken from store {} with {} ({}-d), this store is {} with {} ({}-d)",
                    manifest.tag.store_id,
                    manifest.tag.model_id,
                    manifest.tag.dim,
                    tag.store_id,
                    tag.model_id,
                    tag.dim
                ),
            ));
        }
        for s in &manifest.scopes {
            let plain = |n: &str| !n.contains(['/', '\\']) && !n.contains("..");
            if !(plain(&s.basename)
                && plain(&s.graph.name)
                && plain(&s.data.name)
                && plain(&s.ids.name))
            {
                return Err(invalid(
                    &path,
                    format!("scope {} names files outside it", s.scope),
                ));
            }
        }
        Ok(Some(Snapshot { dir, manifest }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn created_ms(&self) -> u64 {
        self.manifest.created_ms
    }

    /// Every scope with its live ids; each ids file is verified first.
    pub fn scopes(&self) -> Result<Vec<SnapshotScope>, SnapshotError> {
        let mut out = Vec::with_capacity(self.manifest.scopes.len());
        for f in &self.manifest.scopes {
            let path = self.dir.join(&f.ids.name);
            let invalid = |message: String| SnapshotError::Invalid {
                path: path.clone(),
                message,
            };
            let scope = hex::decode(&f.scope)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(ScopeId)
                .ok_or_else(|| invalid(format!("bad scope id {:?}", f.scope)))?;
            let raw = std::fs::read(&path).map_err(io_err(&path))?;
            let sum = FileSum {
                name: f.ids.name.clone(),
                bytes: raw.len() as u64,
                blake3: blake3::hash(&raw).to_hex().to_string(),
            };
            if sum != f.ids {
                return Err(invalid("size or checksum differs from the manifest".into()));
            }
            let live: HashSet<EntryId> = raw
                .chunks_exact(8)
                .filter_map(|c| <[u8; 8]>::try_from(c).ok().map(u64::from_le_bytes))
                .collect();
            if live.len() != f.live || raw.len() != f.live * 8 {
                return Err(invalid(format!(
                    "lists {} distinct ids, the manifest says {}",
                    live.len(),
                    f.live
                )));
            }
            out.push(SnapshotScope {
                scope,
                live,
                files: f.clone(),
            });
        }
        Ok(out)
    }

    /// Verifies a scope's graph files and loads them. Takes the live ids (they become the
    /// index's own set). Seconds at 1M nodes.
    pub fn load(
        &self,
        cfg: &IndexConfig,
        scope: SnapshotScope,
    ) -> Result<HnswIndex, SnapshotError> {
        let f = &scope.files;
        for expected in [&f.graph, &f.data] {
            let got = sum_file(&self.dir, &expected.name, false)?;
            if got != *expected {
                return Err(SnapshotError::Invalid {
                    path: self.dir.join(&expected.name),
                    message: "size or checksum differs from the manifest".into(),
                });
            }
        }
        HnswIndex::load(cfg, &self.dir, &f.basename, scope.live).map_err(|message| {
            SnapshotError::Invalid {
                path: self.dir.clone(),
                message,
            }
        })
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
