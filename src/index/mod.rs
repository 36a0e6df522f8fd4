//! The per-scope vector index: given a scope and a query embedding, return the most similar
//! stored entries. It owns only vectors and entry ids (never prompts or answers: those live in
//! [`crate::store`], which is the source of truth the index is rebuilt from at start).
//!
//! # Layout
//!
//! - [`vector`]: validation, L2 normalization and the dot product every kind shares.
//! - [`flat`]: [`FlatIndex`], an exact scan over a contiguous buffer; small scopes use it and it
//!   is the reference that recall tests hold the graph to.
//! - [`hnsw`]: [`HnswIndex`], an hnsw_rs graph with tombstones (hnsw_rs cannot delete).
//! - [`scoped`]: [`ScopedIndex`], one [`ScopeIndex`] per [`crate::store::ScopeId`] behind its
//!   own lock.
//! - [`snapshot`]: HNSW graphs written to disk and reloaded at start, checked against the store.
//! - `build`: background promotion (flat → HNSW past [`IndexConfig::flat_max`]) and rebuilds
//!   (past [`IndexConfig::rebuild_tombstone_fraction`]) on their own threads.
//!
//! Similarity is cosine on L2-normalized vectors, in [-1, 1]; **higher is more similar**.
//! Everything here is synchronous and may take milliseconds: callers run it off the async
//! runtime (`spawn_blocking` or a dedicated thread). Nothing here panics on bad input: a wrong
//! dimension, NaN or a zero vector is an [`IndexError`].

mod build;
pub mod flat;
pub mod hnsw;
pub mod scoped;
pub mod snapshot;
#[doc(hidden)]
pub mod synth;
pub mod vector;

pub use flat::FlatIndex;
pub use hnsw::HnswIndex;
pub use scoped::{IndexStats, ScopedIndex};
pub use snapshot::{Snapshot, SnapshotError, SnapshotStats, SnapshotTag};

use crate::store::EntryId;

/// Largest dimension accepted. hnsw_rs's dot distance asserts `dot <= 1`; the graph stores
/// vectors scaled just below unit length (see [`vector::GRAPH_SCALE_SQ`]) so that rounding can
/// never reach that bound, which holds for dimensions up to this one.
pub const MAX_DIM: usize = 8192;

/// Tuning of every scope's index.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexConfig {
    /// Embedding dimension; every vector inserted or searched must have it.
    pub dim: usize,
    /// A scope holding at most this many vectors is scanned exactly; past it, it is promoted to
    /// an HNSW graph (built in the background; the flat scan keeps answering meanwhile).
    pub flat_max: usize,
    /// HNSW links per node and layer (hnsw_rs `max_nb_connection`).
    pub hnsw_m: usize,
    /// HNSW candidate list while inserting.
    pub ef_construction: usize,
    /// HNSW candidate list while searching (raised to `k` when `k` is larger).
    pub ef_search: usize,
    /// A graph whose tombstones exceed this fraction of its nodes is rebuilt in the background.
    pub rebuild_tombstone_fraction: f32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            dim: 384,
            flat_max: 10_000,
            hnsw_m: 16,
            ef_construction: 200,
            ef_search: 64,
            rebuild_tombstone_fraction: 0.2,
        }
    }
}

/// The `[index]` section. `dim` is not configured but the embedder's, known once the model is
/// loaded: this leaves the default's, and the caller sets it
/// (`IndexConfig { dim, ..IndexConfig::from(&config.index) }`).
impl From<&crate::config::IndexConfig> for IndexConfig {
    fn from(x: &crate::config::IndexConfig) -> IndexConfig {
        IndexConfig {
            flat_max: x.flat_max,
            hnsw_m: x.hnsw_m,
            ef_construction: x.ef_construction,
            ef_search: x.ef_search,
            rebuild_tombstone_fraction: x.rebuild_tombstone_fraction,
            ..IndexConfig::default()
        }
    }
}

impl IndexConfig {
    /// Rejects values that would make hnsw_rs exit or the index misbehave.
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad = |why: String| Err(IndexError::InvalidConfig(why));
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("dim must be in 1..={MAX_DIM}, got {}", self.dim));
        }
        // hnsw_rs calls process::exit above 256 links; 2 is the least that makes a graph.
        if !(2..=128).contains(&self.hnsw_m) {
            return bad(format!("hnsw_m must be in 2..=128, got {}", self.hnsw_m));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return bad("ef_construction and ef_search must be at least 1".to_string());
        }
        let f = self.rebuild_tombstone_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return bad(format!(
                "rebuild_tombstone_fraction must be in (0, 1], got {f}"
            ));
        }
        Ok(())
    }
}

/// One search result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    pub id: EntryId,
    /// Cosine similarity in [-1, 1]; higher is more similar.
    pub similarity: f32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    #[error("vector has {got} dimensions, the index expects {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("vector contains NaN or infinite values")]
    NonFinite,
    #[error("vector has zero length and no direction")]
    ZeroVector,
    #[error("entry {0} is already in the index")]
    DuplicateId(EntryId),
    #[error("entry id {0} does not fit this platform's index ids")]
    IdOutOfRange(EntryId),
    #[error("invalid index configuration: {0}")]
    InvalidConfig(String),
}

/// The read side of an index (qdrant's split: searching needs only `&self`).
pub trait VectorSearch {
    /// The `k` most similar live vectors, most similar first.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, IndexError>;
    /// Live (searchable) vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn contains(&self, id: EntryId) -> bool;
}

/// The write side of an index.
pub trait VectorWrite {
    /// Adds `vector` (normalized on the way in) under `id`; an id already present is an error.
    fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<(), IndexError>;
    /// Makes `id` unsearchable; false if it was not live.
    fn remove(&mut self, id: EntryId) -> bool;
}

/// One scope's index, whichever kind its size calls for.
pub enum ScopeIndex {
    Flat(FlatIndex),
    Hnsw(HnswIndex),
}

impl ScopeIndex {
    pub fn kind(&self) -> &'static str {
        match self {
            ScopeIndex::Flat(_) => "flat",
            ScopeIndex::Hnsw(_) => "hnsw",
        }
    }

    /// Removed ids still held by the graph (always 0 for flat, which deletes for real).
    pub fn tombstones(&self) -> usize {
        match self {
            ScopeIndex::Flat(_) => 0,
            ScopeIndex::Hnsw(h) => h.tombstone_count(),
        }
    }

    /// [`VectorWrite::insert`] for a vector [`vector::prepare`] already checked.
    pub(crate) fn insert_prepared(&mut self, id: EntryId, v: &[f32]) -> Result<(), IndexError> {
        match self {
            ScopeIndex::Flat(f) => f.push_prepared(id, v),
            ScopeIndex::Hnsw(h) => h.insert_prepared(id, v),
        }
    }

    /// [`VectorSearch::search`] for a query [`vector::prepare`] already checked.
    pub(crate) fn search_prepared(&self, q: &[f32], k: usize) -> Vec<Neighbor> {
        match self {
            ScopeIndex::Flat(f) => f.search_prepared(q, k),
            ScopeIndex::Hnsw(h) => h.search_prepared(q, k),
        }
    }
}

impl VectorSearch for ScopeIndex {
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, IndexError> {
        match self {
            ScopeIndex::Flat(f) => f.search(query, k),
            ScopeIndex::Hnsw(h) => h.search(query, k),
        }
    }

    fn len(&self) -> usize {
        match self {
            ScopeIndex::Flat(f) => f.len(),
            ScopeIndex::Hnsw(h) => h.len(),
        }
    }

    fn contains(&self, id: EntryId) -> bool {
        match self {
            ScopeIndex::Flat(f) => f.contains(id),
            ScopeIndex::Hnsw(h) => h.contains(id),
        }
    }
}

impl VectorWrite for ScopeIndex {
    fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<(), IndexError> {
        match self {
            ScopeIndex::Flat(f) => f.insert(id, vector),
            ScopeIndex::Hnsw(h) => h.insert(id, vector),
        }
    }

    fn remove(&mut self, id: EntryId) -> bool {
        match self {
            ScopeIndex::Flat(f) => f.remove(id),
            ScopeIndex::Hnsw(h) => h.remove(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_ones_are_rejected() {
        assert!(IndexConfig::default().validate().is_ok());
        for cfg in [
            IndexConfig {
                dim: 0,
                ..Default::default()
            },
            IndexConfig {
                hnsw_m: 300,
                ..Default::default()
            },
            IndexConfig {
                ef_search: 0,
                ..Default::default()
            },
            IndexConfig {
                rebuild_tombstone_fraction: 0.0,
                ..Default::default()
            },
            IndexConfig {
                rebuild_tombstone_fraction: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(
                matches!(cfg.validate(), Err(IndexError::InvalidConfig(_))),
                "{cfg:?}"
            );
        }
    }
}
