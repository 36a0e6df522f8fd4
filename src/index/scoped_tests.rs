//! Tests of [`ScopedIndex`]: isolation, promotion, rebuilds and the writes that race them.

use super::*;
use crate::index::synth::Synth;
use std::collections::HashSet;

const WAIT: Duration = Duration::from_secs(60);

fn cfg(dim: usize, flat_max: usize) -> IndexConfig {
    IndexConfig {
        dim,
        flat_max,
        ef_construction: 64,
        ..IndexConfig::default()
    }
}

fn scope(n: u8) -> ScopeId {
    ScopeId::from_bytes(&[n])
}

#[test]
fn scoped_index_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ScopedIndex>();
}

#[test]
fn scopes_are_isolated() {
    let idx = ScopedIndex::new(cfg(16, 50)).unwrap();
    let mut synth = Synth::new(21, 16, 4);
    // Scope A goes past flat_max (HNSW), scope B stays flat: isolation must hold for both kinds.
    let a: Vec<Vec<f32>> = synth.vectors(120);
    let b: Vec<Vec<f32>> = synth.vectors(20);
    for (i, v) in a.iter().enumerate() {
        idx.insert(scope(1), i as u64, v).unwrap();
    }
    for (i, v) in b.iter().enumerate() {
        idx.insert(scope(2), 1_000 + i as u64, v).unwrap();
    }
    assert!(idx.wait_idle(WAIT));
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    assert_eq!(idx.scope_kind(scope(2)), Some("flat"));
    for v in &a {
        let got = idx.search(scope(2), v, 50).unwrap();
        assert!(got.iter().all(|n| n.id >= 1_000), "scope A leaked into B");
    }
    for v in &b {
        let got = idx.search(scope(1), v, 200).unwrap();
        assert!(got.iter().all(|n| n.id < 1_000), "scope B leaked into A");
        assert_eq!(got.len(), 120);
    }
    assert!(idx.search(scope(3), &a[0], 5).unwrap().is_empty());
    assert_eq!(idx.len(), 140);
    assert_eq!(idx.scope_count(), 2);
}

#[test]
fn bad_vectors_are_errors() {
    let idx = ScopedIndex::new(cfg(8, 10)).unwrap();
    let err = idx.insert(scope(1), 1, &[1.0; 7]).unwrap_err();
    assert_eq!(
        err,
        IndexError::DimensionMismatch {
            expected: 8,
            got: 7
        }
    );
    assert!(idx.search(scope(1), &[1.0; 9], 1).is_err());
    assert!(idx.search(scope(1), &[f32::NAN; 8], 1).is_err());
    assert_eq!(
        idx.insert(scope(1), 1, &[0.0; 8]),
        Err(IndexError::ZeroVector)
    );
    idx.insert(scope(1), 1, &[1.0; 8]).unwrap();
    assert_eq!(
        idx.insert(scope(1), 1, &[2.0; 8]),
        Err(IndexError::DuplicateId(1))
    );
    assert_eq!(idx.len(), 1);
    assert!(ScopedIndex::new(IndexConfig {
        dim: 0,
        ..IndexConfig::default()
    })
    .is_err());
}

#[test]
fn empty_scopes_are_dropped() {
    let idx = ScopedIndex::new(cfg(4, 10)).unwrap();
    idx.insert(scope(1), 1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    idx.insert(scope(1), 2, &[0.0, 1.0, 0.0, 0.0]).unwrap();
    assert!(idx.remove(scope(1), 1));
    assert!(!idx.remove(scope(1), 1));
    assert!(!idx.remove(scope(9), 2));
    assert_eq!(idx.scope_count(), 1);
    assert!(idx.remove(scope(1), 2));
    assert_eq!(idx.scope_count(), 0);
    assert!(idx.is_empty());
    // The scope comes back on the next insert.
    idx.insert(scope(1), 3, &[0.0, 0.0, 1.0, 0.0]).unwrap();
    assert_eq!(
        idx.search(scope(1), &[0.0, 0.0, 1.0, 0.0], 1).unwrap()[0].id,
        3
    );
}

/// Checks that exactly `live` is searchable in `s`: every live vector finds itself, no removed
/// id ever comes back, and the scope's size matches.
fn assert_exactly(idx: &ScopedIndex, s: ScopeId, vecs: &[Vec<f32>], live: &HashSet<u64>) {
    assert_eq!(idx.scope_len(s), live.len());
    for (id, v) in vecs.iter().enumerate() {
        let got = idx.search(s, v, 10).unwrap();
        assert!(
            got.iter().all(|n| live.contains(&n.id)),
            "removed id returned"
        );
        if live.contains(&(id as u64)) {
            assert_eq!(got[0].id, id as u64);
            assert!(got[0].similarity > 0.999);
        }
    }
}

#[test]
fn promotion_keeps_writes_that_race_the_build() {
    let idx = ScopedIndex::new(cfg(32, 200)).unwrap();
    let mut synth = Synth::new(22, 32, 8);
    let vecs = synth.vectors(400);
    let mut live = HashSet::new();
    let gate = idx.bg.gate.lock();
    for (id, v) in vecs.iter().enumerate().take(201) {
        idx.insert(scope(1), id as u64, v).unwrap();
        live.insert(id as u64);
    }
    // The build is held at the gate: everything below lands in the pending log.
    assert_eq!(idx.stats().builds_in_flight, 1);
    for (id, v) in vecs.iter().enumerate().skip(201) {
        idx.insert(scope(1), id as u64, v).unwrap();
        live.insert(id as u64);
    }
    for id in (0..400u64).step_by(7) {
        assert!(idx.remove(scope(1), id));
        live.remove(&id);
    }
    assert_eq!(idx.scope_kind(scope(1)), Some("flat"));
    // Searches meanwhile are answered by the flat index.
    assert_exactly(&idx, scope(1), &vecs, &live);
    drop(gate);
    assert!(idx.wait_idle(WAIT));
    let stats = idx.stats();
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    assert_eq!(stats.promotions, 1);
    assert_eq!(stats.failed_builds, 0);
    assert_eq!(stats.replayed_writes, 199 + 58);
    assert_eq!(stats.hnsw_vectors, live.len());
    assert_exactly(&idx, scope(1), &vecs, &live);
    assert_eq!(idx.len(), live.len());
}

#[test]
fn rebuild_past_tombstone_fraction_drops_tombstones_and_keeps_writes() {
    let idx = ScopedIndex::new(cfg(32, 100)).unwrap();
    let mut synth = Synth::new(23, 32, 8);
    let vecs = synth.vectors(700);
    let mut live = HashSet::new();
    for (id, v) in vecs.iter().enumerate().take(600) {
        idx.insert(scope(1), id as u64, v).unwrap();
        live.insert(id as u64);
    }
    assert!(idx.wait_idle(WAIT));
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    let gate = idx.bg.gate.lock();
    // 20% of 600 nodes is 120: the 121st removal passes the fraction and starts a rebuild.
    for id in 0..120u64 {
        idx.remove(scope(1), id);
        live.remove(&id);
    }
    assert_eq!(idx.stats().tombstones, 120);
    assert_eq!(idx.stats().builds_in_flight, 0);
    idx.remove(scope(1), 120);
    live.remove(&120);
    assert_eq!(idx.stats().builds_in_flight, 1);
    // Writes during the rebuild.
    for (id, v) in vecs.iter().enumerate().skip(600) {
        idx.insert(scope(1), id as u64, v).unwrap();
        live.insert(id as u64);
    }
    for id in 121..140u64 {
        idx.remove(scope(1), id);
        live.remove(&id);
    }
    assert_exactly(&idx, scope(1), &vecs, &live);
    drop(gate);
    assert!(idx.wait_idle(WAIT));
    let stats = idx.stats();
    assert_eq!(stats.rebuilds, 1);
    // Only the removals that raced the rebuild remain as tombstones.
    assert_eq!(stats.tombstones, 19);
    assert_exactly(&idx, scope(1), &vecs, &live);
}

#[test]
fn a_shrunken_graph_is_demoted_to_flat() {
    let idx = ScopedIndex::new(IndexConfig {
        rebuild_tombstone_fraction: 0.9,
        ..cfg(16, 100)
    })
    .unwrap();
    let mut synth = Synth::new(24, 16, 4);
    let vecs = synth.vectors(300);
    for (id, v) in vecs.iter().enumerate() {
        idx.insert(scope(1), id as u64, v).unwrap();
    }
    assert!(idx.wait_idle(WAIT));
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    // 271 of 300 removed passes 0.9; 29 live is under flat_max / 2.
    for id in 0..271u64 {
        idx.remove(scope(1), id);
    }
    assert!(idx.wait_idle(WAIT));
    assert_eq!(idx.scope_kind(scope(1)), Some("flat"));
    assert_eq!(idx.stats().demotions, 1);
    let live: HashSet<u64> = (271..300).collect();
    assert_exactly(&idx, scope(1), &vecs, &live);
}

#[test]
fn concurrent_writers_and_readers_agree_at_the_end() {
    let idx = Arc::new(ScopedIndex::new(cfg(16, 64)).unwrap());
    let mut synth = Synth::new(25, 16, 4);
    let vecs = Arc::new(synth.vectors(800));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (idx, vecs) = (Arc::clone(&idx), Arc::clone(&vecs));
            std::thread::spawn(move || {
                for i in (t as usize..800).step_by(4) {
                    let s = scope((i % 2) as u8);
                    idx.insert(s, i as u64, &vecs[i]).unwrap();
                    let got = idx.search(s, &vecs[i], 3).unwrap();
                    assert!(got.iter().all(|n| n.id % 2 == i as u64 % 2));
                    if i % 5 == 0 {
                        assert!(idx.remove(s, i as u64));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(idx.wait_idle(WAIT));
    let live: HashSet<u64> = (0..800u64).filter(|i| i % 5 != 0).collect();
    assert_eq!(idx.len(), live.len());
    for id in &live {
        let s = scope((id % 2) as u8);
        assert_eq!(idx.search(s, &vecs[*id as usize], 1).unwrap()[0].id, *id);
    }
    let per_scope = |p: u64| live.iter().filter(|i| *i % 2 == p).count();
    assert_eq!(idx.scope_len(scope(0)), per_scope(0));
    assert_eq!(idx.scope_len(scope(1)), per_scope(1));
}
