//! [`FlatIndex`]: exact search by scanning every vector of a scope. Small scopes use it (a scan
//! of a few thousand 384-d vectors is cheaper than a graph walk and has perfect recall), and it
//! is the reference the HNSW graph is measured against. It never approximates and never keeps
//! removed vectors: deletion is a swap-remove.

use super::vector::{clamp_similarity, dot, prepare};
use super::{IndexError, Neighbor, VectorSearch, VectorWrite};
use crate::store::EntryId;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// Vectors in one contiguous buffer (row `i` belongs to `ids[i]`) so the scan streams memory.
#[derive(Clone, Debug)]
pub struct FlatIndex {
    dim: usize,
    ids: Vec<EntryId>,
    data: Vec<f32>,
    row_of: HashMap<EntryId, usize>,
}

impl FlatIndex {
    pub fn new(dim: usize) -> Self {
        FlatIndex {
            dim,
            ids: Vec::new(),
            data: Vec::new(),
            row_of: HashMap::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Every live vector with its id (normalized), in storage order.
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &[f32])> + '_ {
        self.ids
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dim))
    }

    /// Stores an already validated, normalized vector.
    pub(crate) fn push_prepared(&mut self, id: EntryId, v: &[f32]) -> Result<(), IndexError> {
        if self.row_of.contains_key(&id) {
            return Err(IndexError::DuplicateId(id));
        }
        self.row_of.insert(id, self.ids.len());
        self.ids.push(id);
        self.data.extend_from_slice(v);
        Ok(())
    }

    /// Top `k` over all rows for an already normalized query.
    pub(crate) fn search_prepared(&self, q: &[f32], k: usize) -> Vec<Neighbor> {
        let mut top = TopK::new(k);
        for (id, row) in self.iter() {
            top.push(id, dot(q, row));
        }
        top.into_sorted()
    }
}

impl VectorSearch for FlatIndex {
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, IndexError> {
        let q = prepare(query, self.dim)?;
        Ok(self.search_prepared(&q, k))
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn contains(&self, id: EntryId) -> bool {
        self.row_of.contains_key(&id)
    }
}

impl VectorWrite for FlatIndex {
    fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<(), IndexError> {
        let v = prepare(vector, self.dim)?;
        self.push_prepared(id, &v)
    }

    fn remove(&mut self, id: EntryId) -> bool {
        let Some(row) = self.row_of.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.ids[row] = moved;
            self.row_of.insert(moved, row);
            let (head, tail) = self.data.split_at_mut(last * self.dim);
            head[row * self.dim..(row + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.ids.truncate(last);
        self.data.truncate(last * self.dim);
        true
    }
}

/// A candidate ordered by similarity, then by lower id (so ties rank deterministically).
#[derive(Clone, Copy, Debug)]
struct Scored {
    similarity: f32,
    id: EntryId,
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity
            .total_cmp(&other.similarity)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

/// The `k` best candidates seen so far: a min-heap whose top is the one to beat.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1024)),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, id: EntryId, similarity: f32) {
        if self.k == 0 {
            return;
        }
        let s = Scored {
            similarity: clamp_similarity(similarity),
            id,
        };
        if self.heap.len() < self.k {
            self.heap.push(Reverse(s));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if s > worst.0 {
                *worst = Reverse(s);
            }
        }
    }

    /// Most similar first.
    pub(crate) fn into_sorted(self) -> Vec<Neighbor> {
        // Ascending order of `Reverse` is descending similarity.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(s)| Neighbor {
                id: s.id,
                similarity: s.similarity,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::synth::Synth;

    fn brute(idx: &FlatIndex, q: &[f32], k: usize) -> Vec<EntryId> {
        let q = prepare(q, idx.dim()).unwrap();
        let mut all: Vec<(f32, EntryId)> = idx.iter().map(|(id, v)| (dot(&q, v), id)).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, id)| id).collect()
    }

    #[test]
    fn search_returns_exact_top_k_sorted_desc() {
        let mut synth = Synth::new(7, 32, 16);
        let mut idx = FlatIndex::new(32);
        for id in 0..500u64 {
            idx.insert(id, &synth.vector()).unwrap();
        }
        for _ in 0..50 {
            let q = synth.vector();
            let got = idx.search(&q, 10).unwrap();
            assert_eq!(got.len(), 10);
            assert!(got.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            let ids: Vec<EntryId> = got.iter().map(|n| n.id).collect();
            assert_eq!(ids, brute(&idx, &q, 10));
        }
        assert!(idx.search(&synth.vector(), 0).unwrap().is_empty());
        assert_eq!(idx.search(&synth.vector(), 10_000).unwrap().len(), 500);
    }

    #[test]
    fn swap_remove_keeps_rows_and_ids_aligned() {
        let mut synth = Synth::new(8, 16, 4);
        let mut idx = FlatIndex::new(16);
        let vecs: Vec<Vec<f32>> = (0..100).map(|_| synth.vector()).collect();
        for (id, v) in vecs.iter().enumerate() {
            idx.insert(id as u64, v).unwrap();
        }
        for id in (0..100u64).step_by(3) {
            assert!(idx.remove(id));
            assert!(!idx.remove(id));
        }
        assert_eq!(idx.len(), 100 - 34);
        for (id, v) in vecs.iter().enumerate() {
            let top = idx.search(v, 1).unwrap();
            if id % 3 == 0 {
                assert!(!idx.contains(id as u64));
                assert!(top.iter().all(|n| n.id != id as u64));
            } else {
                assert_eq!(top[0].id, id as u64);
                assert!((top[0].similarity - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut idx = FlatIndex::new(4);
        assert!(matches!(
            idx.insert(1, &[1.0, 0.0]),
            Err(IndexError::DimensionMismatch { .. })
        ));
        idx.insert(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(
            idx.insert(1, &[0.0, 1.0, 0.0, 0.0]),
            Err(IndexError::DuplicateId(1))
        );
        assert!(idx.search(&[f32::INFINITY, 0.0, 0.0, 0.0], 1).is_err());
        assert!(idx.search(&[1.0; 5], 1).is_err());
    }

    #[test]
    fn ties_rank_lower_id_first() {
        let mut idx = FlatIndex::new(2);
        for id in [5u64, 3, 9] {
            idx.insert(id, &[1.0, 0.0]).unwrap();
        }
        let ids: Vec<u64> = idx
            .search(&[1.0, 0.0], 2)
            .unwrap()
            .iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, vec![3, 5]);
    }
}
