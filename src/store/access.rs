//! Per-entry bookkeeping that changes on every hit: last access, hit count and expiry, kept in
//! memory (recency and expiry order) and mirrored in the `access` tree as a 24-byte record, so a
//! hit rewrites 24 bytes instead of the whole entry, and opening the store rebuilds the order
//! without decoding a single entry. It never touches the `entries` tree.

use super::EntryId;
use std::collections::{BTreeSet, HashMap};

/// What the `access` tree holds for one entry (big-endian u64s, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub last_ms: u64,
    pub hits: u64,
    pub expires_ms: u64,
}

pub(crate) const ACCESS_LEN: usize = 24;

impl Access {
    pub(crate) fn encode(&self) -> [u8; ACCESS_LEN] {
        let mut out = [0u8; ACCESS_LEN];
        out[..8].copy_from_slice(&self.last_ms.to_be_bytes());
        out[8..16].copy_from_slice(&self.hits.to_be_bytes());
        out[16..].copy_from_slice(&self.expires_ms.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Access> {
        let b: &[u8; ACCESS_LEN] = b.try_into().ok()?;
        let u = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(w)
        };
        Some(Access {
            last_ms: u(0),
            hits: u(8),
            expires_ms: u(16),
        })
    }
}

/// Key of an entry in the `entries` and `access` trees: the id, big-endian, so trees iterate
/// in insertion order.
pub(crate) fn id_key(id: EntryId) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn id_from_key(k: &[u8]) -> Option<EntryId> {
    let b: [u8; 8] = k.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Recency and expiry order of every entry in the store.
#[derive(Default)]
pub(crate) struct Tracker {
    by_id: HashMap<EntryId, Access>,
    /// (last access, id): the first element is the least recently used.
    lru: BTreeSet<(u64, EntryId)>,
    /// (expiry, id): the first element expires first.
    expiry: BTreeSet<(u64, EntryId)>,
}

impl Tracker {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn get(&self, id: EntryId) -> Option<Access> {
        self.by_id.get(&id).copied()
    }

    pub(crate) fn insert(&mut self, id: EntryId, a: Access) {
        self.remove(id);
        self.lru.insert((a.last_ms, id));
        self.expiry.insert((a.expires_ms, id));
        self.by_id.insert(id, a);
    }

    pub(crate) fn remove(&mut self, id: EntryId) -> Option<Access> {
        let a = self.by_id.remove(&id)?;
        self.lru.remove(&(a.last_ms, id));
        self.expiry.remove(&(a.expires_ms, id));
        Some(a)
    }

    /// Records a hit at `now_ms` (recency never goes backwards); `None` for an unknown id.
    pub(crate) fn touch(&mut self, id: EntryId, now_ms: u64) -> Option<Access> {
        let a = self.by_id.get_mut(&id)?;
        self.lru.remove(&(a.last_ms, id));
        a.last_ms = a.last_ms.max(now_ms);
        a.hits = a.hits.saturating_add(1);
        self.lru.insert((a.last_ms, id));
        Some(*a)
    }

    /// The least recently used entry other than `keep`.
    pub(crate) fn lru_victim(&self, keep: EntryId) -> Option<EntryId> {
        self.lru.iter().map(|&(_, id)| id).find(|&id| id != keep)
    }

    /// Up to `limit` entries expired at `now_ms`, soonest-expired first.
    pub(crate) fn expired(&self, now_ms: u64, limit: usize) -> Vec<EntryId> {
        self.expiry
            .iter()
            .take_while(|&&(exp, _)| now_ms >= exp)
            .take(limit)
            .map(|&(_, id)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(last_ms: u64, expires_ms: u64) -> Access {
        Access {
            last_ms,
            hits: 0,
            expires_ms,
        }
    }

    #[test]
    fn access_round_trips_and_rejects_bad_lengths() {
        let a = Access {
            last_ms: 1,
            hits: u64::MAX,
            expires_ms: 3,
        };
        assert_eq!(Access::decode(&a.encode()), Some(a));
        assert_eq!(Access::decode(&[0u8; 23]), None);
        assert_eq!(id_from_key(&id_key(42)), Some(42));
        assert_eq!(id_from_key(&[1, 2]), None);
    }

    #[test]
    fn lru_and_expiry_orders() {
        let mut t = Tracker::default();
        t.insert(1, acc(100, 500));
        t.insert(2, acc(200, 300));
        t.insert(3, acc(300, 400));
        assert_eq!(t.lru_victim(0), Some(1));
        assert_eq!(t.lru_victim(1), Some(2));
        let a = t.touch(1, 1_000).unwrap();
        assert_eq!((a.last_ms, a.hits), (1_000, 1));
        // A hit with an older clock never makes an entry look older.
        assert_eq!(t.touch(1, 50).unwrap().last_ms, 1_000);
        assert_eq!(t.lru_victim(0), Some(2));
        assert_eq!(t.expired(399, 10), vec![2]);
        assert_eq!(t.expired(10_000, 2), vec![2, 3]);
        assert_eq!(t.remove(2).map(|a| a.expires_ms), Some(300));
        assert_eq!(t.expired(10_000, 10), vec![3, 1]);
        assert_eq!(t.len(), 2);
        assert!(t.touch(2, 1).is_none());
    }
}
