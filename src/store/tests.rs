//! Unit tests of [`Store`]: layout, replacement, eviction, expiry and error paths. Reopen and
//! crash behaviour are in `tests/store_reopen.rs`.

use super::meta::SCHEMA_VERSION;
use super::*;
use std::path::Path;
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
            tool_calls: Vec::new(),
        },
        created_ms,
        expires_ms: created_ms + ttl_ms,
        namespace: None,
    }
}

#[test]
fn insert_get_and_exact_lookup() {
    let dir = TempDir::new().unwrap();
    let store = reopen(&cfg(&dir)).unwrap();
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
    assert_eq!(store.get_exact(scope(1), "hello").unwrap(), Some(e.clone()));
    // Exact keys are per scope and per prompt's exact form (prose folds case and a final "?").
    assert_eq!(store.get_exact(scope(2), "hello").unwrap(), None);
    assert_eq!(store.get_exact(scope(1), "Hello?").unwrap(), Some(e));
    assert_eq!(store.get_exact(scope(1), "hello()").unwrap(), None);
    assert_eq!(store.get(out.id + 1_000).unwrap(), None);
    assert_eq!(store.len(), 1);
}

#[test]
fn replacing_an_exact_key_reports_the_old_id() {
    let dir = TempDir::new().unwrap();
    let store = reopen(&cfg(&dir)).unwrap();
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
    let store = reopen(&StoreConfig {
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
    let store = reopen(&StoreConfig {
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
    let store = reopen(&cfg(&dir)).unwrap();
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
    let store = reopen(&cfg(&dir)).unwrap();
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
    let store = reopen(&cfg(&dir)).unwrap();
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
    let store = reopen(&StoreConfig {
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
        tool_calls: Vec::new(),
    };
    vec![
        NewEntry {
            scope: scope(1),
            prompt: "¿Qué hora es en Tokio? 你好 🙂".into(),
            embedding: Some(vec![0.5, -0.5, 0.5, 0.5]),
            response: response("It is \"9:00\"\nin the morning."),
            created_ms: 1_764_000_000_000,
            expires_ms: far,
            namespace: None,
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
                tool_calls: Vec::new(),
            },
            created_ms: 1_764_000_000_001,
            expires_ms: far,
            namespace: None,
        },
        NewEntry {
            scope: scope(1),
            prompt: "already expired".into(),
            embedding: Some(vec![1.0, 0.0, 0.0, 0.0]),
            response: response("too late"),
            created_ms: 1_000,
            expires_ms: 2_000,
            namespace: None,
        },
        NewEntry {
            scope: scope(3),
            prompt: "asked twice".into(),
            embedding: Some(vec![0.0, 1.0, 0.0, 0.0]),
            response: response("first answer"),
            created_ms: 1_764_000_000_002,
            expires_ms: far,
            namespace: None,
        },
        NewEntry {
            scope: scope(3),
            prompt: "asked twice".into(),
            embedding: Some(vec![0.0, 0.0, 1.0, 0.0]),
            response: response("second answer"),
            created_ms: 1_764_000_000_003,
            expires_ms: far,
            namespace: None,
        },
    ]
}

pub(crate) const LEGACY_FIXTURE_MODEL: &str = "fixture-model";

/// `tests/fixtures/store-v1.json`: every tree of a schema-1 store holding
/// [`legacy_fixture_entries`] (the first hit twice), written by the bincode-1 store code with
/// the test `write_legacy_fixture` of commit 646387c.
const LEGACY_FIXTURE: &str = include_str!("../../tests/fixtures/store-v1.json");

/// Recreates the fixture's store in `dir` as the old code left it: its trees, its marker file,
/// and sled's id counter past the ids it handed out.
fn legacy_store(dir: &Path) -> Vec<EntryId> {
    let fixture: serde_json::Value = serde_json::from_str(LEGACY_FIXTURE).unwrap();
    let db = open_raw(dir);
    for (name, pairs) in fixture["trees"].as_object().unwrap() {
        let tree = db.open_tree(name).unwrap();
        for pair in pairs.as_array().unwrap() {
            let hex = |i: usize| hex::decode(pair[i].as_str().unwrap()).unwrap();
            tree.insert(hex(0), hex(1)).unwrap();
        }
    }
    let ids: Vec<EntryId> = serde_json::from_value(fixture["ids"].clone()).unwrap();
    while db.generate_id().unwrap() < *ids.iter().max().unwrap() {}
    db.flush().unwrap();
    let marker = fixture["marker"].as_str().unwrap();
    std::fs::write(dir.join(meta::MARKER_FILE), marker).unwrap();
    ids
}

fn legacy_cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        max_entries: 0,
        ..StoreConfig::new(dir, LEGACY_FIXTURE_MODEL, DIM)
    }
}

/// The store serves exactly what the fixture's old code stored.
fn assert_serves_the_fixture(store: &Store, ids: &[EntryId]) {
    let want = legacy_fixture_entries();
    let entry = |i: usize| {
        let e = want[i].clone();
        Entry {
            id: ids[i],
            scope: e.scope,
            prompt: e.prompt,
            embedding: e.embedding,
            response: e.response,
            created_ms: e.created_ms,
            expires_ms: e.expires_ms,
        }
    };
    // The replaced answer is gone; every other entry is there, whole.
    assert_eq!(store.get(ids[3]).unwrap(), None);
    for i in [0, 1, 2, 4] {
        assert_eq!(store.get(ids[i]).unwrap(), Some(entry(i)), "entry {i}");
        let exact = store.get_exact(want[i].scope, &want[i].prompt).unwrap();
        assert_eq!(exact, Some(entry(i)), "exact key of entry {i}");
    }
    assert_eq!(store.hits(ids[0]), Some(2));
    let mut live = Vec::new();
    store
        .for_each_live(1_764_000_300_000, |e| live.push(e.id))
        .unwrap();
    live.retain(|id| ids.contains(id));
    assert_eq!(live, vec![ids[0], ids[1], ids[4]]);
}

/// The raw `entries` values and the schema version in `meta`, read past the store.
fn raw_state(dir: &Path) -> (Vec<Vec<u8>>, Vec<u8>, bool) {
    let db = open_raw(dir);
    let entries = db.open_tree("entries").unwrap();
    let values = entries.iter().map(|kv| kv.unwrap().1.to_vec()).collect();
    let meta = db.open_tree("meta").unwrap();
    let version = meta.get(b"schema_version").unwrap().unwrap().to_vec();
    let cursor = meta.get(b"migrate_v1_cursor").unwrap().is_some();
    (values, version, cursor)
}

#[test]
fn issue12_a_schema_1_store_migrates_on_open_and_serves_its_entries() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store");
    let ids = legacy_store(&path);
    let (before, version, _) = raw_state(&path);
    assert_eq!(version, 1u32.to_be_bytes());
    assert!(before.iter().all(|raw| codec::decode(raw).is_err()));

    let store = reopen(&legacy_cfg(&path)).unwrap();
    assert_eq!(store.len(), 4);
    assert_serves_the_fixture(&store, &ids);
    // New writes coexist with the migrated entries.
    let added = store
        .insert(new_entry(
            scope(9),
            "after the migration",
            1_000,
            u64::MAX / 2,
        ))
        .unwrap();
    assert!(!ids.contains(&added.id));
    drop(store);

    let (after, version, cursor) = raw_state(&path);
    assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
    assert!(!cursor, "the cursor outlived the migration");
    assert!(after.iter().all(|raw| codec::decode(raw).is_ok()));
    let marker = std::fs::read_to_string(path.join(meta::MARKER_FILE)).unwrap();
    assert!(marker.contains(&format!("schema_version = {SCHEMA_VERSION}\n")));

    // Idempotent: a second open rewrites nothing and serves the same.
    let store = reopen(&legacy_cfg(&path)).unwrap();
    assert_eq!(store.len(), 5);
    assert_serves_the_fixture(&store, &ids);
    assert!(store.get(added.id).unwrap().is_some());
    drop(store);
    assert_eq!(raw_state(&path).0, after);
}

/// A migration stopped after any number of batches (as by a crash; one entry per batch) leaves
/// a store that opens, finishes the migration and serves every entry.
#[test]
fn issue12_an_interrupted_migration_reopens_and_finishes() {
    // Four entries: after 4 batches every entry is rewritten but the schema not yet bumped.
    for done in 0..=4 {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let ids = legacy_store(&path);
        {
            let db = open_raw(&path);
            let (meta, entries) = (
                db.open_tree("meta").unwrap(),
                db.open_tree("entries").unwrap(),
            );
            let n = migrate::from_bincode_until(&meta, &entries, b"schema_version", &path, 1, done)
                .unwrap();
            assert_eq!(n, done.min(4));
            db.flush().unwrap();
        }
        let (_, version, cursor) = raw_state(&path);
        assert_eq!(version, 1u32.to_be_bytes(), "stopped after {done}");
        assert_eq!(cursor, done > 0, "stopped after {done}");

        let store = reopen(&legacy_cfg(&path)).unwrap();
        assert_eq!(store.len(), 4);
        assert_serves_the_fixture(&store, &ids);
        drop(store);
        let (after, version, cursor) = raw_state(&path);
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        assert!(!cursor && after.iter().all(|raw| codec::decode(raw).is_ok()));
    }
}

/// A schema-1 entry that does not decode stops the open with `Corrupt` (naming it), not a
/// panic, and the store stays schema 1; a schema from the future is refused untouched.
#[test]
fn a_damaged_legacy_entry_or_a_newer_schema_is_an_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store");
    let ids = legacy_store(&path);
    {
        let db = open_raw(&path);
        let entries = db.open_tree("entries").unwrap();
        let raw = entries.get(ids[1].to_be_bytes()).unwrap().unwrap();
        entries
            .insert(ids[1].to_be_bytes(), &raw[..raw.len() - 3])
            .unwrap();
        db.flush().unwrap();
    }
    match reopen(&legacy_cfg(&path)) {
        Err(StoreError::Corrupt { message, .. }) => {
            assert!(message.contains("0000000000000001"), "{message}")
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    assert_eq!(raw_state(&path).1, 1u32.to_be_bytes());

    let future = TempDir::new().unwrap();
    let path = future.path().join("store");
    legacy_store(&path);
    {
        let db = open_raw(&path);
        let meta = db.open_tree("meta").unwrap();
        meta.insert(b"schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let opened = reopen(&legacy_cfg(&path));
    assert!(
        matches!(opened, Err(StoreError::SchemaMismatch { found: 99, .. })),
        "expected a schema mismatch, got {:?}",
        opened.map(|_| ())
    );
}

/// The exact key schema 2 wrote: the scope, then blake3 of the normalized prompt itself.
fn schema2_exact_key(scope: ScopeId, prompt: &str) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&scope.0);
    k[16..].copy_from_slice(blake3::hash(prompt.as_bytes()).as_bytes());
    k
}

/// A schema-2 store holding `entries`, as the schema-2 code left it: its metadata and marker
/// (made by opening it), each entry and access record in the layout both schemas share, and
/// schema 2's exact keys. Prompts that now share a key are all there, as schema 2 kept them.
/// Returns the ids, in order.
fn schema2_store(dir: &TempDir, entries: &[NewEntry]) -> Vec<EntryId> {
    postcard_store(dir, entries, 2)
}

/// A store of schema 2 or 3 (one entry layout, [`codec::legacy::encode_v3`]; exact keys as
/// that schema made them).
fn postcard_store(dir: &TempDir, entries: &[NewEntry], version: u32) -> Vec<EntryId> {
    drop(reopen(&cfg(dir)).unwrap());
    let db = open_raw(cfg(dir).dir);
    let tree = |n: &str| db.open_tree(n).unwrap();
    let (entries_tree, exact, access, meta) =
        (tree("entries"), tree("exact"), tree("access"), tree("meta"));
    let mut ids = Vec::new();
    for e in entries.iter().cloned() {
        let id = db.generate_id().unwrap();
        let acc = Access {
            last_ms: e.created_ms,
            hits: 0,
            expires_ms: e.expires_ms,
        };
        let key = match version {
            2 => schema2_exact_key(e.scope, &e.prompt),
            _ => exact_key(e.scope, &e.prompt),
        };
        let entry = Entry {
            id,
            scope: e.scope,
            prompt: e.prompt,
            embedding: e.embedding,
            response: e.response,
            created_ms: e.created_ms,
            expires_ms: e.expires_ms,
        };
        entries_tree
            .insert(id_key(id), codec::legacy::encode_v3(&entry).unwrap())
            .unwrap();
        access.insert(id_key(id), &acc.encode()).unwrap();
        exact.insert(key, &id_key(id)).unwrap();
        ids.push(id);
    }
    meta.insert(b"schema_version", &version.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
    ids
}

/// Prompts a schema-2 store kept apart, two of which now share an exact key (the second,
/// newer one wins), and code that keeps its own key.
fn schema2_entries() -> Vec<NewEntry> {
    vec![
        new_entry(scope(1), "How do I reset my password?", 1, u64::MAX / 2),
        new_entry(scope(1), "print(x)", 2, u64::MAX / 2),
        new_entry(scope(1), "Print(X)", 3, u64::MAX / 2),
        new_entry(scope(2), "What is US policy?", 4, u64::MAX / 2),
        new_entry(scope(1), "how do I reset my password", 5, u64::MAX / 2),
    ]
}

/// The raw trees and schema version of the store in `dir`, read past the store.
fn raw_exact_state(dir: &TempDir) -> (usize, usize, usize, Vec<u8>, bool) {
    let db = open_raw(cfg(dir).dir);
    let tree = |n: &str| db.open_tree(n).unwrap();
    let meta = tree("meta");
    (
        tree("entries").len(),
        tree("exact").len(),
        tree("access").len(),
        meta.get(b"schema_version").unwrap().unwrap().to_vec(),
        meta.get(b"migrate_v2_cursor").unwrap().is_some(),
    )
}

/// After the rebuild: a case and punctuation variant finds the prose entry (the newer of the
/// two that merged), code keeps its case, and every tree agrees.
fn assert_rekeyed(store: &Store, ids: &[EntryId]) {
    let prose = store
        .get_exact(scope(1), "how do I reset my password?")
        .unwrap()
        .unwrap();
    assert_eq!(prose.id, ids[4]);
    assert_eq!(
        prose.prompt, "how do I reset my password",
        "the prompt is kept"
    );
    assert_eq!(
        store
            .get_exact(scope(1), "HOW do I reset my password")
            .unwrap(),
        None,
        "not prose: its own key"
    );
    assert_eq!(
        store.get(ids[0]).unwrap(),
        None,
        "merged into the newer entry"
    );
    assert_eq!(store.hits(ids[0]), None);
    let exact_id = |s: u8, p: &str| store.get_exact(scope(s), p).unwrap().map(|e| e.id);
    assert_eq!(exact_id(1, "print(x)"), Some(ids[1]));
    assert_eq!(exact_id(1, "Print(X)"), Some(ids[2]));
    assert_eq!(exact_id(2, "What is US policy?"), Some(ids[3]));
    assert_eq!(exact_id(2, "what is us policy"), None);
    assert_eq!(store.len(), 4);
    assert_eq!(store.inner.entries.len(), 4);
    assert_eq!(store.inner.exact.len(), 4);
    assert_eq!(store.inner.access.len(), 4);
}

#[test]
fn a_schema_2_store_is_rekeyed_on_open() {
    let dir = TempDir::new().unwrap();
    let ids = schema2_store(&dir, &schema2_entries());
    assert_eq!(
        raw_exact_state(&dir),
        (5, 5, 5, 2u32.to_be_bytes().to_vec(), false)
    );

    let store = reopen(&cfg(&dir)).unwrap();
    assert_rekeyed(&store, &ids);
    drop(store);
    let (entries, exact, access, version, cursor) = raw_exact_state(&dir);
    assert_eq!((entries, exact, access), (4, 4, 4));
    assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
    assert!(!cursor, "the cursor outlived the migration");
    let marker = std::fs::read_to_string(cfg(&dir).dir.join(meta::MARKER_FILE)).unwrap();
    assert!(marker.contains(&format!("schema_version = {SCHEMA_VERSION}\n")));

    // Idempotent: a second open serves the same; new inserts replace by the new key.
    let store = reopen(&cfg(&dir)).unwrap();
    assert_rekeyed(&store, &ids);
    let out = store
        .insert(new_entry(scope(1), "How do I reset my password!", 9, 1_000))
        .unwrap();
    assert_eq!(out.removed, vec![(scope(1), ids[4])]);
}

/// A rebuild stopped after any number of batches (one entry per batch, as by a crash) reopens,
/// finishes and serves the same; the merge crosses batches.
#[test]
fn an_interrupted_exact_key_rebuild_reopens_and_finishes() {
    for done in 0..=5 {
        let dir = TempDir::new().unwrap();
        let ids = schema2_store(&dir, &schema2_entries());
        {
            let db = open_raw(cfg(&dir).dir);
            let tree = |n: &str| db.open_tree(n).unwrap();
            let (meta, entries, exact, access) =
                (tree("meta"), tree("entries"), tree("exact"), tree("access"));
            let trees = migrate::Trees {
                meta: &meta,
                entries: &entries,
                exact: &exact,
                access: &access,
            };
            let path = cfg(&dir).dir;
            let n = migrate::rekey_exact_until(&trees, b"schema_version", &path, 1, done).unwrap();
            assert_eq!(n.keyed, done, "stopped after {done}");
            assert_eq!(n.merged, usize::from(done == 5));
            db.flush().unwrap();
        }
        let (_, _, _, version, cursor) = raw_exact_state(&dir);
        assert_eq!(version, 2u32.to_be_bytes(), "stopped after {done}");
        assert_eq!(cursor, done > 0, "stopped after {done}");

        let store = reopen(&cfg(&dir)).unwrap();
        assert_rekeyed(&store, &ids);
        drop(store);
        let (_, _, _, version, cursor) = raw_exact_state(&dir);
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        assert!(!cursor);
    }
}

/// Merges inside one batch: the newest of several variants keeps the key.
#[test]
fn an_exact_key_rebuild_merges_within_a_batch() {
    let dir = TempDir::new().unwrap();
    let entries = vec![
        new_entry(scope(1), "Is it done?", 1, u64::MAX / 2),
        new_entry(scope(1), "is it done", 2, u64::MAX / 2),
        new_entry(scope(1), "Is it done...", 3, u64::MAX / 2),
    ];
    let ids = schema2_store(&dir, &entries);
    let store = reopen(&cfg(&dir)).unwrap();
    let e = store.get_exact(scope(1), "is it done?").unwrap().unwrap();
    assert_eq!(e.id, ids[2]);
    assert_eq!(store.len(), 1);
    assert_eq!((store.inner.entries.len(), store.inner.exact.len()), (1, 1));
}

/// Opens the sled database under a store, past the store, for tests that read or damage its
/// raw trees. A store that was just dropped may still hold the file lock for a moment (sled's
/// flusher thread ends asynchronously; seen under load as `WouldBlock`), so this retries for
/// up to 5 s instead of failing on the race.
fn open_raw(path: impl AsRef<std::path::Path>) -> sled::Db {
    let started = std::time::Instant::now();
    loop {
        match sled::open(path.as_ref()) {
            Ok(db) => return db,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", path.as_ref().display()),
        }
    }
}

/// A schema-3 store (answers without tool calls) is rewritten as schema 4 on open, also when
/// the rewrite was stopped after any number of batches (one entry each, as by a crash): every
/// entry reads back as it was, exact lookups still find it, and the cursor is gone.
#[test]
fn a_schema_3_store_gains_tool_calls_on_open_even_after_an_interrupted_rewrite() {
    let entries = vec![
        new_entry(scope(1), "first question", 1, u64::MAX / 2),
        new_entry(scope(2), "second question", 2, u64::MAX / 2),
        new_entry(scope(1), "third question", 3, u64::MAX / 2),
    ];
    for done in [None, Some(0), Some(1), Some(3)] {
        let dir = TempDir::new().unwrap();
        let ids = postcard_store(&dir, &entries, 3);
        let path = cfg(&dir).dir;
        let v3_cursor = |db: &sled::Db| {
            let meta = db.open_tree("meta").unwrap();
            (
                meta.get(b"schema_version").unwrap().unwrap().to_vec(),
                meta.get(b"migrate_v3_cursor").unwrap().is_some(),
            )
        };
        if let Some(done) = done {
            let db = open_raw(&path);
            let (meta, tree) = (
                db.open_tree("meta").unwrap(),
                db.open_tree("entries").unwrap(),
            );
            let n = migrate::add_tool_calls_until(&meta, &tree, b"schema_version", &path, 1, done)
                .unwrap();
            assert_eq!(n, done);
            db.flush().unwrap();
            assert_eq!(v3_cursor(&db), (3u32.to_be_bytes().to_vec(), done > 0));
        }
        let store = reopen(&cfg(&dir)).unwrap();
        for (id, e) in ids.iter().zip(&entries) {
            let got = store.get(*id).unwrap().unwrap();
            assert_eq!(got.response, e.response, "{done:?}");
            assert_eq!(got.prompt, e.prompt);
            let exact = store.get_exact(e.scope, &e.prompt).unwrap().unwrap();
            assert_eq!(exact.id, *id);
        }
        drop(store);
        let db = open_raw(&path);
        assert_eq!(
            v3_cursor(&db),
            (SCHEMA_VERSION.to_be_bytes().to_vec(), false)
        );
        let tree = db.open_tree("entries").unwrap();
        assert_eq!(tree.len(), entries.len());
        for kv in tree.iter() {
            let raw = kv.unwrap().1;
            assert!(codec::decode(&raw).is_ok() && codec::legacy::decode_v3(&raw).is_err());
        }
    }
}

/// An answer with tool calls is stored and read back whole.
#[test]
fn an_answer_with_tool_calls_round_trips_through_the_store() {
    let dir = TempDir::new().unwrap();
    let store = reopen(&cfg(&dir)).unwrap();
    let mut e = new_entry(scope(1), "weather in Paris", 1, u64::MAX / 2);
    e.response.content = String::new();
    e.response.finish_reason = FinishReason::ToolCalls;
    e.response.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
    }];
    let id = store.insert(e.clone()).unwrap().id;
    assert_eq!(store.get(id).unwrap().unwrap().response, e.response);
}

/// Issue 17: the namespace side record is written with its entry and leaves with it (replaced,
/// evicted, removed), so the side tree never outgrows the entries.
#[test]
fn issue17_the_namespace_record_lives_and_dies_with_its_entry() {
    let dir = TempDir::new().unwrap();
    let store = reopen(&StoreConfig {
        max_entries: 2,
        ..cfg(&dir)
    })
    .unwrap();
    let with = |s: ScopeId, p: &str, ns: Option<&str>| NewEntry {
        namespace: ns.map(str::to_string),
        ..new_entry(s, p, 1_000, 60_000)
    };
    let a = store
        .insert(with(scope(1), "a", Some("ns:team")))
        .unwrap()
        .id;
    let plain = store.insert(with(scope(1), "b", None)).unwrap().id;
    assert_eq!(store.namespace(a).unwrap().as_deref(), Some("ns:team"));
    assert_eq!(store.namespace(plain).unwrap(), None);
    let a2 = store.insert(with(scope(1), "a", Some("key:x"))).unwrap();
    assert_eq!(a2.removed, vec![(scope(1), a)]);
    assert_eq!(store.namespace(a).unwrap(), None, "replaced");
    assert_eq!(store.namespace(a2.id).unwrap().as_deref(), Some("key:x"));
    let c = store.insert(with(scope(2), "c", Some("ns:c"))).unwrap();
    assert_eq!(c.removed.len(), 1, "max_entries 2 evicts one");
    for (_, gone) in &c.removed {
        assert_eq!(store.namespace(*gone).unwrap(), None, "evicted");
    }
    store.remove(c.id).unwrap();
    assert_eq!(store.namespace(c.id).unwrap(), None, "removed");
    for kv in store.inner.namespaces.iter() {
        let (k, _) = kv.unwrap();
        let id = id_from_key(&k).unwrap();
        assert!(
            store.get(id).unwrap().is_some(),
            "a record without its entry: {id}"
        );
    }
}

/// `Store::open`, waiting out the lock a just-dropped raw `sled::Db` in this process can
/// still hold for a moment (sled releases it from a background thread); any other outcome,
/// and a lock still held after five seconds, is returned as it is.
fn reopen(config: &StoreConfig) -> Result<Store, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match Store::open(config) {
            Err(StoreError::Locked { .. })
                if started.elapsed() < std::time::Duration::from_secs(5) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
