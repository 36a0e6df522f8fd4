//! [`HnswIndex`]: approximate search over an hnsw_rs graph, for scopes too large to scan.
//! hnsw_rs cannot delete, so removed ids become tombstones: they keep routing the graph walk but
//! are never returned. This file owns the graph and its tombstones; deciding *when* to rebuild
//! (and doing it off the caller's thread) belongs to [`super::scoped`].
//!
//! It must never hand hnsw_rs a vector that could trip its asserts: everything stored or
//! searched is validated, normalized and scaled by [`super::vector::GRAPH_SCALE_SQ`] first.

use super::flat::TopK;
use super::vector::{dot, graph_similarity, prepare, to_graph, GRAPH_SCALE_SQ};
use super::{IndexConfig, IndexError, Neighbor, VectorSearch, VectorWrite};
use crate::store::EntryId;
use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo, Point};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

/// hnsw_rs's own upper bound on layers.
const MAX_LAYERS: usize = 16;

/// Retries with a 4× wider candidate list before falling back to a scan, when tombstones
/// crowd live results out of the candidate list.
const WIDEN_ATTEMPTS: usize = 2;

type Graph = Hnsw<'static, f32, DistDot>;

pub struct HnswIndex {
    dim: usize,
    ef_search: usize,
    graph: Graph,
    live: HashSet<EntryId>,
    tombstones: HashSet<EntryId>,
}

/// A node of a graph being rebuilt: shares the old graph's copy of the vector, so a rebuild
/// never duplicates a scope's vectors.
#[derive(Clone)]
pub(crate) struct GraphNode(Arc<Point<'static, f32>>);

impl GraphNode {
    pub(crate) fn id(&self) -> EntryId {
        self.0.get_origin_id() as EntryId
    }

    /// The vector at graph scale (what [`HnswIndex::insert_graph_scaled`] takes).
    pub(crate) fn graph_vector(&self) -> &[f32] {
        self.0.get_v()
    }

    /// The vector at unit length (what a flat index stores).
    pub(crate) fn unit_vector(&self) -> Vec<f32> {
        let s = GRAPH_SCALE_SQ.sqrt();
        self.0.get_v().iter().map(|x| x / s).collect()
    }
}

impl HnswIndex {
    /// An empty graph; `capacity` only sizes hnsw_rs's first allocations.
    pub fn new(cfg: &IndexConfig, capacity: usize) -> Self {
        HnswIndex {
            dim: cfg.dim,
            ef_search: cfg.ef_search,
            graph: Hnsw::new(
                cfg.hnsw_m,
                capacity.max(1024),
                MAX_LAYERS,
                cfg.ef_construction,
                DistDot,
            ),
            live: HashSet::with_capacity(capacity),
            tombstones: HashSet::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Changes the search-time candidate list (benchmarks sweep it; the graph is unchanged).
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef.max(1);
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Nodes in the graph, live or tombstoned.
    pub fn node_count(&self) -> usize {
        self.live.len() + self.tombstones.len()
    }

    /// Share of the graph's nodes that are tombstones.
    pub fn tombstone_fraction(&self) -> f32 {
        match self.node_count() {
            0 => 0.0,
            n => self.tombstones.len() as f32 / n as f32,
        }
    }

    /// Stores an already validated, normalized vector.
    pub(crate) fn insert_prepared(&mut self, id: EntryId, v: &[f32]) -> Result<(), IndexError> {
        self.insert_graph_scaled(id, &to_graph(v))
    }

    /// Stores a vector already at graph scale (from [`GraphNode::graph_vector`]).
    pub(crate) fn insert_graph_scaled(&mut self, id: EntryId, g: &[f32]) -> Result<(), IndexError> {
        if self.live.contains(&id) || self.tombstones.contains(&id) {
            return Err(IndexError::DuplicateId(id));
        }
        let data_id = usize::try_from(id).map_err(|_| IndexError::IdOutOfRange(id))?;
        self.graph.insert_slice((g, data_id));
        self.live.insert(id);
        Ok(())
    }

    /// Inserts many vectors at once on every core (rayon's global pool, through hnsw_rs's
    /// parallel insert). For loading and benchmarks: on the serving path it would compete with
    /// the embedder for the CPU. All vectors are checked before any is inserted.
    pub fn bulk_insert(&mut self, items: &[(EntryId, &[f32])]) -> Result<(), IndexError> {
        let mut prepared = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for &(id, v) in items {
            if self.live.contains(&id) || self.tombstones.contains(&id) || !seen.insert(id) {
                return Err(IndexError::DuplicateId(id));
            }
            let data_id = usize::try_from(id).map_err(|_| IndexError::IdOutOfRange(id))?;
            prepared.push((to_graph(&prepare(v, self.dim)?), data_id));
        }
        let refs: Vec<(&[f32], usize)> = prepared.iter().map(|(v, d)| (v.as_slice(), *d)).collect();
        self.graph.parallel_insert_slice(&refs);
        self.live.extend(seen);
        Ok(())
    }

    /// Top `k` live neighbours of an already normalized query. Returns `min(k, len)` results:
    /// when tombstones crowd the candidate list it widens the list, then scans.
    pub(crate) fn search_prepared(&self, q: &[f32], k: usize) -> Vec<Neighbor> {
        let want = k.min(self.live.len());
        if want == 0 {
            return Vec::new();
        }
        let gq = to_graph(q);
        let mut ef = self.ef_search.max(k);
        for _ in 0..=WIDEN_ATTEMPTS {
            // Without tombstones ask for k; with them, keep the whole candidate list and filter.
            let fetch = if self.tombstones.is_empty() { k } else { ef };
            let mut out: Vec<Neighbor> = self
                .graph
                .search(&gq, fetch, ef)
                .into_iter()
                .map(|n| Neighbor {
                    id: n.get_origin_id() as EntryId,
                    similarity: graph_similarity(n.get_distance()),
                })
                .filter(|n| !self.tombstones.contains(&n.id))
                .collect();
            if out.len() >= want {
                out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
                out.truncate(k);
                return out;
            }
            if ef >= self.node_count() {
                break;
            }
            ef = ef.saturating_mul(4);
        }
        self.scan(&gq, k)
    }

    /// Exact search over the graph's live nodes (the last resort of [`Self::search_prepared`]).
    fn scan(&self, gq: &[f32], k: usize) -> Vec<Neighbor> {
        let mut top = TopK::new(k);
        for node in self.nodes() {
            let id = node.id();
            if self.live.contains(&id) {
                top.push(id, dot(gq, node.graph_vector()) / GRAPH_SCALE_SQ);
            }
        }
        top.into_sorted()
    }

    /// Every node, live or not. Callers hold the scope lock, so no insert runs concurrently
    /// (hnsw_rs's iterator re-takes a read lock it already holds, which a queued writer would
    /// deadlock).
    fn nodes(&self) -> Vec<GraphNode> {
        graph_nodes(&self.graph)
    }

    /// Writes the graph (hnsw_rs's `<basename>.hnsw.graph` and `.hnsw.data`, tombstones
    /// included) into `dir`, which must not hold files of that name; returns the basename used
    /// and the live ids, sorted. Reads only: searches may run meanwhile.
    pub(crate) fn dump(
        &self,
        dir: &Path,
        basename: &str,
    ) -> Result<(String, Vec<EntryId>), String> {
        // hnsw_rs panics when it cannot create its files.
        let dumped = catch_unwind(AssertUnwindSafe(|| self.graph.file_dump(dir, basename)))
            .map_err(|_| format!("hnsw_rs panicked while writing {}", dir.display()))?
            .map_err(|e| format!("hnsw_rs could not write {}: {e}", dir.display()))?;
        let mut live: Vec<EntryId> = self.live.iter().copied().collect();
        live.sort_unstable();
        Ok((dumped, live))
    }

    /// Reloads a graph written by [`Self::dump`], whose files were already verified: `live`
    /// are its searchable ids, every other node becomes a tombstone. Fails (never panics) when
    /// the files do not load or do not match `live` and `cfg.dim`.
    pub(crate) fn load(
        cfg: &IndexConfig,
        dir: &Path,
        basename: &str,
        live: HashSet<EntryId>,
    ) -> Result<Self, String> {
        // The reloaded graph borrows its loader for its whole life (hnsw_rs ties the lifetimes
        // for its mmap mode, unused here): one small struct per restored scope is leaked.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
        fn reload(io: &'static mut HnswIo) -> anyhow::Result<Graph> {
            io.load_hnsw::<f32, DistDot>()
        }
        let graph: Graph = catch_unwind(AssertUnwindSafe(move || {
            let io = io;
            reload(io)
        }))
        .map_err(|_| format!("hnsw_rs panicked while reading {basename}"))?
        .map_err(|e| format!("hnsw_rs could not read {basename}: {e}"))?;
        let nodes = graph_nodes(&graph);
        if let Some(n) = nodes.first() {
            if n.graph_vector().len() != cfg.dim {
                return Err(format!(
                    "graph {basename} holds {}-d vectors, the index expects {}",
                    n.graph_vector().len(),
                    cfg.dim
                ));
            }
        }
        let mut tombstones = HashSet::new();
        let mut found = 0usize;
        for n in &nodes {
            if live.contains(&n.id()) {
                found += 1;
            } else {
                tombstones.insert(n.id());
            }
        }
        if found != live.len() {
            return Err(format!(
                "graph {basename} holds {found} of the {} live ids its snapshot lists",
                live.len()
            ));
        }
        Ok(HnswIndex {
            dim: cfg.dim,
            ef_search: cfg.ef_search,
            graph,
            live,
            tombstones,
        })
    }

    /// The live nodes, for a rebuild that runs after the lock is released.
    pub(crate) fn live_nodes(&self) -> Vec<GraphNode> {
        let mut nodes = self.nodes();
        nodes.retain(|n| self.live.contains(&n.id()));
        nodes
    }
}

/// Every node of `graph`, live or not (see [`HnswIndex::nodes`] on locking).
fn graph_nodes(graph: &Graph) -> Vec<GraphNode> {
    // hnsw_rs's iterator unwraps the entry point, which an empty graph lacks.
    if graph.get_nb_point() == 0 {
        return Vec::new();
    }
    graph
        .get_point_indexation()
        .into_iter()
        .map(GraphNode)
        .collect()
}

impl VectorSearch for HnswIndex {
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, IndexError> {
        let q = prepare(query, self.dim)?;
        Ok(self.search_prepared(&q, k))
    }

    fn len(&self) -> usize {
        self.live.len()
    }

    fn contains(&self, id: EntryId) -> bool {
        self.live.contains(&id)
    }
}

impl VectorWrite for HnswIndex {
    fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<(), IndexError> {
        let v = prepare(vector, self.dim)?;
        self.insert_prepared(id, &v)
    }

    fn remove(&mut self, id: EntryId) -> bool {
        if self.live.remove(&id) {
            self.tombstones.insert(id);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::synth::Synth;
    use crate::index::FlatIndex;
    use hnsw_rs::prelude::Distance;

    fn small_cfg(dim: usize) -> IndexConfig {
        IndexConfig {
            dim,
            ..IndexConfig::default()
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn graph_types_cross_threads() {
        assert_send_sync::<HnswIndex>();
        assert_send_sync::<GraphNode>();
    }

    /// Regression: hnsw_rs 0.3.5's DistDot asserts `1 - dot >= 0` (scalar) or `dot <= 1.000002`
    /// (simdeez); a prototype panicked on 876 of 2,000 exact-repeat searches.
    #[test]
    fn exact_duplicate_searches_never_panic_and_find_themselves() {
        let dim = 384;
        let mut synth = Synth::new(11, dim, 20);
        let vecs = synth.vectors(2_000);
        let mut idx = HnswIndex::new(&small_cfg(dim), vecs.len());
        for (id, v) in vecs.iter().enumerate() {
            idx.insert(id as u64, v).unwrap();
        }
        for (id, v) in vecs.iter().enumerate() {
            let top = idx.search(v, 1).unwrap();
            assert_eq!(top[0].id, id as u64);
            assert!(top[0].similarity > 0.9999 && top[0].similarity <= 1.0);
        }
        // The same vectors straight through hnsw_rs's distance, at graph scale.
        for v in &vecs {
            let g = to_graph(v);
            let d = DistDot.eval(&g, &g);
            assert!(d >= 0.0 && graph_similarity(d) > 0.9999);
        }
    }

    /// Vectors within `prepare`'s unit tolerance are stored as given; a norm of 1.00005 makes
    /// the self-dot 1.0001, past simdeez's `1.000002` assert unless the graph scale absorbs it.
    #[test]
    fn slightly_long_vectors_do_not_trip_hnsw_asserts() {
        let dim = 64;
        let mut synth = Synth::new(14, dim, 4);
        let vecs: Vec<Vec<f32>> = synth
            .vectors(200)
            .into_iter()
            .map(|v| v.iter().map(|x| x * 1.00005).collect())
            .collect();
        let mut idx = HnswIndex::new(&small_cfg(dim), vecs.len());
        for (id, v) in vecs.iter().enumerate() {
            idx.insert(id as u64, v).unwrap();
        }
        for (id, v) in vecs.iter().enumerate() {
            let top = idx.search(v, 1).unwrap();
            assert_eq!(top[0].id, id as u64);
            assert!(top[0].similarity <= 1.0);
        }
    }

    #[test]
    fn all_ones_and_one_hot_vectors_do_not_panic() {
        // Equal components maximise the dot's rounding error.
        let dim = 384;
        let mut idx = HnswIndex::new(&small_cfg(dim), 16);
        let ones = vec![1.0f32; dim];
        idx.insert(1, &ones).unwrap();
        for i in 0..dim {
            let mut v = vec![0.0f32; dim];
            v[i] = 1.0;
            idx.insert(10 + i as u64, &v).unwrap();
        }
        for _ in 0..10 {
            let top = idx.search(&ones, 3).unwrap();
            assert_eq!(top[0].id, 1);
            assert!((top[0].similarity - 1.0).abs() < 1e-3);
        }
    }

    #[test]
    fn tombstones_are_never_returned_and_k_live_results_come_back() {
        let dim = 32;
        let mut synth = Synth::new(12, dim, 4);
        let vecs = synth.vectors(600);
        let mut idx = HnswIndex::new(&small_cfg(dim), vecs.len());
        let mut flat = FlatIndex::new(dim);
        for (id, v) in vecs.iter().enumerate() {
            idx.insert(id as u64, v).unwrap();
            flat.insert(id as u64, v).unwrap();
        }
        // Tombstone 90%: far past what the scoped index allows, to force widening and scans.
        for id in 0..600u64 {
            if id % 10 != 0 {
                assert!(idx.remove(id));
                flat.remove(id);
            }
        }
        assert!(!idx.remove(1));
        assert_eq!(idx.len(), 60);
        assert_eq!(idx.tombstone_count(), 540);
        for v in &vecs {
            let got = idx.search(v, 10).unwrap();
            assert_eq!(got.len(), 10);
            assert!(got.iter().all(|n| n.id % 10 == 0));
            assert_eq!(got[0].id, flat.search(v, 1).unwrap()[0].id);
        }
        assert_eq!(idx.search(&vecs[0], 100).unwrap().len(), 60);
        assert_eq!(idx.insert(5, &vecs[5]), Err(IndexError::DuplicateId(5)));
    }

    #[test]
    fn bulk_insert_matches_one_by_one_and_checks_everything_first() {
        let dim = 32;
        let mut synth = Synth::new(15, dim, 4);
        let vecs = synth.vectors(500);
        let mut idx = HnswIndex::new(&small_cfg(dim), vecs.len());
        let items: Vec<(EntryId, &[f32])> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as EntryId, v.as_slice()))
            .collect();
        let mut bad = items.clone();
        bad.push((7, &vecs[0]));
        assert_eq!(idx.bulk_insert(&bad), Err(IndexError::DuplicateId(7)));
        bad.pop();
        let short = [0.5f32; 3];
        bad.push((900, &short));
        assert!(matches!(
            idx.bulk_insert(&bad),
            Err(IndexError::DimensionMismatch { .. })
        ));
        assert_eq!(idx.len(), 0);
        idx.bulk_insert(&items).unwrap();
        assert_eq!(idx.len(), 500);
        for (id, v) in vecs.iter().enumerate() {
            assert_eq!(idx.search(v, 1).unwrap()[0].id, id as u64);
        }
        assert_eq!(
            idx.bulk_insert(&items[..1]),
            Err(IndexError::DuplicateId(0))
        );
    }

    #[test]
    fn live_nodes_round_trip_into_a_new_graph() {
        let dim = 16;
        let mut synth = Synth::new(13, dim, 3);
        let vecs = synth.vectors(300);
        let mut idx = HnswIndex::new(&small_cfg(dim), 300);
        for (id, v) in vecs.iter().enumerate() {
            idx.insert(id as u64, v).unwrap();
        }
        for id in 0..100u64 {
            idx.remove(id);
        }
        let nodes = idx.live_nodes();
        assert_eq!(nodes.len(), 200);
        let mut fresh = HnswIndex::new(&small_cfg(dim), nodes.len());
        for n in &nodes {
            fresh.insert_graph_scaled(n.id(), n.graph_vector()).unwrap();
            let u = n.unit_vector();
            assert!((dot(&u, &u) - 1.0).abs() < 1e-4);
        }
        assert_eq!(fresh.tombstone_count(), 0);
        for (id, v) in vecs.iter().enumerate().skip(100) {
            assert_eq!(fresh.search(v, 1).unwrap()[0].id, id as u64);
        }
        assert!(HnswIndex::new(&small_cfg(dim), 0).live_nodes().is_empty());
        assert!(HnswIndex::new(&small_cfg(dim), 0)
            .search(&vecs[0], 3)
            .unwrap()
            .is_empty());
    }
}
