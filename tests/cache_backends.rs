//! The cache engine's behaviour, one suite run against every storage backend (issue 14): the
//! embedded one (sled + in-process index) and PostgreSQL + pgvector (a real server started by
//! `common::postgres`, one schema per test). The suite is written once, in [`suite`]; the
//! `backend_suite!` macro instantiates it per backend. Tests that only make sense with a shared
//! database (two engines at once, an outage) follow, for PostgreSQL alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deja::cache::{CacheEngine, Lookup, LookupTrace, Rule};
use deja::config::Config;
use deja::embed::{Embedder, HashEmbedder};
use deja::store::{CachedResponse, FinishReason, ScopeId};

const DIM: usize = 64;
const URL_ENV: &str = "DEJA_TEST_PG_URL";

/// Where one test's engines keep their entries: a directory (embedded) or a schema of the test
/// server (postgres).
pub struct Kit {
    backend: &'static str,
    dir: tempfile::TempDir,
    schema: String,
    url: Option<String>,
    /// Lines added to `[cache.postgres]`.
    pg_extra: String,
}

impl Kit {
    pub fn new(backend: &'static str, test: &str) -> Option<Kit> {
        let (schema, url) = match backend {
            "postgres" => {
                let pg = pg_or_skip!()?;
                (pg.schema(test), Some(pg.url()))
            }
            _ => (String::new(), None),
        };
        Some(Kit {
            backend,
            dir: tempfile::tempdir().unwrap(),
            schema,
            url,
            pg_extra: String::new(),
        })
    }

    fn config(&self, cache_extra: &str) -> Config {
        let backend = match self.backend {
            "postgres" => format!(
                "backend = \"postgres\"\n{cache_extra}\n[cache.postgres]\nurl_env = \"{URL_ENV}\"\n\
                 schema = \"{}\"\npool_size = 4\nstatement_timeout = \"2s\"\n{}\n",
                self.schema, self.pg_extra
            ),
            _ => cache_extra.to_string(),
        };
        let text = common::harness::config_text(
            &self.dir.path().join("store"),
            "http://127.0.0.1:9",
            &backend,
            "",
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), self.dir.path()).unwrap()
    }

    /// An engine as the server opens it, on this kit's storage.
    pub fn open_with(
        &self,
        cache_extra: &str,
        embedder: Arc<dyn Embedder>,
    ) -> Result<CacheEngine, String> {
        let config = self.config(cache_extra);
        let url = self.url.clone();
        let env = move |name: &str| (name == URL_ENV).then(|| url.clone()).flatten();
        blocking(|| deja::server::open_engine_env(&config, embedder, &env))
            .map_err(|e| e.to_string())
    }

    pub fn open(&self) -> CacheEngine {
        self.open_with("", model()).unwrap()
    }
}

/// Blocking engine calls (store writes, network round trips) off the async threads, as the
/// server makes them.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn model() -> Arc<dyn Embedder> {
    Arc::new(HashEmbedder::new(DIM))
}

fn answer(text: &str) -> CachedResponse {
    CachedResponse {
        model: "m".into(),
        content: text.into(),
        finish_reason: FinishReason::Stop,
        usage: None,
        provider: "mock".into(),
        system_fingerprint: None,
        tool_calls: Vec::new(),
    }
}

fn scope(name: &str) -> ScopeId {
    ScopeId::from_bytes(name.as_bytes())
}

const TTL: Duration = Duration::from_secs(3600);
const RULE: Rule = Rule {
    threshold: 0.8,
    verified_threshold: 0.8,
    guards: true,
    judge_floor: None,
    model: None,
};

/// Stores `prompt` with its embedding, as a miss's insert does.
async fn put(e: &CacheEngine, s: ScopeId, prompt: &str, text: &str, ttl: Duration) -> u64 {
    let v = e.embedder().embed(prompt).await.unwrap();
    e.insert(s, prompt.into(), Some(v), answer(text), ttl, None)
        .await
        .unwrap()
}

async fn look(e: &CacheEngine, s: ScopeId, prompt: &str) -> Lookup {
    let mut trace = LookupTrace::default();
    e.lookup(s, prompt, true, RULE, &mut trace).await.unwrap()
}

/// `(kind, content)` of a lookup, for compact assertions.
fn seen(l: &Lookup) -> (&'static str, String) {
    match l {
        Lookup::Exact(e) => ("exact", e.response.content.clone()),
        Lookup::Semantic { entry, .. } => ("semantic", entry.response.content.clone()),
        Lookup::Uncertain { .. } => ("uncertain", String::new()),
        Lookup::Miss { .. } => ("miss", String::new()),
    }
}

fn lim(max: usize, max_bytes: u64) -> deja::cache::backend::ChainLimits {
    deja::cache::backend::ChainLimits { max, max_bytes }
}

fn cosine(a: &str, b: &str) -> f32 {
    let h = HashEmbedder::new(DIM);
    let (x, y) = (h.embed_one(a), h.embed_one(b));
    x.iter().zip(&y).map(|(p, q)| p * q).sum()
}

const BREAD: &str = "How do I bake sourdough bread at home";
const BREAD_NEAR: &str = "How do I bake sourdough bread at home easily";
const OTHER: &str = "Which planets have rings around them";

/// The suite, written once for every backend.
mod suite {
    use super::*;

    pub async fn hits_stay_in_their_scope(k: &Kit) {
        assert!(cosine(BREAD, BREAD_NEAR) > RULE.threshold);
        assert!(cosine(BREAD, OTHER) < 0.5);
        let e = k.open();
        let (a, b) = (scope("tenant-a"), scope("tenant-b"));
        put(&e, a, BREAD, "knead, wait, bake", TTL).await;
        assert_eq!(
            seen(&look(&e, a, BREAD).await),
            ("exact", "knead, wait, bake".into())
        );
        // The exact form folds case and trailing punctuation.
        let folded = BREAD.to_lowercase() + "?";
        assert_eq!(seen(&look(&e, a, &folded).await).0, "exact");
        match look(&e, a, BREAD_NEAR).await {
            Lookup::Semantic {
                entry, similarity, ..
            } => {
                assert_eq!(entry.prompt, BREAD);
                assert!(
                    (similarity - cosine(BREAD, BREAD_NEAR)).abs() < 1e-3,
                    "{similarity}"
                );
            }
            other => panic!("expected a semantic hit, got {:?}", seen(&other)),
        }
        match look(&e, a, OTHER).await {
            Lookup::Miss { best, .. } => assert!(best.is_some_and(|b| b < 0.5), "{best:?}"),
            other => panic!("expected a miss, got {:?}", seen(&other)),
        }
        // Another scope sees nothing, exact or semantic, and no similarity either.
        for p in [BREAD, BREAD_NEAR] {
            match look(&e, b, p).await {
                Lookup::Miss { best, .. } => assert_eq!(best, None),
                other => panic!("{p}: scope b got {:?}", seen(&other)),
            }
        }
        assert_eq!(e.entries(), 1);
    }

    /// Where the exact lookup is a database round trip, the prompt's embedding is queued
    /// before it (it runs during the round trip); in process it is queued only after an exact
    /// miss. Either way an exact hit is what is served, and a semantic hit is the same.
    pub async fn the_embedding_overlaps_a_remote_exact_lookup(k: &Kit) {
        let e = k.open();
        let s = scope("t");
        put(&e, s, BREAD, "bake", TTL).await;
        // Every embedding asked for is an LRU hit or miss.
        let queued = |e: &CacheEngine| {
            let st = e.embedder().stats();
            st.lru_hits + st.lru_misses
        };
        let before = queued(&e);
        assert_eq!(seen(&look(&e, s, BREAD).await), ("exact", "bake".into()));
        let expected = if e.backend().remote() { 1 } else { 0 };
        assert_eq!(queued(&e) - before, expected, "{}", e.backend().kind());
        assert_eq!(
            seen(&look(&e, s, BREAD_NEAR).await),
            ("semantic", "bake".into())
        );
    }

    /// Issue 17: the admin's scan, remove and purge, on every backend: what is removed leaves
    /// the store and the search at once.
    pub async fn issue17_removed_entries_leave_store_and_search_at_once(k: &Kit) {
        use deja::admin::entries::{Purge, PurgeFilter};
        let e = k.open();
        let (a, b) = (scope("a"), scope("b"));
        let bread = put(&e, a, BREAD, "bread", TTL).await;
        let rings = put(&e, b, OTHER, "rings", TTL).await;
        assert_eq!(seen(&look(&e, a, BREAD_NEAR).await).0, "semantic");
        let first = blocking(|| e.backend().scan(None, 1)).unwrap();
        assert_eq!(first.len(), 1);
        let rest = blocking(|| e.backend().scan(Some(first[0].entry.id), 10)).unwrap();
        let ids: Vec<u64> = first.iter().chain(&rest).map(|s| s.entry.id).collect();
        let mut want = vec![bread, rings];
        want.sort();
        assert_eq!(ids, want, "pages in id order, nothing twice");
        assert!(blocking(|| e.backend().scan(Some(want[1]), 10))
            .unwrap()
            .is_empty());

        let removed = blocking(|| e.remove_blocking(bread)).unwrap();
        assert_eq!(removed.map(|x| x.id), Some(bread));
        assert_eq!(seen(&look(&e, a, BREAD).await).0, "miss");
        assert_eq!(seen(&look(&e, a, BREAD_NEAR).await).0, "miss");
        assert!(blocking(|| e.backend().get(bread)).unwrap().is_none());
        assert!(blocking(|| e.remove_blocking(bread)).unwrap().is_none());

        let filter = PurgeFilter {
            scope: Some(b.to_hex()),
            ..Default::default()
        };
        let purge = Purge::new(&filter, deja::store::now_ms()).unwrap();
        assert_eq!(blocking(|| purge.run_blocking(&e)).unwrap(), (1, 1));
        assert_eq!(seen(&look(&e, b, OTHER).await).0, "miss");
        assert_eq!(e.entries(), 0);
    }

    /// Issue 17: each entry keeps the tenant it was stored for, across a restart; entries
    /// stored without one read as unknown; purge by namespace takes exactly its entries out
    /// of the store and the search.
    pub async fn issue17_entries_keep_their_namespace(k: &Kit) {
        use deja::admin::entries::{Purge, PurgeFilter};
        let e = k.open();
        let (a, b, c) = (scope("na"), scope("nb"), scope("nc"));
        let store = |s: ScopeId, prompt: &'static str, ns: Option<&'static str>| {
            let e = e.clone();
            async move {
                let v = e.embedder().embed(prompt).await.unwrap();
                let ns = ns.map(str::to_string);
                e.insert(s, prompt.into(), Some(v), answer(prompt), TTL, ns)
                    .await
                    .unwrap()
            }
        };
        let team = store(a, BREAD, Some("ns:team-a")).await;
        let key = store(b, OTHER, Some("key:0123abcd")).await;
        let old = store(c, BREAD, None).await;
        let names = |e: &CacheEngine| -> Vec<(u64, Option<String>)> {
            blocking(|| e.backend().scan(None, 10))
                .unwrap()
                .into_iter()
                .map(|s| (s.entry.id, s.namespace))
                .collect()
        };
        let want = vec![
            (team, Some("ns:team-a".to_string())),
            (key, Some("key:0123abcd".to_string())),
            (old, None),
        ];
        assert_eq!(names(&e), want);
        blocking(|| e.flush_blocking()).unwrap();
        drop(e);
        let e = k.open();
        assert_eq!(names(&e), want, "after a restart");

        let purge = |ns: &str| {
            let f = PurgeFilter {
                namespace: Some(ns.into()),
                ..Default::default()
            };
            Purge::new(&f, deja::store::now_ms()).unwrap()
        };
        let p = purge("team-a");
        assert_eq!(blocking(|| p.run_blocking(&e)).unwrap(), (1, 3));
        assert_eq!(seen(&look(&e, a, BREAD).await).0, "miss");
        assert_eq!(seen(&look(&e, a, BREAD_NEAR).await).0, "miss");
        assert_eq!(seen(&look(&e, b, OTHER).await).0, "exact");
        let p = purge("(unknown)");
        assert_eq!(blocking(|| p.run_blocking(&e)).unwrap(), (1, 2));
        assert_eq!(seen(&look(&e, c, BREAD).await).0, "miss");
        assert_eq!(names(&e), vec![(key, Some("key:0123abcd".to_string()))]);
    }

    pub async fn a_replacement_takes_the_old_answers_place(k: &Kit) {
        let e = k.open();
        let s = scope("t");
        let old = put(&e, s, BREAD, "old", TTL).await;
        let new = put(&e, s, BREAD, "new", TTL).await;
        assert_ne!(old, new);
        assert_eq!(seen(&look(&e, s, BREAD).await), ("exact", "new".into()));
        assert_eq!(
            seen(&look(&e, s, BREAD_NEAR).await),
            ("semantic", "new".into())
        );
        assert!(blocking(|| e.backend().get(old)).unwrap().is_none());
        assert_eq!(e.entries(), 1);
    }

    pub async fn expired_answers_are_never_served_and_are_swept(k: &Kit) {
        let e = k.open();
        let s = scope("t");
        put(&e, s, BREAD, "stale", Duration::ZERO).await;
        put(&e, s, OTHER, "fresh", TTL).await;
        assert_eq!(seen(&look(&e, s, BREAD).await).0, "miss");
        assert_eq!(seen(&look(&e, s, BREAD_NEAR).await).0, "miss");
        let swept = blocking(|| e.sweep_expired_blocking(100)).unwrap();
        assert_eq!(swept, 1);
        assert_eq!(e.entries(), 1);
        assert_eq!(seen(&look(&e, s, OTHER).await), ("exact", "fresh".into()));
    }

    pub async fn answers_outlive_the_engine_that_stored_them(k: &Kit) {
        let e = k.open();
        let s = scope("t");
        put(&e, s, BREAD, "kept", TTL).await;
        blocking(|| e.flush_blocking()).unwrap();
        drop(e);
        let again = k.open();
        assert_eq!(
            seen(&look(&again, s, BREAD).await),
            ("exact", "kept".into())
        );
        assert_eq!(
            seen(&look(&again, s, BREAD_NEAR).await),
            ("semantic", "kept".into())
        );
        assert_eq!(again.entries(), 1);
    }

    pub async fn storage_written_by_another_model_is_refused(k: &Kit) {
        let e = k.open();
        put(&e, scope("t"), BREAD, "x", TTL).await;
        drop(e);
        let err = k
            .open_with("", Arc::new(HashEmbedder::new(32)))
            .err()
            .expect("another model must be refused");
        assert!(
            err.contains("deja/hashing-64") && err.contains("deja/hashing-32"),
            "{err}"
        );
        // The right model still opens it, with the entry.
        assert_eq!(k.open().entries(), 1);
    }

    pub async fn the_least_recently_hit_go_first_past_max_entries(k: &Kit) {
        let e = k.open_with("max_entries = 3", model()).unwrap();
        let s = scope("t");
        let prompts = ["alpha one", "bravo two", "charlie three", "delta four"];
        for p in &prompts[..3] {
            put(&e, s, p, p, TTL).await;
        }
        // Recency is kept in milliseconds of wall clock (tokio's paused clock does not move
        // it): the hit must land in a later millisecond than the inserts.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(seen(&look(&e, s, prompts[0]).await).0, "exact");
        std::thread::sleep(Duration::from_millis(5));
        put(&e, s, prompts[3], prompts[3], TTL).await;
        blocking(|| {
            e.flush_blocking()?;
            e.sweep_expired_blocking(100)
        })
        .unwrap();
        assert_eq!(e.entries(), 3);
        assert_eq!(
            seen(&look(&e, s, prompts[1]).await).0,
            "miss",
            "the LRU entry stayed"
        );
        for p in [prompts[0], prompts[2], prompts[3]] {
            assert_eq!(seen(&look(&e, s, p).await).0, "exact", "{p}");
        }
    }

    /// Responses conversation records (issue 15): read back until they expire, bounded by the
    /// count given (the soonest-expiring go first; the shared database checks its count every
    /// few writes), and kept across a restart.
    pub async fn issue15_response_chains_are_bounded_and_outlive_the_engine(k: &Kit) {
        let e = k.open();
        e.put_chain("a".into(), b"one".to_vec(), TTL, lim(100, 1 << 20))
            .await
            .unwrap();
        assert_eq!(
            e.chain("a".into()).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        e.put_chain("a".into(), b"two".to_vec(), TTL, lim(100, 1 << 20))
            .await
            .unwrap();
        assert_eq!(
            e.chain("a".into()).await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(e.chain("absent".into()).await.unwrap(), None);
        let short = Duration::from_millis(1);
        e.put_chain("short".into(), b"x".to_vec(), short, lim(100, 1 << 20))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(e.chain("short".into()).await.unwrap(), None, "expired");

        // 70 writes with a bound of 5, each expiring later than the one before.
        for i in 0..70u64 {
            let ttl = TTL + Duration::from_secs(i);
            e.put_chain(format!("r{i:02}"), b"x".to_vec(), ttl, lim(5, 1 << 20))
                .await
                .unwrap();
        }
        let mut kept = Vec::new();
        for i in 0..70u64 {
            if e.chain(format!("r{i:02}")).await.unwrap().is_some() {
                kept.push(i);
            }
        }
        match k.backend {
            "embedded" => assert_eq!(kept, (65..70).collect::<Vec<_>>()),
            _ => assert!(kept.len() <= 5 + 64, "{kept:?}"),
        }
        assert!(kept.contains(&69), "the latest-expiring stays: {kept:?}");
        assert!(
            !kept.contains(&0),
            "the soonest-expiring went first: {kept:?}"
        );
        assert_eq!(e.chain("a".into()).await.unwrap(), None, "evicted too");

        // 70 records of 1000 bytes with a budget of 10,000 bytes.
        for i in 0..70u64 {
            let ttl = 2 * TTL + Duration::from_secs(i);
            e.put_chain(format!("b{i:02}"), vec![7; 1000], ttl, lim(1000, 10_000))
                .await
                .unwrap();
        }
        let mut kept = Vec::new();
        for i in 0..70u64 {
            if e.chain(format!("b{i:02}")).await.unwrap().is_some() {
                kept.push(i);
            }
        }
        match k.backend {
            "embedded" => assert_eq!(kept, (61..70).collect::<Vec<_>>()),
            _ => assert!(kept.len() <= 10 + 64, "{kept:?}"),
        }
        assert!(kept.contains(&69) && !kept.contains(&0), "{kept:?}");
        drop(e);

        let e = k.open();
        assert!(
            e.chain("b69".into()).await.unwrap().is_some(),
            "kept across a restart"
        );
    }
}

macro_rules! backend_suite {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(kit) = Kit::new(stringify!($backend), stringify!($test)) else {
                        return;
                    };
                    suite::$test(&kit).await;
                }
            )*
        }
    };
}

backend_suite!(embedded:
    hits_stay_in_their_scope,
    a_replacement_takes_the_old_answers_place,
    expired_answers_are_never_served_and_are_swept,
    answers_outlive_the_engine_that_stored_them,
    storage_written_by_another_model_is_refused,
    the_least_recently_hit_go_first_past_max_entries,
    issue17_removed_entries_leave_store_and_search_at_once,
    issue15_response_chains_are_bounded_and_outlive_the_engine,
    issue17_entries_keep_their_namespace,
    the_embedding_overlaps_a_remote_exact_lookup,
);

backend_suite!(postgres:
    hits_stay_in_their_scope,
    a_replacement_takes_the_old_answers_place,
    expired_answers_are_never_served_and_are_swept,
    answers_outlive_the_engine_that_stored_them,
    storage_written_by_another_model_is_refused,
    the_least_recently_hit_go_first_past_max_entries,
    issue17_removed_entries_leave_store_and_search_at_once,
    issue15_response_chains_are_bounded_and_outlive_the_engine,
    issue17_entries_keep_their_namespace,
    the_embedding_overlaps_a_remote_exact_lookup,
);

/// What only a shared database can do: several engines (replicas) on one schema at once.
mod fleet {
    use super::*;
    use deja::cache::backend::Health;

    fn kit(test: &str) -> Option<Kit> {
        Kit::new("postgres", test)
    }

    /// A kit on a database of the test's own (which it may make refuse or end connections),
    /// and that database's name.
    fn own_database(pg: &common::postgres::PgServer, name: &str) -> (Kit, String) {
        let db = format!("{name}_{}", std::process::id());
        pg.psql(&format!("CREATE DATABASE {db}"));
        let kit = Kit {
            url: Some(format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port)),
            ..Kit::new("postgres", name).unwrap()
        };
        (kit, db)
    }

    /// An answer stored through one replica is served by another at once, exact and semantic;
    /// a replacement (`no-cache`) on either is what both serve next; scopes stay apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_replicas_serve_each_others_answers_at_once() {
        let Some(k) = kit("replicas") else { return };
        let (a, b) = (k.open(), k.open());
        let s = scope("tenant-a");
        put(&a, s, BREAD, "from a", TTL).await;
        assert_eq!(seen(&look(&b, s, BREAD).await), ("exact", "from a".into()));
        assert_eq!(
            seen(&look(&b, s, BREAD_NEAR).await),
            ("semantic", "from a".into())
        );
        assert_eq!(seen(&look(&b, scope("tenant-b"), BREAD).await).0, "miss");
        put(&b, s, BREAD, "refreshed on b", TTL).await;
        assert_eq!(
            seen(&look(&a, s, BREAD).await),
            ("exact", "refreshed on b".into())
        );
        assert_eq!(
            seen(&look(&a, s, BREAD_NEAR).await),
            ("semantic", "refreshed on b".into())
        );
    }

    /// Replicas starting at once all migrate (the advisory lock makes them take turns) and the
    /// schema is made once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_replicas_that_start_at_once_all_open_one_schema() {
        let Some(k) = kit("start_at_once") else {
            return;
        };
        let k = Arc::new(k);
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let k = Arc::clone(&k);
                std::thread::spawn(move || {
                    let config = k.config("");
                    let url = k.url.clone();
                    let env = move |n: &str| (n == URL_ENV).then(|| url.clone()).flatten();
                    deja::server::open_engine_env(&config, model(), &env).map(|e| e.entries())
                })
            })
            .collect();
        for t in opened {
            assert_eq!(t.join().unwrap().map_err(|e| e.to_string()), Ok(0));
        }
        let pg = common::postgres::server().unwrap();
        let meta = pg.psql(&format!(
            "SELECT key, value FROM {}.meta ORDER BY key",
            k.schema
        ));
        assert_eq!(meta, "dim|64\nmodel_id|deja/hashing-64\nschema_version|1");
    }

    /// Issue 17: a table written before entries recorded their namespace (no such column)
    /// opens: the migration adds the column without touching the rows, which read as unknown
    /// and keep serving; new rows record theirs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue17_a_table_from_before_namespaces_opens_and_reads_unknown() {
        let Some(k) = kit("before_namespaces") else {
            return;
        };
        let e = k.open();
        let s = scope("t");
        let old = put(&e, s, BREAD, "old", TTL).await;
        drop(e);
        let pg = common::postgres::server().unwrap();
        pg.psql(&format!(
            "ALTER TABLE {}.entries DROP COLUMN namespace",
            k.schema
        ));
        let e = k.open();
        assert_eq!(seen(&look(&e, s, BREAD).await), ("exact", "old".into()));
        let v = e.embedder().embed(OTHER).await.unwrap();
        let new = e
            .insert(
                s,
                OTHER.into(),
                Some(v),
                answer("new"),
                TTL,
                Some("ns:x".into()),
            )
            .await
            .unwrap();
        let names: Vec<(u64, Option<String>)> = blocking(|| e.backend().scan(None, 10))
            .unwrap()
            .into_iter()
            .map(|s| (s.entry.id, s.namespace))
            .collect();
        assert_eq!(names, vec![(old, None), (new, Some("ns:x".into()))]);
    }

    /// Hits are written in batches by the maintenance task (or a flush), not one UPDATE each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_hit_counts_are_written_in_batches() {
        let Some(k) = kit("hit_batches") else { return };
        let e = k.open_with("", model()).unwrap();
        let s = scope("t");
        let id = put(&e, s, BREAD, "x", TTL).await;
        for _ in 0..5 {
            assert_eq!(seen(&look(&e, s, BREAD).await).0, "exact");
        }
        let pg = common::postgres::server().unwrap();
        let stored = |pg: &common::postgres::PgServer| {
            pg.psql(&format!(
                "SELECT hits FROM {}.entries WHERE id = {id}",
                k.schema
            ))
        };
        // Five hits, and at most one statement wrote them (none yet, or all five at once).
        let now = stored(pg);
        assert!(now == "0" || now == "5", "{now}");
        blocking(|| e.flush_blocking()).unwrap();
        assert_eq!(stored(pg), "5");
    }

    /// A database that refuses connections: lookups fail fast (forwarded uncached by the
    /// request path), the backend says it is degraded and counts the failures, and once the
    /// database accepts connections again the replica recovers by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_database_that_refuses_connections_fails_open_then_recovers() {
        let Some(pg) = pg_or_skip!() else { return };
        let (k, db) = own_database(pg, "outage");
        let e = k.open_with("", model()).unwrap();
        let s = scope("t");
        put(&e, s, BREAD, "before", TTL).await;
        assert_eq!(e.health(), Health::Ready);

        pg.psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
        pg.psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ));
        let started = std::time::Instant::now();
        let mut trace = LookupTrace::default();
        let out = e.lookup(s, BREAD, true, RULE, &mut trace).await;
        assert!(out.is_err(), "{:?}", out.map(|l| seen(&l)));
        // Bounded by the lookup gate's timeout and the statement timeout, not hung.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(e.health(), Health::Degraded(_)),
            "{:?}",
            e.health()
        );
        assert!(e.backend().stats().errors > 0);
        assert!(e.backend().stats().degraded);

        pg.psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
        // The maintenance task pings every 500 ms; wait for it (real time: a real server).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while e.health() != Health::Ready && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(e.health(), Health::Ready);
        assert_eq!(seen(&look(&e, s, BREAD).await), ("exact", "before".into()));
        drop(e);
    }

    /// The lookups' own connections (half of `pool_size`, which is 4 here) are bounded: a
    /// burst of concurrent lookups past them takes the pool, and every one answers; the
    /// replica never holds more than `pool_size` connections. Connections the server ends
    /// (a restart, an administrator) are replaced by the next lookup without failing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_lookup_connections_are_bounded_and_replaced_when_the_server_ends_them() {
        let Some(pg) = pg_or_skip!() else { return };
        // A database of its own: the test ends every connection to it.
        let (k, db) = own_database(pg, "ended");
        let e = k.open();
        let s = scope("t");
        put(&e, s, BREAD, "x", TTL).await;
        let burst = |e: &CacheEngine| {
            let e = e.clone();
            async move {
                let asks = (0..12).map(|i| {
                    let e = e.clone();
                    tokio::spawn(async move {
                        let prompt = if i % 2 == 0 { BREAD } else { BREAD_NEAR };
                        seen(&look(&e, s, prompt).await).1
                    })
                });
                futures::future::join_all(asks).await
            }
        };
        for answer in burst(&e).await {
            assert_eq!(answer.unwrap(), "x");
        }
        let open = e.backend().stats().connections;
        assert!((1..=4).contains(&open), "{open} connections");

        // Every connection of the replica ends, as in a server restart.
        let ended = pg.psql(&format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
             FROM pg_stat_activity WHERE datname = '{db}'"
        ));
        assert_ne!(ended, "0", "{open} connections were open");
        // The pool's connection tasks notice at once; the lookups' own are not read while
        // idle, so the next lookup on each finds it closed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for answer in burst(&e).await {
            assert_eq!(answer.unwrap(), "x");
        }
        assert_eq!(e.health(), Health::Ready);
        assert!(e.backend().stats().connections <= 4);
    }

    /// A lookup searches first with `first_ef_search` and again with `ef_search` only when
    /// the first search found nothing the rule could serve: a hit makes one search, a miss two
    /// (counted), and both decide as one full search would. With `first_ef_search = 0` every
    /// lookup makes one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_lookup_searches_again_only_without_a_servable_neighbour() {
        let Some(k) = kit("second_search") else {
            return;
        };
        let e = k.open();
        let s = scope("t");
        put(&e, s, BREAD, "bake", TTL).await;
        let again = |e: &CacheEngine| e.backend().stats().second_searches;
        assert_eq!(
            seen(&look(&e, s, BREAD_NEAR).await),
            ("semantic", "bake".into())
        );
        assert_eq!(again(&e), 0, "a hit found by the first search");
        match look(&e, s, OTHER).await {
            Lookup::Miss { best, .. } => {
                let want = cosine(BREAD, OTHER);
                assert!(best.is_some_and(|b| (b - want).abs() < 1e-3), "{best:?}");
            }
            other => panic!("expected a miss, got {:?}", seen(&other)),
        }
        assert_eq!(again(&e), 1, "a miss searches again");
        drop(e);

        let one = Kit {
            pg_extra: "first_ef_search = 0".into(),
            ..Kit::new("postgres", "one_search").unwrap()
        };
        let e = one.open();
        put(&e, s, BREAD, "bake", TTL).await;
        assert_eq!(seen(&look(&e, s, OTHER).await).0, "miss");
        assert_eq!(
            seen(&look(&e, s, BREAD_NEAR).await),
            ("semantic", "bake".into())
        );
        assert_eq!(again(&e), 0);
    }

    /// Neither the URL nor its password shows in what a failed start reports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_the_url_and_its_password_never_appear_in_errors() {
        let Some(_) = pg_or_skip!() else { return };
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for url in [
            format!("postgres://deja:s3cret-pw@127.0.0.1:{closed}/deja"),
            "postgres://deja:s3cret-pw@[::1:5432/deja".to_string(),
        ] {
            let k = Kit {
                url: Some(url.clone()),
                ..Kit::new("postgres", "secrets").unwrap()
            };
            let err = k.open_with("", model()).err().expect("must not open");
            assert!(!err.contains("s3cret-pw"), "{err}");
            assert!(!err.contains(&url), "{err}");
            assert!(err.contains(URL_ENV) || err.contains("connect"), "{err}");
        }
    }
}

/// The HTTP-level fleet behaviour, written once and run on every backend: a "fleet" is two
/// deja servers on one database with PostgreSQL, and the one server that owns its store with
/// the embedded backend (there, "another replica" is the same one). What one replica paid for
/// upstream the others serve; a `no-cache` refresh, a TTL, an eviction and a singleflight act
/// for the whole fleet.
mod http_suite {
    use super::*;
    use common::harness::{client, Deja, Reply};
    use common::mock_upstream::MockUpstream;
    use serde_json::{json, Value};

    pub struct Fleet {
        pub replicas: Vec<Deja>,
        pub mock: MockUpstream,
    }

    pub fn chat(text: &str) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": text}]})
    }

    impl Fleet {
        /// `cache_extra` goes in `[cache]` (before the `[cache.postgres]` block).
        pub async fn start(k: &Kit, mock: MockUpstream, cache_extra: &str) -> Fleet {
            let mut replicas = Vec::new();
            let n = if k.backend == "postgres" { 2 } else { 1 };
            for _ in 0..n {
                replicas.push(start_replica(k, &mock.base_url(), cache_extra, "").await);
            }
            Fleet { replicas, mock }
        }

        /// Replica `i` (the only one, with the embedded backend).
        pub fn at(&self, i: usize) -> &Deja {
            &self.replicas[i % self.replicas.len()]
        }

        pub async fn ask(&self, i: usize, text: &str, headers: &[(&str, &str)]) -> Reply {
            let mut h = vec![("authorization", "Bearer k")];
            h.extend_from_slice(headers);
            self.at(i)
                .post("/v1/chat/completions", &chat(text), &h)
                .await
        }

        /// Waits for every replica's background inserts.
        pub async fn settle(&self) {
            for d in &self.replicas {
                d.settle().await;
            }
        }

        /// Writes every replica's pending hit counts (batched by the postgres backend).
        pub fn flush_hits(&self) {
            for d in &self.replicas {
                let e = d.state.engine().unwrap().clone();
                blocking(|| e.flush_blocking()).unwrap();
            }
        }

        pub async fn stop(self) {
            for d in self.replicas {
                d.stop().await;
            }
        }
    }

    /// One deja server on the kit's storage; `pg_extra` goes in `[cache.postgres]`.
    pub async fn start_replica(k: &Kit, upstream: &str, cache_extra: &str, pg_extra: &str) -> Deja {
        let cache = match k.backend {
            "postgres" => format!(
                "threshold = 0.8\n{cache_extra}\nbackend = \"postgres\"\n[cache.postgres]\n\
                 url_env = \"{URL_ENV}\"\nschema = \"{}\"\n{pg_extra}\n",
                k.schema
            ),
            _ => format!("threshold = 0.8\n{cache_extra}\n"),
        };
        let text = common::harness::config_text(&k.dir.path().join("store"), upstream, &cache, "");
        let env = match &k.url {
            Some(url) => vec![(URL_ENV.to_string(), url.clone())],
            None => Vec::new(),
        };
        Deja::start_config_env(&text, k.dir.path(), model(), None, env).await
    }

    pub async fn metrics(d: &Deja) -> String {
        let r = client().get(d.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// The value of one exported series (0 when it is absent).
    pub fn metric(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// What one replica paid for upstream, the others serve at once: exact and semantic.
    pub async fn a_miss_on_one_replica_is_a_hit_on_the_other(k: &Kit) {
        let f = Fleet::start(k, MockUpstream::start().await, "").await;
        assert_eq!(f.ask(0, BREAD, &[]).await.header("x-deja-cache"), "miss");
        f.settle().await;
        assert_eq!(
            f.ask(1, BREAD, &[]).await.header("x-deja-cache"),
            "exact-hit"
        );
        let near = f.ask(1, BREAD_NEAR, &[]).await;
        assert_eq!(near.header("x-deja-cache"), "semantic-hit");
        assert_eq!(
            f.mock.calls(),
            1,
            "the other replica's hits cost no upstream call"
        );
        let ready = client().get(f.at(1).url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.unwrap(), "ready\n");
        let kind = k.backend;
        let m = metrics(f.at(1)).await;
        assert!(
            m.contains(&format!("deja_backend_degraded{{backend=\"{kind}\"}} 0")),
            "{m}"
        );
        // A miss with nothing near: on PostgreSQL its first, cheaper search found nothing
        // servable and it searched again; the connections it holds are shown.
        assert_eq!(f.ask(1, OTHER, &[]).await.header("x-deja-cache"), "miss");
        let m = metrics(f.at(1)).await;
        let remote = kind == "postgres";
        let second = metric(
            &m,
            &format!("deja_backend_second_searches_total{{backend=\"{kind}\"}}"),
        );
        assert_eq!(second, if remote { 1.0 } else { 0.0 }, "{m}");
        let open = metric(
            &m,
            &format!("deja_backend_connections{{backend=\"{kind}\"}}"),
        );
        assert!(
            if remote {
                (1.0..=16.0).contains(&open)
            } else {
                open == 0.0
            },
            "{m}"
        );
        f.stop().await;
    }

    /// `Cache-Control: no-cache` on one replica replaces the answer every replica serves.
    pub async fn no_cache_on_one_replica_refreshes_the_whole_fleet(k: &Kit) {
        let f = Fleet::start(k, MockUpstream::start().await, "").await;
        let first = f.ask(0, BREAD, &[]).await;
        f.settle().await;
        assert_eq!(f.ask(1, BREAD, &[]).await.content(), first.content());
        let fresh = f.ask(1, BREAD, &[("cache-control", "no-cache")]).await;
        assert_eq!(fresh.header("x-deja-cache"), "miss");
        assert_ne!(
            fresh.content(),
            first.content(),
            "the mock numbers its answers"
        );
        f.settle().await;
        for i in 0..2 {
            let r = f.ask(i, BREAD, &[]).await;
            assert_eq!(r.header("x-deja-cache"), "exact-hit", "replica {i}");
            assert_eq!(r.content(), fresh.content(), "replica {i}");
            let near = f.ask(i, BREAD_NEAR, &[]).await;
            assert_eq!(near.content(), fresh.content(), "replica {i} semantic");
        }
        assert_eq!(f.mock.calls(), 2);
        f.stop().await;
    }

    /// An answer past its TTL is served by no replica, and one sweep removes it for all.
    pub async fn an_expired_answer_is_served_by_no_replica(k: &Kit) {
        let f = Fleet::start(k, MockUpstream::start().await, "").await;
        f.ask(0, BREAD, &[("x-deja-ttl", "1s")]).await;
        f.ask(0, OTHER, &[]).await;
        f.settle().await;
        assert_eq!(
            f.ask(1, BREAD, &[]).await.header("x-deja-cache"),
            "exact-hit"
        );
        // Real time: the database and the servers share the wall clock.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for i in 0..2 {
            let r = f.ask(i, BREAD, &[("cache-control", "no-store")]).await;
            assert_eq!(r.header("x-deja-cache"), "miss", "replica {i}");
            let r = f.ask(i, BREAD_NEAR, &[("cache-control", "no-store")]).await;
            assert_eq!(r.header("x-deja-cache"), "miss", "replica {i} semantic");
        }
        let sweep = |i: usize| {
            let e = f.at(i).state.engine().unwrap().clone();
            blocking(move || e.sweep_expired_blocking(100)).unwrap()
        };
        assert_eq!(sweep(0), 1);
        assert_eq!(sweep(1), 0, "swept for the whole fleet");
        assert_eq!(
            f.ask(1, OTHER, &[]).await.header("x-deja-cache"),
            "exact-hit"
        );
        f.stop().await;
    }

    /// Past `max_entries` the least recently hit answer goes, whichever replica hit or stored
    /// what; the others stay, on every replica.
    pub async fn eviction_acts_fleet_wide_least_recently_hit_first(k: &Kit) {
        let f = Fleet::start(k, MockUpstream::start().await, "max_entries = 3").await;
        let prompts = [
            "the first question about rivers",
            "a second question about mountains",
            "a third question about deserts",
            "the fourth question about oceans",
        ];
        for (i, p) in prompts[..3].iter().enumerate() {
            assert_eq!(f.ask(i, p, &[]).await.header("x-deja-cache"), "miss");
            f.settle().await;
        }
        // The oldest, hit on the other replica, is now the most recently used.
        assert_eq!(
            f.ask(1, prompts[0], &[]).await.header("x-deja-cache"),
            "exact-hit"
        );
        f.flush_hits();
        f.ask(0, prompts[3], &[]).await;
        f.settle().await;
        // The embedded store evicts as it inserts; with PostgreSQL the first replica to see
        // the table past the limit evicts (within a maintenance round): count the table.
        let rows = || match common::postgres::server() {
            Some(pg) if k.backend == "postgres" => pg
                .psql(&format!("SELECT count(*) FROM {}.entries", k.schema))
                .parse::<usize>()
                .unwrap(),
            _ => f.at(0).entries(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while rows() > 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rows(), 3);
        for i in 0..2 {
            for p in [prompts[0], prompts[2], prompts[3]] {
                let r = f.ask(i, p, &[("cache-control", "no-store")]).await;
                assert_eq!(r.header("x-deja-cache"), "exact-hit", "replica {i}: {p}");
            }
            let r = f.ask(i, prompts[1], &[("cache-control", "no-store")]).await;
            assert_eq!(r.header("x-deja-cache"), "miss", "replica {i}: evicted");
        }
        assert_eq!(f.mock.calls(), 4 + 2);
        f.stop().await;
    }

    /// Identical misses arriving at every replica while the first is upstream make that one
    /// upstream call; all are served its answer.
    pub async fn identical_misses_across_replicas_make_one_upstream_call(k: &Kit) {
        let mock = MockUpstream::builder()
            .with_latency(Duration::from_millis(800))
            .start()
            .await;
        let f = Arc::new(Fleet::start(k, mock, "").await);
        let first = {
            let f = Arc::clone(&f);
            tokio::spawn(async move { f.ask(0, BREAD, &[]).await })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while f.mock.calls() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let others: Vec<_> = (1..6)
            .map(|i| {
                let f = Arc::clone(&f);
                tokio::spawn(async move { f.ask(i, BREAD, &[]).await })
            })
            .collect();
        let first = first.await.unwrap();
        assert_eq!(first.header("x-deja-cache"), "miss");
        for r in others {
            let r = r.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-deja-cache"), "exact-hit");
            assert_eq!(r.content(), first.content());
        }
        assert_eq!(f.mock.calls(), 1);
        if k.backend == "postgres" {
            let m = metrics(f.at(1)).await;
            assert_eq!(
                metric(&m, "deja_fleet_singleflight_total{outcome=\"served\"}"),
                1.0,
                "{m}"
            );
            assert_eq!(
                metric(&m, "deja_fleet_singleflight_total{outcome=\"led\"}"),
                0.0,
                "{m}"
            );
        }
        let Ok(f) = Arc::try_unwrap(f) else {
            panic!("requests still hold the fleet")
        };
        f.stop().await;
    }

    /// A Responses answer one replica served from the cache (a deja id, `resp_dj…`) is resolved
    /// by another replica when a follow-up names it (issue 15): the upstream gets the whole
    /// conversation, statelessly.
    pub async fn issue15_a_deja_response_id_resolves_on_every_replica(k: &Kit) {
        let f = Fleet::start(k, MockUpstream::start().await, "").await;
        let h = [("authorization", "Bearer k")];
        let first = json!({"model": "m", "input": BREAD});
        let r = f.at(0).post("/v1/responses", &first, &h).await;
        assert_eq!(r.header("x-deja-cache"), "miss", "{}", r.text);
        f.settle().await;
        let hit = f.at(1).post("/v1/responses", &first, &h).await;
        assert_eq!(hit.header("x-deja-cache"), "exact-hit");
        let id = hit.body["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("resp_dj"), "{id}");
        let follow = json!({"model": "m", "input": "And rye bread?", "previous_response_id": id});
        let r = f.at(0).post("/v1/responses", &follow, &h).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-deja-cache"), "miss");
        let sent = f.mock.last_request().unwrap();
        assert!(
            sent.body.get("previous_response_id").is_none(),
            "{}",
            sent.body
        );
        let input = sent.body["input"].as_array().unwrap();
        assert_eq!(input.len(), 3, "{}", sent.body);
        assert_eq!(input[0]["content"], BREAD);
        assert_eq!(
            input[1]["content"][0]["text"],
            hit.body["output"][0]["content"][0]["text"]
        );
        assert_eq!(input[2]["content"], "And rye bread?");
        f.stop().await;
    }
}

macro_rules! http_suite {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(kit) = Kit::new(stringify!($backend), stringify!($test)) else {
                        return;
                    };
                    http_suite::$test(&kit).await;
                }
            )*
        }
    };
}

mod http_embedded {
    use super::*;
    http_suite!(embedded:
        a_miss_on_one_replica_is_a_hit_on_the_other,
        issue15_a_deja_response_id_resolves_on_every_replica,
        no_cache_on_one_replica_refreshes_the_whole_fleet,
        an_expired_answer_is_served_by_no_replica,
        eviction_acts_fleet_wide_least_recently_hit_first,
        identical_misses_across_replicas_make_one_upstream_call,
    );
}

mod http_postgres {
    use super::*;
    http_suite!(postgres:
        a_miss_on_one_replica_is_a_hit_on_the_other,
        issue15_a_deja_response_id_resolves_on_every_replica,
        no_cache_on_one_replica_refreshes_the_whole_fleet,
        an_expired_answer_is_served_by_no_replica,
        eviction_acts_fleet_wide_least_recently_hit_first,
        identical_misses_across_replicas_make_one_upstream_call,
    );
}

/// A database too slow to answer within `statement_timeout` (a test transaction holds the
/// entries table locked): requests are forwarded uncached within about that bound, `/readyz`
/// says degraded, the metrics count it; once the lock goes, the replica serves again by itself.
mod slow_database {
    use super::http_suite::{metric, metrics, start_replica};
    use super::*;
    use common::mock_upstream::MockUpstream;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_slow_database_is_passed_through_uncached_then_recovers() {
        let Some(k) = Kit::new("postgres", "slow_db") else {
            return;
        };
        let mock = MockUpstream::start().await;
        let d = start_replica(&k, &mock.base_url(), "", "statement_timeout = \"300ms\"").await;
        let ask = |extra: &'static [(&'static str, &'static str)]| {
            let mut h = vec![("authorization", "Bearer k")];
            h.extend_from_slice(extra);
            let d = &d;
            async move {
                let started = std::time::Instant::now();
                let r = d
                    .post("/v1/chat/completions", &http_suite::chat(BREAD), &h)
                    .await;
                (r, started.elapsed())
            }
        };
        let (first, _) = ask(&[]).await;
        d.settle().await;
        assert_eq!(ask(&[]).await.0.header("x-deja-cache"), "exact-hit");

        let (locker, conn) =
            tokio_postgres::connect(k.url.as_ref().unwrap(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        locker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {}.entries IN ACCESS EXCLUSIVE MODE",
                k.schema
            ))
            .await
            .unwrap();
        let (r, took) = ask(&[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-deja-cache"), "miss", "forwarded uncached");
        assert_ne!(r.content(), first.content(), "a fresh upstream answer");
        assert!(took < Duration::from_millis(1500), "not bounded: {took:?}");
        assert_eq!(mock.calls(), 2);
        let ready = client_text(&d, "/readyz").await;
        assert!(ready.starts_with("degraded: "), "{ready}");
        assert!(!ready.contains("127.0.0.1"), "no address: {ready}");
        let m = metrics(&d).await;
        assert_eq!(
            metric(&m, "deja_backend_degraded{backend=\"postgres\"}"),
            1.0,
            "{m}"
        );
        let errors = metric(&m, "deja_backend_errors_total{backend=\"postgres\"}");
        assert!(errors >= 1.0, "{m}");
        // Still degraded: the next request is forwarded too (and counted).
        let (r, took) = ask(&[]).await;
        assert_eq!(r.header("x-deja-cache"), "miss");
        assert!(took < Duration::from_millis(1500), "not bounded: {took:?}");
        let m = metrics(&d).await;
        assert!(
            metric(&m, "deja_backend_errors_total{backend=\"postgres\"}") > errors,
            "{m}"
        );

        locker.batch_execute("ROLLBACK").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client_text(&d, "/readyz").await != "ready\n" && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(client_text(&d, "/readyz").await, "ready\n");
        let calls = mock.calls();
        assert_eq!(ask(&[]).await.0.header("x-deja-cache"), "exact-hit");
        assert_eq!(mock.calls(), calls);
        let m = metrics(&d).await;
        assert_eq!(
            metric(&m, "deja_backend_degraded{backend=\"postgres\"}"),
            0.0,
            "{m}"
        );
        d.stop().await;
    }

    async fn client_text(d: &common::harness::Deja, path: &str) -> String {
        let r = common::harness::client()
            .get(d.url(path))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }
}

/// Recall of the in-scope search against an exact scan of the scope (the reference), on
/// clustered synthetic vectors, with hard isolation checked on every result: one scope holding
/// most of the table, and many small scopes (each a tiny fraction of it, where a filtered HNSW
/// scan without iterative scans loses its recall). Small here so it runs in seconds; the
/// figures at 1M entries are in docs/benchmarks.md.
mod recall {
    use super::*;
    use deja::index::synth::Synth;
    use deja::store::NewEntry;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_in_scope_search_finds_the_exact_nearest_in_big_and_small_scopes() {
        let Some(k) = Kit::new("postgres", "recall") else {
            return;
        };
        let e = k.open();
        let backend = e.backend();
        let mut synth = Synth::new(14, DIM, 40);
        let big = scope("big");
        let small: Vec<ScopeId> = (0..100).map(|i| scope(&format!("small-{i}"))).collect();
        let mut stored: Vec<(ScopeId, u64, Vec<f32>)> = Vec::new();
        blocking(|| {
            let mut put = |s: ScopeId, n: usize, synth: &mut Synth| {
                for i in 0..n {
                    let v = synth.vector();
                    let id = backend
                        .insert(NewEntry {
                            scope: s,
                            prompt: format!("{s:?} {i}"),
                            embedding: Some(v.clone()),
                            response: answer("x"),
                            created_ms: 0,
                            expires_ms: u64::MAX / 2,
                            namespace: None,
                        })
                        .unwrap();
                    stored.push((s, id, v));
                }
            };
            put(big, 3000, &mut synth);
            for s in &small {
                put(*s, 20, &mut synth);
            }
        });
        let pg = common::postgres::server().unwrap();
        pg.psql(&format!("ANALYZE {}.entries", k.schema));
        let exact = |s: ScopeId, q: &[f32]| {
            stored
                .iter()
                .filter(|(t, _, _)| *t == s)
                .map(|(_, id, v)| (*id, v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
        };
        let mut queries: Vec<(ScopeId, Vec<f32>)> = Vec::new();
        for i in 0..200 {
            let s = if i % 2 == 0 {
                big
            } else {
                small[synth.pick(small.len())]
            };
            let of_scope: Vec<&Vec<f32>> = stored
                .iter()
                .filter(|(t, _, _)| *t == s)
                .map(|(_, _, v)| v)
                .collect();
            let base = of_scope[synth.pick(of_scope.len())].clone();
            queries.push((s, synth.perturb(&base, 0.05)));
        }
        let (mut found, mut total) = ([0usize; 2], [0usize; 2]);
        blocking(|| {
            for (s, q) in &queries {
                let kind = (*s != big) as usize;
                let got = backend.nearest(*s, q, 1).unwrap();
                let want = exact(*s, q);
                for n in &got {
                    let entry = n.entry.as_ref().unwrap();
                    assert_eq!(entry.scope, *s, "a row of another scope came back");
                }
                total[kind] += 1;
                found[kind] += got.first().is_some_and(|n| n.id == want.0) as usize;
            }
        });
        let recall = |k: usize| found[k] as f64 / total[k] as f64;
        eprintln!(
            "recall@1: one big scope {:.3} ({}/{}), small scopes {:.3} ({}/{})",
            recall(0),
            found[0],
            total[0],
            recall(1),
            found[1],
            total[1]
        );
        assert!(recall(0) >= 0.97, "big scope recall@1 {}", recall(0));
        assert!(recall(1) >= 0.99, "small scopes recall@1 {}", recall(1));
    }
}

/// Moving a cache between backends (`deja cache export` / `import`): an embedded store's
/// export imports into PostgreSQL without re-embedding, in transactions of
/// `IMPORT_TX_ROWS`; a bad entry stops the import with the count stored before it, and the
/// transaction it was in stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_an_embedded_export_imports_into_postgres_in_transactions() {
    use deja::admin::entries::{export_blocking, import_stream};
    use deja::cache::backend::postgres::IMPORT_TX_ROWS;
    use deja::store::NewEntry;
    let Some(pg) = Kit::new("postgres", "import") else {
        return;
    };
    let embedded = Kit::new("embedded", "import").unwrap();
    let from = embedded.open();
    let s = scope("moved");
    let n = IMPORT_TX_ROWS * 2 + 22;
    let prompts: Vec<String> = (0..n)
        .map(|i| format!("moved question number {i}"))
        .collect();
    blocking(|| {
        for (i, p) in prompts.iter().enumerate() {
            let v = model().embed_batch(&[p]).unwrap().remove(0);
            from.backend()
                .insert(NewEntry {
                    scope: s,
                    prompt: p.clone(),
                    embedding: Some(v),
                    response: answer(&format!("answer {i}")),
                    created_ms: 1,
                    expires_ms: u64::MAX / 2,
                    namespace: Some("team".into()),
                })
                .unwrap();
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let exported = {
        let from = from.clone();
        tokio::task::spawn_blocking(move || export_blocking(&from, &tx).unwrap())
    };
    let mut text = Vec::new();
    while let Some(chunk) = rx.recv().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(exported.await.unwrap(), n as u64);

    let to = pg.open();
    let body = axum::body::Body::from(text.clone());
    let done = import_stream(&to, body, 1 << 20, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((done.imported, done.reembedded), (n as u64, 0));
    assert_eq!(to.backend().len(), n);
    for (i, p) in prompts.iter().enumerate().step_by(17) {
        let e = to.exact(s, p.clone()).await.unwrap().expect("imported");
        assert_eq!(e.response.content, format!("answer {i}"));
        let v = model().embed_batch(&[p]).unwrap().remove(0);
        let near = blocking(|| to.backend().nearest(s, &v, 1).unwrap());
        assert_eq!(near[0].entry.as_ref().unwrap().prompt, *p, "searchable");
    }

    // A line with a vector of the wrong size, in the second transaction of a fresh schema.
    let bad_at = IMPORT_TX_ROWS + 5;
    let text = String::from_utf8(text).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut bad: serde_json::Value = serde_json::from_str(&lines[1 + bad_at]).unwrap();
    bad["embedding"] = serde_json::json!([0.5, 0.5]);
    lines[1 + bad_at] = bad.to_string();
    let again = Kit::new("postgres", "import_bad").unwrap().open();
    let body = axum::body::Body::from(lines.join("\n"));
    let (status, message, done) = import_stream(&again, body, 1 << 20, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status, 500, "{message}");
    assert_eq!(done.imported, IMPORT_TX_ROWS as u64, "{message}");
    assert_eq!(
        again.backend().len(),
        IMPORT_TX_ROWS,
        "the bad transaction stored nothing"
    );
}

/// What every connection of the backend runs with: the search settings its recall rests on
/// (`cache.postgres.ef_search` among them), as the database reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_every_connection_runs_with_the_search_settings() {
    use deja::cache::backend::PostgresBackend;
    use deja::config::PostgresConfig;
    let Some(k) = Kit::new("postgres", "settings") else {
        return;
    };
    let cfg = PostgresConfig {
        url_env: URL_ENV.into(),
        schema: k.schema.clone(),
        pool_size: 2,
        ef_search: 77,
        ..PostgresConfig::default()
    };
    let url = k.url.clone();
    let env = move |name: &str| (name == URL_ENV).then(|| url.clone()).flatten();
    blocking(|| {
        let b = PostgresBackend::open(&cfg, &env, "settings-model", DIM, 0).unwrap();
        // Both pooled connections, not only the first.
        let (a, c) = std::thread::scope(|t| {
            let one = t.spawn(|| b.setting("hnsw.ef_search").unwrap());
            let two = t.spawn(|| b.setting("hnsw.ef_search").unwrap());
            (one.join().unwrap(), two.join().unwrap())
        });
        assert_eq!((a.as_str(), c.as_str()), ("77", "77"));
        assert_eq!(b.setting("hnsw.iterative_scan").unwrap(), "relaxed_order");
        assert_eq!(b.setting("plan_cache_mode").unwrap(), "force_custom_plan");
        assert_eq!(b.setting("statement_timeout").unwrap(), "2s");
        let plan = b.explain_nearest(scope("any"), &[0.1; DIM]).unwrap();
        assert!(plan.contains("Limit"), "{plan}");
        // The candidates are ordered exactly after the scan, whose relaxed order PostgreSQL
        // 17+ would otherwise take for sorted and skip the sort.
        assert!(plan.contains("Sort Key: ((c.d + "), "{plan}");
    });
    // The HNSW index is built with the parameters its recall was measured with.
    let def = common::postgres::server().unwrap().psql(&format!(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = '{}' AND indexname = 'entries_embedding'",
        k.schema
    ));
    assert!(
        def.contains("hnsw (embedding vector_cosine_ops)")
            && def.contains("m='16'")
            && def.contains("ef_construction='128'"),
        "{def}"
    );
}

/// Two real `deja serve` processes on one database.
mod processes {
    use super::*;
    use common::binary::DejaProcess;
    use common::mock_upstream::MockUpstream;
    use serde_json::json;

    /// What replica A stored is served by B, and stays served after A is killed with SIGKILL:
    /// an insert is committed before it counts as stored, so no flush window can lose it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_killing_a_replica_with_sigkill_loses_nothing_it_stored() {
        let Some(k) = Kit::new("postgres", "kill9") else {
            return;
        };
        let mock = MockUpstream::start().await;
        let pg = format!(
            "backend = \"postgres\"\n[cache.postgres]\nurl_env = \"{URL_ENV}\"\nschema = \"{}\"\n",
            k.schema
        );
        let text =
            common::harness::config_text(&k.dir.path().join("store"), &mock.base_url(), &pg, "");
        let path = k.dir.path().join("deja.toml");
        std::fs::write(&path, text).unwrap();
        let url = k.url.clone().unwrap();
        let env = [(URL_ENV, url.as_str())];
        let (a, b) = blocking(|| {
            (
                DejaProcess::start_env(&path, &env),
                DejaProcess::start_env(&path, &env),
            )
        });
        let http = common::harness::client();
        let ask = |base: &str, text: &str| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
            http.post(format!("{base}/v1/chat/completions"))
                .bearer_auth("k")
                .json(&body)
                .send()
        };
        let prompts: Vec<String> = (0..5)
            .map(|i| format!("question number {i} please"))
            .collect();
        for p in &prompts {
            let r = ask(&a.base, p).await.unwrap();
            assert_eq!(r.headers()["x-deja-cache"], "miss");
        }
        // Each insert follows its response; once B serves all five they are committed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < prompts.len() && std::time::Instant::now() < deadline {
            served = 0;
            for p in &prompts {
                let r = ask(&b.base, p).await.unwrap();
                served += (r.headers()["x-deja-cache"] == "exact-hit") as usize;
            }
        }
        assert_eq!(served, prompts.len());
        blocking(|| a.kill_9());
        for p in &prompts {
            let r = ask(&b.base, p).await.unwrap();
            assert_eq!(r.headers()["x-deja-cache"], "exact-hit", "{p}");
        }
        let rows = common::postgres::server()
            .unwrap()
            .psql(&format!("SELECT count(*) FROM {}.entries", k.schema));
        assert_eq!(rows, "5");
        assert_eq!(mock.calls(), 5);
        blocking(|| b.stop());
    }
}

/// Singleflight across two real `deja serve` processes on one database: identical misses make
/// one upstream call even when the upstream outlasts `singleflight_timeout` (the holder renews
/// its claim), and a holder killed with SIGKILL holds the other back no longer than that.
mod fleet_singleflight {
    use super::*;
    use common::binary::DejaProcess;
    use common::mock_upstream::MockUpstream;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_identical_misses_on_two_processes_make_one_call_and_a_dead_holder_blocks_nobody_long(
    ) {
        let Some(k) = Kit::new("postgres", "fleet_sf") else {
            return;
        };
        let mock = MockUpstream::builder()
            .with_latency(Duration::from_secs(3))
            .start()
            .await;
        let pg = format!(
            "backend = \"postgres\"\n[cache.postgres]\nurl_env = \"{URL_ENV}\"\nschema = \"{}\"\n\
             singleflight_timeout = \"2s\"\n",
            k.schema
        );
        let text =
            common::harness::config_text(&k.dir.path().join("store"), &mock.base_url(), &pg, "");
        let path = k.dir.path().join("deja.toml");
        std::fs::write(&path, text).unwrap();
        let url = k.url.clone().unwrap();
        let env = [(URL_ENV, url.as_str())];
        let (a, b) = blocking(|| {
            (
                DejaProcess::start_env(&path, &env),
                DejaProcess::start_env(&path, &env),
            )
        });
        let http = common::harness::client();
        let ask = |base: &str, text: &str| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
            let req = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth("k")
                .json(&body);
            async move {
                let started = std::time::Instant::now();
                let r = req.send().await?;
                let cache = r.headers()["x-deja-cache"].to_str().unwrap().to_string();
                let body: serde_json::Value = r.json().await?;
                let content = body["choices"][0]["message"]["content"].clone();
                Ok::<_, reqwest::Error>((cache, content, started.elapsed()))
            }
        };
        let wait_calls = |n: u64| {
            let mock = &mock;
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while mock.calls() < n && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(mock.calls(), n);
            }
        };

        // A is upstream (3 s, past the 2 s timeout: its renewals keep B waiting); B waits for
        // A's answer instead of paying for it again.
        const ASKED: &str = "What is the capital city of France";
        let on_a = tokio::spawn(ask(&a.base, ASKED));
        wait_calls(1).await;
        let (cache, content, _) = ask(&b.base, ASKED).await.unwrap();
        let (a_cache, a_content, _) = on_a.await.unwrap().unwrap();
        assert_eq!(a_cache, "miss");
        assert_eq!((cache.as_str(), &content), ("exact-hit", &a_content));
        assert_eq!(mock.calls(), 1, "one upstream call for the fleet");

        // A dies while upstream: B waits for A's claim to run out (at most 2 s after A's last
        // renewal), then goes upstream itself.
        const DIED: &str = "How many legs does a spider have";
        mock.set_latency(Duration::from_secs(60));
        let on_a = tokio::spawn(ask(&a.base, DIED));
        wait_calls(2).await;
        blocking(|| a.kill_9());
        let _ = on_a.await;
        mock.set_latency(Duration::ZERO);
        let (cache, _, took) = ask(&b.base, DIED).await.unwrap();
        assert_eq!(cache, "miss");
        assert_eq!(mock.calls(), 3);
        assert!(
            took >= Duration::from_millis(900),
            "B did not wait for the claim: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "blocked past the timeout: {took:?}"
        );

        let m = http
            .get(format!("{}/metrics", b.base))
            .send()
            .await
            .unwrap();
        let m = m.text().await.unwrap();
        for outcome in ["served", "took_over"] {
            let series = format!("deja_fleet_singleflight_total{{outcome=\"{outcome}\"}} 1");
            assert!(m.contains(&series), "{series}: {m}");
        }
        blocking(|| b.stop());
    }
}
