//! [`load_index`] against a real store: every entry the store holds is searchable after a
//! restart, whatever the snapshot says, and the report counts what came from where.

use super::*;
use crate::index::synth::Synth;
use crate::index::IndexConfig;
use crate::store::{CachedResponse, FinishReason, NewEntry, StoreConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use tempfile::TempDir;

const DIM: usize = 24;

fn index() -> ScopedIndex {
    ScopedIndex::new(IndexConfig {
        dim: DIM,
        flat_max: 40,
        ef_construction: 64,
        ..IndexConfig::default()
    })
    .unwrap()
}

fn open_store(dir: &Path) -> Store {
    Store::open(&StoreConfig {
        max_entries: 0,
        ..StoreConfig::new(dir, "test-model", DIM)
    })
    .unwrap()
}

fn scope(n: u8) -> ScopeId {
    ScopeId::from_bytes(&[n])
}

fn put(store: &Store, s: ScopeId, prompt: &str, v: &[f32]) -> EntryId {
    let now = now_ms();
    store
        .insert(NewEntry {
            scope: s,
            prompt: prompt.to_string(),
            embedding: Some(v.to_vec()),
            response: CachedResponse {
                model: "m".into(),
                content: format!("answer to {prompt}"),
                finish_reason: FinishReason::Stop,
                usage: None,
                provider: "p".into(),
                system_fingerprint: None,
                tool_calls: Vec::new(),
            },
            created_ms: now,
            expires_ms: now + 3_600_000,
            namespace: None,
        })
        .unwrap()
        .id
}

/// Every live entry finds itself first; no removed id is ever returned.
fn assert_serves(
    idx: &ScopedIndex,
    live: &HashMap<EntryId, (ScopeId, Vec<f32>)>,
    gone: &[EntryId],
) {
    assert_eq!(idx.len(), live.len());
    for (id, (s, v)) in live {
        let top = idx.search(*s, v, 3).unwrap();
        assert_eq!(top[0].id, *id);
        assert!(top.iter().all(|n| !gone.contains(&n.id)));
    }
}

struct World {
    _dir: TempDir,
    store: Store,
    root: PathBuf,
    live: HashMap<EntryId, (ScopeId, Vec<f32>)>,
    gone: Vec<EntryId>,
}

/// A store with 200 entries in an HNSW scope and 10 in a flat one, snapshotted; then 15 more
/// entries and 5 removals that the snapshot does not know about.
fn world() -> World {
    let dir = TempDir::new().unwrap();
    let store = open_store(&dir.path().join("store"));
    let root = dir.path().join("index-snapshot");
    let mut synth = Synth::new(3, DIM, 8);
    let mut live = HashMap::new();
    let mut snapshotted = Vec::new();
    for i in 0..200 {
        let v = synth.vector();
        let id = put(&store, scope(1), &format!("a{i}"), &v);
        live.insert(id, (scope(1), v));
        snapshotted.push(id);
    }
    for i in 0..10 {
        let v = synth.vector();
        live.insert(put(&store, scope(2), &format!("b{i}"), &v), (scope(2), v));
    }
    let idx = index();
    let first = load_index(&store, &idx, Some(&root)).unwrap();
    assert_eq!((first.entries, first.restored_scopes), (210, 0));
    assert!(idx.wait_idle(Duration::from_secs(60)));
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    let stats = idx.snapshot(&root, &snapshot_tag(&store)).unwrap();
    assert_eq!(stats.scopes, 1);

    for i in 0..15 {
        let v = synth.vector();
        live.insert(
            put(&store, scope(1), &format!("late{i}"), &v),
            (scope(1), v),
        );
    }
    let mut gone = Vec::new();
    // Five entries the snapshot holds leave the store (evicted, expired, lost in a crash).
    for id in snapshotted.into_iter().step_by(40) {
        store.remove(id).unwrap();
        live.remove(&id);
        gone.push(id);
    }
    World {
        _dir: dir,
        store,
        root,
        live,
        gone,
    }
}

#[test]
fn a_restart_restores_the_graph_and_settles_the_difference_with_the_store() {
    let w = world();
    let idx = index();
    let r = load_index(&w.store, &idx, Some(&w.root)).unwrap();
    assert!(r.discarded.is_empty(), "{:?}", r.discarded);
    assert_eq!(r.restored_scopes, 1);
    assert_eq!(r.restored, 195);
    assert_eq!(r.replayed, 15);
    assert_eq!(r.stale, 5);
    assert_eq!(r.entries, 220);
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    assert_eq!(idx.stats().tombstones, 5);
    assert_serves(&idx, &w.live, &w.gone);
    // The settled index differs from the snapshot: the next one is due.
    assert!(idx.changed_since_snapshot());
    idx.snapshot(&w.root, &snapshot_tag(&w.store)).unwrap();

    // Restarting from that snapshot has nothing to settle, so it is current until a write.
    let again = index();
    let r = load_index(&w.store, &again, Some(&w.root)).unwrap();
    assert_eq!((r.restored, r.replayed, r.stale), (210, 0, 0));
    assert!(!again.changed_since_snapshot());
    assert_serves(&again, &w.live, &w.gone);
    let (id, (s, _)) = w.live.iter().next().unwrap();
    assert!(again.remove(*s, *id));
    assert!(again.changed_since_snapshot());
}

#[test]
fn without_snapshots_everything_comes_from_the_store() {
    let w = world();
    let idx = index();
    let r = load_index(&w.store, &idx, None).unwrap();
    assert_eq!((r.restored_scopes, r.restored, r.entries), (0, 0, 220));
    assert!(idx.wait_idle(Duration::from_secs(60)));
    assert_serves(&idx, &w.live, &w.gone);
}

#[test]
fn a_snapshot_of_another_store_is_ignored() {
    let w = world();
    let other_dir = TempDir::new().unwrap();
    let other = open_store(other_dir.path());
    let mut live = HashMap::new();
    for (i, (_, (s, v))) in w.live.iter().take(30).enumerate() {
        live.insert(put(&other, *s, &format!("o{i}"), v), (*s, v.clone()));
    }
    let idx = index();
    let r = load_index(&other, &idx, Some(&w.root)).unwrap();
    assert_eq!(r.restored_scopes, 0);
    assert_eq!(r.discarded.len(), 1, "{:?}", r.discarded);
    assert!(r.discarded[0].contains("taken from store"));
    assert!(idx.wait_idle(Duration::from_secs(60)));
    assert_serves(&idx, &live, &[]);
}

#[test]
fn a_damaged_graph_is_rebuilt_from_the_store() {
    let w = world();
    let snap = Snapshot::open(&w.root, &snapshot_tag(&w.store))
        .unwrap()
        .unwrap();
    let graph = std::fs::read_dir(snap.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".hnsw.data"))
        .unwrap();
    let mut bytes = std::fs::read(&graph).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&graph, bytes).unwrap();
    let idx = index();
    let r = load_index(&w.store, &idx, Some(&w.root)).unwrap();
    assert_eq!((r.restored_scopes, r.restored, r.replayed), (0, 0, 0));
    assert_eq!(r.discarded.len(), 1, "{:?}", r.discarded);
    assert_eq!(r.entries, 220);
    assert!(idx.wait_idle(Duration::from_secs(60)));
    assert_serves(&idx, &w.live, &w.gone);
}
