//! Conversation records of Responses answers (`crate::api::responses::chain`), kept in two
//! trees of the store's database beside the entries: `response_chains` (id → expiry ‖ record)
//! and `response_chain_expiry` (expiry ‖ id → nothing), so the soonest-expiring record is
//! always the first key of the second tree. Bounded three ways: a record past its expiry is
//! never returned (and is deleted by later writes, a few per write), and past `max` records or
//! `max_bytes` of them the soonest-expiring go first. The byte total is kept in a third tree
//! (`response_chain_meta`), so an open reads one key, not every record. Writes take one lock
//! (there is one write per Responses answer); reads take none.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Store, StoreError};

const RECORDS: &str = "response_chains";
const EXPIRY: &str = "response_chain_expiry";
const META: &str = "response_chain_meta";
const BYTES_KEY: &[u8] = b"bytes";
/// Expired records one write deletes at most (the rest go with later writes).
const SWEEP_PER_WRITE: usize = 8;

pub struct ChainTrees {
    records: sled::Tree,
    expiry: sled::Tree,
    meta: sled::Tree,
    /// Records held (counted once at open, then kept).
    count: AtomicUsize,
    /// Bytes of the records held (ids and values), persisted in `meta`.
    bytes: AtomicU64,
    write: Mutex<()>,
}

/// How many records, and how many bytes of them, are kept at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLimits {
    pub max: usize,
    pub max_bytes: u64,
}

fn size(id: &[u8], value: &[u8]) -> u64 {
    (id.len() + value.len()) as u64
}

fn expiry_key(expires_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn split(value: &[u8]) -> Option<(u64, &[u8])> {
    let (head, record) = value.split_at_checked(8)?;
    Some((u64::from_be_bytes(head.try_into().ok()?), record))
}

impl ChainTrees {
    pub fn open(store: &Store) -> Result<ChainTrees, StoreError> {
        let err = |e| StoreError::from_sled(store.path(), e);
        let records = store.side_tree(RECORDS)?;
        let expiry = store.side_tree(EXPIRY)?;
        let meta = store.side_tree(META)?;
        let count = AtomicUsize::new(records.len());
        let stored = meta.get(BYTES_KEY).map_err(err)?;
        let bytes = match stored.as_deref().and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => u64::from_be_bytes(b),
            // Not kept yet (or damaged): counted once.
            None => {
                let mut n = 0;
                for kv in records.iter() {
                    let (k, v) = kv.map_err(err)?;
                    n += size(&k, &v);
                }
                meta.insert(BYTES_KEY, &n.to_be_bytes()).map_err(err)?;
                n
            }
        };
        Ok(ChainTrees {
            records,
            expiry,
            meta,
            count,
            bytes: AtomicU64::new(bytes),
            write: Mutex::new(()),
        })
    }

    /// Bytes of the records held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `record` under `id` until `expires_ms` (replacing what `id` had), then deletes
    /// up to [`SWEEP_PER_WRITE`] records expired at `now_ms` and, past either limit, the
    /// soonest-expiring ones.
    pub fn put(
        &self,
        id: &str,
        record: &[u8],
        now_ms: u64,
        expires_ms: u64,
        limits: ChainLimits,
    ) -> Result<(), sled::Error> {
        let _w = self.write.lock();
        let mut value = Vec::with_capacity(8 + record.len());
        value.extend_from_slice(&expires_ms.to_be_bytes());
        value.extend_from_slice(record);
        self.bytes
            .fetch_add(size(id.as_bytes(), &value), Ordering::Relaxed);
        match self.records.insert(id.as_bytes(), value)? {
            Some(old) => {
                self.bytes.fetch_sub(
                    size(id.as_bytes(), &old).min(self.bytes()),
                    Ordering::Relaxed,
                );
                if let Some((old_expiry, _)) = split(&old) {
                    self.expiry.remove(expiry_key(old_expiry, id))?;
                }
            }
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.expiry.insert(expiry_key(expires_ms, id), &[])?;
        let mut swept = 0;
        while let Some((key, _)) = self.expiry.first()? {
            let Some((expires, id)) = split(&key) else {
                self.expiry.remove(&key)?;
                continue;
            };
            let over = self.len() > limits.max || self.bytes() > limits.max_bytes;
            if !(over || (expires <= now_ms && swept < SWEEP_PER_WRITE)) {
                break;
            }
            swept += 1;
            self.expiry.remove(&key)?;
            if let Some(old) = self.records.remove(id)? {
                self.count.fetch_sub(1, Ordering::Relaxed);
                let n = size(id, &old).min(self.bytes());
                self.bytes.fetch_sub(n, Ordering::Relaxed);
            }
        }
        self.meta.insert(BYTES_KEY, &self.bytes().to_be_bytes())?;
        Ok(())
    }

    /// The record stored under `id`, unless it expired at `now_ms`.
    pub fn get(&self, id: &str, now_ms: u64) -> Result<Option<Vec<u8>>, sled::Error> {
        let Some(value) = self.records.get(id.as_bytes())? else {
            return Ok(None);
        };
        Ok(split(&value)
            .filter(|(expires, _)| *expires > now_ms)
            .map(|(_, record)| record.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::cfg;
    use tempfile::TempDir;

    #[test]
    fn records_expire_and_the_count_stays_under_its_bound() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(&cfg(&dir)).unwrap();
        let chains = ChainTrees::open(&store).unwrap();
        let count = |max| ChainLimits {
            max,
            max_bytes: u64::MAX,
        };
        chains.put("a", b"one", 0, 100, count(10)).unwrap();
        assert_eq!(chains.get("a", 50).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(chains.get("a", 100).unwrap(), None, "expired at its time");
        assert_eq!(chains.get("missing", 0).unwrap(), None);
        // Replacing keeps one record and one expiry key.
        chains.put("a", b"two", 0, 200, count(10)).unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(chains.get("a", 150).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(chains.expiry.len(), 1);

        // Past `max`, the soonest-expiring records go first.
        for i in 0..5u64 {
            chains
                .put(&format!("r{i}"), b"x", 0, 1_000 + i, count(3))
                .unwrap();
        }
        assert_eq!(chains.len(), 3);
        assert_eq!(chains.records.len(), 3);
        assert_eq!(chains.expiry.len(), 3);
        assert!(chains.get("a", 0).unwrap().is_none());
        assert!(chains.get("r1", 0).unwrap().is_none());
        assert!(chains.get("r4", 0).unwrap().is_some());

        // A write sweeps expired records, a bounded number at a time.
        for i in 0..20u64 {
            chains
                .put(&format!("old{i}"), b"x", 0, 2_000, count(100))
                .unwrap();
        }
        assert_eq!(chains.len(), 23);
        chains.put("new", b"x", 5_000, 9_000, count(100)).unwrap();
        assert_eq!(chains.len(), 24 - SWEEP_PER_WRITE);
        let bytes = chains.bytes();
        let held: u64 = chains
            .records
            .iter()
            .map(|kv| kv.map(|(k, v)| size(&k, &v)).unwrap())
            .sum();
        assert_eq!(
            bytes, held,
            "the byte total follows every write and removal"
        );
        drop(chains);

        // The count and the byte total are read back at open.
        let chains = ChainTrees::open(&store).unwrap();
        assert_eq!(chains.len(), 24 - SWEEP_PER_WRITE);
        assert_eq!(chains.bytes(), bytes);
    }

    #[test]
    fn past_the_byte_budget_the_soonest_expiring_go() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(&cfg(&dir)).unwrap();
        let chains = ChainTrees::open(&store).unwrap();
        // Each record is 2 + 8 + 100 bytes: a budget of 500 keeps four.
        let limits = ChainLimits {
            max: 1_000,
            max_bytes: 500,
        };
        for i in 0..10u64 {
            chains
                .put(&format!("r{i}"), &[7u8; 100], 0, 1_000 + i, limits)
                .unwrap();
            assert!(chains.bytes() <= 500, "{}", chains.bytes());
        }
        assert_eq!(chains.len(), 4);
        assert!(chains.get("r9", 0).unwrap().is_some());
        assert!(chains.get("r5", 0).unwrap().is_none());
        // A record bigger than the whole budget does not stay either.
        chains.put("huge", &[0u8; 600], 0, 9_999, limits).unwrap();
        assert!(chains.bytes() <= 500 && chains.get("huge", 0).unwrap().is_none());
    }
}
