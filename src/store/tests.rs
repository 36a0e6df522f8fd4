//! Unit tests of [`Store`]: layout, replacement, eviction, expiry and error paths. Reopen and
//! crash behaviour are in `tests/store_reopen.rs`.

use super::*;
use tempfile::TempDir;

const DIM: usize = 4;

pub(crate) fn cfg(dir: &TempDir) -> StoreConfig {
    StoreConfig {
        max_entries: 0,
        ..StoreConfig::new(dir.path().join("store"), "test-model", DIM)
    }
}

fn scope(n: u8) -> ScopeId {
    ScopeId::from_bytes(&[n])
}

fn new_entry(s: ScopeId, prompt: &str, created_ms: u64, ttl_ms: u64) -> NewEntry {
    NewEntry {
        scope: s,
        prompt: prompt.to_string(),
        embedding: Some(vec![0.5; DIM]),
        response: CachedResponse {
            model: "m".into(),
            content: format!("answer to {prompt}"),
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
            }),
            provider: "p".into(),
            system_fingerprint: None,
        },
        created_ms,
        expires_ms: created_ms + ttl_ms,
    }
}

#[test]
fn insert_get_and_exact_lookup() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&cfg(&dir)).unwrap();
    let out = store
        .insert(new_entry(scope(1), "hello", 1_000, 60_000))
        .unwrap();
    assert!(out.removed.is_empty());
    let e = store.get(out.id).unwrap().unwrap();
    assert_eq!(
        (e.id, e.prompt.as_str(), e.created_ms),
        (out.id, "hello", 1_000)
    );
    assert_eq!(e.response.content, "answer to hello");
    assert_eq!(store.get_exact(scope(1), "hello").unwrap(), Some(e));
    // Exact keys are per scope and per prompt.
    assert_eq!(store.get_exact(scope(2), "hello").unwrap(), None);
    assert_eq!(store.get_exact(scope(1), "hello ").unwrap(), None);
    assert_eq!(store.get(out.id + 1_000).unwrap(), None);
    assert_eq!(store.len(), 1);
}

#[test]
fn replacing_an_exact_key_reports_the_old_id() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&cfg(&dir)).unwrap();
    let first = store.insert(new_entry(scope(1), "q", 1, 1_000)).unwrap();
    let other = store.insert(new_entry(scope(2), "q", 1, 1_000)).unwrap();
    let second = store.insert(new_entry(scope(1), "q", 2, 1_000)).unwrap();
    assert_eq!(second.removed, vec![(scope(1), first.id)]);
    assert_ne!(second.id, first.id);
    assert_eq!(store.get(first.id).unwrap(), None);
    assert_eq!(store.hits(first.id), None);
    assert_eq!(
        store.get_exact(scope(1), "q").unwrap().unwrap().id,
        second.id
    );
    assert_eq!(
        store.get_exact(scope(2), "q").unwrap().unwrap().id,
        other.id
    );
    assert_eq!(store.len(), 2);
    // A hit on the replaced id is a no-op, not a resurrection.
    assert!(!store.record_hit(first.id, 10).unwrap());
}

#[test]
fn max_entries_evicts_least_recently_used_and_hits_refresh() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&StoreConfig {
        max_entries: 3,
        ..cfg(&dir)
    })
    .unwrap();
    let a = store
        .insert(new_entry(scope(1), "a", 100, 1_000_000))
        .unwrap()
        .id;
    let b = store
        .insert(new_entry(scope(1), "b", 200, 1_000_000))
        .unwrap()
        .id;
    let c = store
        .insert(new_entry(scope(2), "c", 300, 1_000_000))
        .unwrap()
        .id;
    // `a` is the oldest, but a hit makes it the most recent: `b` goes first.
    assert!(store.record_hit(a, 400).unwrap());
    let d = store
        .insert(new_entry(scope(1), "d", 500, 1_000_000))
        .unwrap();
    assert_eq!(d.removed, vec![(scope(1), b)]);
    let e = store
        .insert(new_entry(scope(2), "e", 600, 1_000_000))
        .unwrap();
    assert_eq!(e.removed, vec![(scope(2), c)]);
    assert_eq!(store.len(), 3);
    assert!(store.get(b).unwrap().is_none() && store.get(c).unwrap().is_none());
    assert!(store.get_exact(scope(1), "b").unwrap().is_none());
    assert_eq!(store.get_exact(scope(1), "a").unwrap().unwrap().id, a);
    assert_eq!(store.hits(a), Some(1));
}

#[test]
fn a_new_entry_is_never_its_own_eviction_victim() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&StoreConfig {
        max_entries: 1,
        ..cfg(&dir)
    })
    .unwrap();
    let a = store
        .insert(new_entry(scope(1), "a", 500, 1_000))
        .unwrap()
        .id;
    // Created "earlier" than `a` was last used, yet the newcomer stays.
    let b = store.insert(new_entry(scope(1), "b", 100, 1_000)).unwrap();
    assert_eq!(b.removed, vec![(scope(1), a)]);
    assert!(store.get(b.id).unwrap().is_some());
}

#[test]
fn sweep_returns_expired_ids_and_removes_them() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&cfg(&dir)).unwrap();
    let short1 = store.insert(new_entry(scope(1), "s1", 0, 100)).unwrap().id;
    let long = store
        .insert(new_entry(scope(1), "l", 0, 10_000))
        .unwrap()
        .id;
    let short2 = store.insert(new_entry(scope(2), "s2", 0, 200)).unwrap().id;
    assert!(store.sweep_expired(99, 10).unwrap().is_empty());
    // `limit` bounds the work of one sweep; expiry is inclusive (`now >= expires_ms`).
    assert_eq!(
        store.sweep_expired(200, 1).unwrap(),
        vec![(scope(1), short1)]
    );
    assert_eq!(
        store.sweep_expired(200, 10).unwrap(),
        vec![(scope(2), short2)]
    );
    assert!(store.get(short1).unwrap().is_none());
    assert!(store.get_exact(scope(2), "s2").unwrap().is_none());
    assert_eq!(store.len(), 1);
    // get_exact still returns an expired-but-unswept entry; the caller checks expiry.
    let e = store.get_exact(scope(1), "l").unwrap().unwrap();
    assert_eq!(e.id, long);
    assert!(e.is_expired(20_000));
    let mut live = vec![];
    store.for_each_live(20_000, |e| live.push(e.id)).unwrap();
    assert!(live.is_empty());
    store.for_each_live(0, |e| live.push(e.id)).unwrap();
    assert_eq!(live, vec![long]);
}

#[test]
fn remove_deletes_entry_exact_key_and_access() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&cfg(&dir)).unwrap();
    let id = store.insert(new_entry(scope(1), "x", 0, 100)).unwrap().id;
    store.record_hit(id, 5).unwrap();
    let gone = store.remove(id).unwrap().unwrap();
    assert_eq!(gone.prompt, "x");
    assert!(store.remove(id).unwrap().is_none());
    assert!(store.get_exact(scope(1), "x").unwrap().is_none());
    assert!(store.inner.access.is_empty() && store.inner.exact.is_empty());
    assert!(!store.record_hit(id, 6).unwrap());
    assert!(store.inner.access.is_empty());
}

#[test]
fn bad_embeddings_are_rejected() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&cfg(&dir)).unwrap();
    let mut e = new_entry(scope(1), "x", 0, 100);
    e.embedding = Some(vec![1.0; DIM + 1]);
    assert!(matches!(
        store.insert(e.clone()),
        Err(StoreError::InvalidEntry(_))
    ));
    e.embedding = Some(vec![f32::NAN; DIM]);
    assert!(matches!(
        store.insert(e.clone()),
        Err(StoreError::InvalidEntry(_))
    ));
    e.embedding = None;
    assert!(store.insert(e).is_ok());
}

#[test]
fn a_second_open_of_the_same_dir_is_locked_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let _store = Store::open(&cfg(&dir)).unwrap();
    let err = Store::open(&cfg(&dir)).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn concurrent_hits_and_writes_leave_no_orphan_records() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&StoreConfig {
        max_entries: 50,
        ..cfg(&dir)
    })
    .unwrap();
    let writers: Vec<_> = (0..3u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let out = store
                        .insert(new_entry(scope(t), &format!("p{}", i % 70), i, 1_000))
                        .unwrap();
                    store.record_hit(out.id, i + 1).unwrap();
                    for (_, old) in out.removed {
                        store.record_hit(old, i + 2).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(store.len(), 50);
    assert_eq!(store.inner.entries.len(), 50);
    assert_eq!(store.inner.access.len(), 50);
    assert_eq!(store.inner.exact.len(), 50);
}

/// The entries of `tests/fixtures/store-v1.json`, as literals: a full answer with an embedding
/// and non-ASCII text, an exact-only one with no usage and an empty answer, an expired one, and
/// a prompt stored twice (the first answer replaced).
pub(crate) fn legacy_fixture_entries() -> Vec<NewEntry> {
    let far = 4_102_444_800_000; // 2100-01-01
    let response = |content: &str| CachedResponse {
        model: "gpt-4o-mini-2024-07-18".into(),
        content: content.into(),
        finish_reason: FinishReason::Stop,
        usage: Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 34,
        }),
        provider: "openai".into(),
        system_fingerprint: Some("fp_0ba0d124f1".into()),
    };
    vec![
        NewEntry {
            scope: scope(1),
            prompt: "¿Qué hora es en Tokio? 你好 🙂".into(),
            embedding: Some(vec![0.5, -0.5, 0.5, 0.5]),
            response: response("It is \"9:00\"\nin the morning."),
            created_ms: 1_764_000_000_000,
            expires_ms: far,
        },
        NewEntry {
            scope: scope(2),
            prompt: "exact only".into(),
            embedding: None,
            response: CachedResponse {
                model: "claude-3-5-haiku".into(),
                content: String::new(),
                finish_reason: FinishReason::Length,
                usage: None,
                provider: "anthropic".into(),
                system_fingerprint: None,
            },
            created_ms: 1_764_000_000_001,
            expires_ms: far,
        },
        NewEntry {
            scope: scope(1),
            prompt: "already expired".into(),
            embedding: Some(vec![1.0, 0.0, 0.0, 0.0]),
            response: response("too late"),
            created_ms: 1_000,
            expires_ms: 2_000,
        },
        NewEntry {
            scope: scope(3),
            prompt: "asked twice".into(),
            embedding: Some(vec![0.0, 1.0, 0.0, 0.0]),
            response: response("first answer"),
            created_ms: 1_764_000_000_002,
            expires_ms: far,
        },
        NewEntry {
            scope: scope(3),
            prompt: "asked twice".into(),
            embedding: Some(vec![0.0, 0.0, 1.0, 0.0]),
            response: response("second answer"),
            created_ms: 1_764_000_000_003,
            expires_ms: far,
        },
    ]
}

pub(crate) const LEGACY_FIXTURE_MODEL: &str = "fixture-model";

/// Writes `tests/fixtures/store-v1.json` with the store code of its commit (schema 1, bincode
/// entries): every tree of a store holding [`legacy_fixture_entries`], the first hit twice.
/// Run once: `cargo test --lib store::tests::write_legacy_fixture -- --ignored`.
#[test]
#[ignore]
fn write_legacy_fixture() {
    let dir = TempDir::new().unwrap();
    let cfg = StoreConfig {
        max_entries: 0,
        flush_every: std::time::Duration::ZERO,
        ..StoreConfig::new(dir.path().join("store"), LEGACY_FIXTURE_MODEL, DIM)
    };
    let store = Store::open(&cfg).unwrap();
    let ids: Vec<EntryId> = legacy_fixture_entries()
        .into_iter()
        .map(|e| store.insert(e).unwrap().id)
        .collect();
    assert!(store.record_hit(ids[0], 1_764_000_100_000).unwrap());
    assert!(store.record_hit(ids[0], 1_764_000_200_000).unwrap());
    store.flush().unwrap();
    let mut trees = serde_json::Map::new();
    for name in ["meta", "entries", "exact", "access"] {
        let tree = store.inner.db.open_tree(name).unwrap();
        let pairs: Vec<serde_json::Value> = tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                serde_json::json!([hex::encode(k), hex::encode(v)])
            })
            .collect();
        trees.insert(name.to_string(), pairs.into());
    }
    let marker = std::fs::read_to_string(cfg.dir.join(meta::MARKER_FILE)).unwrap();
    let fixture = serde_json::json!({
        "about": "A schema-1 store (bincode 1 entries) written by deja's store code before the \
                  switch to postcard: every sled tree as [key, value] hex pairs, and the marker \
                  file. Made by store::tests::write_legacy_fixture at that commit.",
        "model_id": LEGACY_FIXTURE_MODEL,
        "dim": DIM,
        "ids": ids,
        "marker": marker,
        "trees": trees,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_string_pretty(&fixture).unwrap() + "\n").unwrap();
}
