//! The ledger: labeled pairs recorded from live traffic (feedback and shadow checks) and the
//! per-entry thresholds that feedback raised. Both persist in two trees of the embedded store's
//! sled database ([`Store::side_tree`]), flushed with it; on the shared PostgreSQL backend they
//! live in a temporary database of this process (lost on restart, not shared by replicas).
//!
//! Bounded: at most `max_pairs` pairs (the oldest go first) and as many tightened entries (the
//! lowest entry id, the oldest entry, goes first). Every method may block on sled: call them
//! off the async runtime.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::store::{now_ms, EntryId, Store, StoreError};

/// The sled tree of recorded pairs: big-endian sequence number → JSON [`RecordedPair`].
pub const PAIRS_TREE: &str = "quality_pairs";
/// The sled tree of per-entry thresholds: big-endian [`EntryId`] → f32 (little-endian).
pub const FLOORS_TREE: &str = "quality_floors";

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A client or operator said whether the served answer was right.
    Feedback,
    /// A fresh upstream answer was compared with the served one.
    Shadow,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Feedback => "feedback",
            Source::Shadow => "shadow",
        }
    }
}

/// One labeled pair, as stored and as exported: a `pairs` dataset row (`a`, `b`, `same`) that
/// `deja bench --dataset` reads, plus where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedPair {
    /// The query that was answered from the cache.
    pub a: String,
    /// The stored prompt whose answer was served.
    pub b: String,
    /// Whether the served answer was right for the query.
    pub same: bool,
    /// Cosine similarity of the two prompts when the hit was served.
    pub similarity: f32,
    pub source: Source,
    pub entry: EntryId,
    /// Unix milliseconds when the label was recorded.
    pub time_ms: u64,
}

/// In-memory view of the per-entry thresholds, read on every semantic lookup.
#[derive(Default)]
pub struct EntryFloors {
    floors: RwLock<BTreeMap<EntryId, f32>>,
}

impl EntryFloors {
    /// The similarity a candidate of `entry` must exceed to be served, when feedback set one.
    pub fn floor(&self, entry: EntryId) -> Option<f32> {
        self.floors.read().get(&entry).copied()
    }

    pub fn len(&self) -> usize {
        self.floors.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pairs and thresholds; see the module docs.
pub struct Ledger {
    pairs: sled::Tree,
    floors_tree: sled::Tree,
    floors: EntryFloors,
    /// `pairs.len()` is a scan in sled: counted here instead.
    held: AtomicUsize,
    /// The next pair's key (one past the newest on open).
    next: AtomicU64,
    max_pairs: usize,
    /// Keeps a temporary database alive (shared backend); `None` beside the embedded store.
    _temporary: Option<sled::Db>,
}

impl Ledger {
    /// The ledger in the embedded store's database; loads the thresholds (blocking).
    pub fn in_store(store: &Store, max_pairs: usize) -> Result<Ledger, StoreError> {
        let pairs = store.side_tree(PAIRS_TREE)?;
        let floors = store.side_tree(FLOORS_TREE)?;
        Ledger::from_trees(pairs, floors, max_pairs, None, store.path())
    }

    /// A ledger in a temporary database of this process (the shared backend, tests).
    pub fn temporary(max_pairs: usize) -> Result<Ledger, StoreError> {
        let path = Path::new("<temporary>");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| StoreError::from_sled(path, e))?;
        let open = |name| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(path, e))
        };
        let (pairs, floors) = (open(PAIRS_TREE)?, open(FLOORS_TREE)?);
        Ledger::from_trees(pairs, floors, max_pairs, Some(db), path)
    }

    fn from_trees(
        pairs: sled::Tree,
        floors_tree: sled::Tree,
        max_pairs: usize,
        temporary: Option<sled::Db>,
        path: &Path,
    ) -> Result<Ledger, StoreError> {
        let mut floors = BTreeMap::new();
        for kv in floors_tree.iter() {
            let (k, v) = kv.map_err(|e| StoreError::from_sled(path, e))?;
            match (<[u8; 8]>::try_from(&*k), <[u8; 4]>::try_from(&*v)) {
                (Ok(k), Ok(v)) => {
                    floors.insert(u64::from_be_bytes(k), f32::from_le_bytes(v));
                }
                _ => tracing::warn!("skipping a malformed per-entry threshold record"),
            }
        }
        let next = match pairs.last().map_err(|e| StoreError::from_sled(path, e))? {
            Some((k, _)) => <[u8; 8]>::try_from(&*k).map_or(0, |k| u64::from_be_bytes(k) + 1),
            None => 0,
        };
        let ledger = Ledger {
            held: AtomicUsize::new(pairs.len()),
            next: AtomicU64::new(next),
            pairs,
            floors_tree,
            floors: EntryFloors {
                floors: RwLock::new(floors),
            },
            max_pairs: max_pairs.max(1),
            _temporary: temporary,
        };
        ledger.trim_pairs()?;
        Ok(ledger)
    }

    pub fn floors(&self) -> &EntryFloors {
        &self.floors
    }

    /// Pairs held now.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a pair, dropping the oldest past `max_pairs`.
    pub fn record(&self, pair: &RecordedPair) -> Result<(), StoreError> {
        let err = |e| StoreError::from_sled(Path::new(PAIRS_TREE), e);
        let bytes = serde_json::to_vec(pair).map_err(|e| StoreError::Db(e.to_string()))?;
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.pairs.insert(seq.to_be_bytes(), bytes).map_err(err)?;
        self.held.fetch_add(1, Ordering::Relaxed);
        self.trim_pairs()
    }

    fn trim_pairs(&self) -> Result<(), StoreError> {
        while self.held.load(Ordering::Relaxed) > self.max_pairs {
            match self
                .pairs
                .pop_min()
                .map_err(|e| StoreError::from_sled(Path::new(PAIRS_TREE), e))?
            {
                Some(_) => self.held.fetch_sub(1, Ordering::Relaxed),
                None => {
                    self.held.store(0, Ordering::Relaxed);
                    break;
                }
            };
        }
        Ok(())
    }

    /// Raises `entry`'s own threshold to `similarity` (never lowers it): a candidate of that
    /// entry must then be strictly more similar to be served. Returns the threshold in force.
    pub fn tighten(&self, entry: EntryId, similarity: f32) -> Result<f32, StoreError> {
        let err = |e| StoreError::from_sled(Path::new(FLOORS_TREE), e);
        let floor = {
            let mut floors = self.floors.floors.write();
            let floor = floors.get(&entry).map_or(similarity, |f| f.max(similarity));
            floors.insert(entry, floor);
            floor
        };
        self.floors_tree
            .insert(entry.to_be_bytes(), floor.to_le_bytes().to_vec())
            .map_err(err)?;
        loop {
            let evict = {
                let mut floors = self.floors.floors.write();
                if floors.len() <= self.max_pairs {
                    break;
                }
                floors.pop_first().map(|(id, _)| id)
            };
            if let Some(id) = evict {
                self.floors_tree.remove(id.to_be_bytes()).map_err(err)?;
            }
        }
        Ok(floor)
    }

    /// Every pair held, oldest first.
    pub fn pairs(&self) -> Result<Vec<RecordedPair>, StoreError> {
        read_pairs(&self.pairs)
    }

    /// Writes every pair as one JSON line (a `pairs` dataset); returns how many.
    pub fn export(&self, out: &mut dyn Write) -> Result<usize, ExportError> {
        write_pairs(&self.pairs, out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the pairs failed: {0}")]
    Io(#[from] std::io::Error),
}

fn read_pairs(tree: &sled::Tree) -> Result<Vec<RecordedPair>, StoreError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (_, v) = kv.map_err(|e| StoreError::from_sled(Path::new(PAIRS_TREE), e))?;
        match serde_json::from_slice(&v) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(error = %e, "skipping a malformed recorded pair"),
        }
    }
    Ok(out)
}

fn write_pairs(tree: &sled::Tree, out: &mut dyn Write) -> Result<usize, ExportError> {
    let mut n = 0;
    for pair in read_pairs(tree)? {
        let line = serde_json::to_string(&pair).map_err(|e| StoreError::Db(e.to_string()))?;
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// `deja quality export-pairs --store DIR`: the pairs of the store in `dir` (the `cache.dir`
/// of a deja that is not running) as a `pairs` dataset; returns how many.
pub fn export_offline(dir: &Path, out: &mut dyn Write) -> Result<usize, ExportError> {
    let tree = crate::store::open_side_tree_offline(dir, PAIRS_TREE)?;
    write_pairs(&tree, out)
}

impl RecordedPair {
    pub fn new(
        query: &str,
        matched: &str,
        same: bool,
        similarity: f32,
        source: Source,
        entry: EntryId,
    ) -> RecordedPair {
        RecordedPair {
            a: query.to_string(),
            b: matched.to_string(),
            same,
            similarity,
            source,
            entry,
            time_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn pair(i: usize, same: bool) -> RecordedPair {
        RecordedPair::new(
            &format!("q{i}"),
            &format!("p{i}"),
            same,
            0.9,
            Source::Feedback,
            i as u64,
        )
    }

    /// A store just dropped may hold sled's file lock for a moment (its flusher thread ends
    /// asynchronously): retry for up to 5 s, as the store's own tests do.
    fn retry<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
        let started = std::time::Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(_) if started.elapsed() < std::time::Duration::from_secs(5) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn pairs_are_bounded_oldest_out_first() {
        let l = Ledger::temporary(3).unwrap();
        for i in 0..5 {
            l.record(&pair(i, i % 2 == 0)).unwrap();
        }
        assert_eq!(l.len(), 3);
        let held: Vec<String> = l.pairs().unwrap().into_iter().map(|p| p.a).collect();
        assert_eq!(held, ["q2", "q3", "q4"]);
    }

    #[test]
    fn thresholds_only_tighten_and_are_bounded() {
        let l = Ledger::temporary(2).unwrap();
        assert_eq!(l.tighten(7, 0.91).unwrap(), 0.91);
        assert_eq!(l.tighten(7, 0.88).unwrap(), 0.91, "never lowered");
        assert_eq!(l.tighten(7, 0.95).unwrap(), 0.95);
        l.tighten(8, 0.9).unwrap();
        l.tighten(9, 0.9).unwrap();
        assert_eq!(l.floors().len(), 2);
        assert_eq!(l.floors().floor(7), None, "the oldest entry went first");
        assert_eq!(l.floors().floor(9), Some(0.9));
    }

    #[test]
    fn pairs_and_thresholds_survive_a_reopen_and_export_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::new(tmp.path().join("store"), "deja/hashing-8", 8);
        {
            let store = Store::open(&cfg).unwrap();
            let l = Ledger::in_store(&store, 10).unwrap();
            l.record(&pair(1, false)).unwrap();
            l.record(&pair(2, true)).unwrap();
            l.tighten(1, 0.93).unwrap();
            store.flush().unwrap();
        }
        let store = retry(|| Store::open(&cfg));
        let l = Ledger::in_store(&store, 10).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.floors().floor(1), Some(0.93));
        drop(l);
        drop(store);
        let mut out = Vec::new();
        let n = retry(|| {
            out.clear();
            export_offline(&cfg.dir, &mut out)
        });
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        let dataset = tmp.path().join("pairs.jsonl");
        std::fs::write(&dataset, &text).unwrap();
        match crate::bench::dataset::load(&dataset, None).unwrap() {
            crate::bench::dataset::Dataset::Pairs(rows) => {
                let labels: Vec<(String, String, bool)> =
                    rows.into_iter().map(|r| (r.a, r.b, r.same)).collect();
                assert_eq!(
                    labels,
                    [
                        ("q1".into(), "p1".into(), false),
                        ("q2".into(), "p2".into(), true)
                    ]
                );
            }
            _ => panic!("not a pairs dataset: {text}"),
        }
    }
}
