//! Hits remembered for feedback: a client that clicks thumbs-down sends the response id deja
//! gave the hit (`x-deja-response-id`) or the entry id (`x-deja-entry`), and feedback needs the
//! query, the matched prompt and their similarity, which only the hit knew. Bounded: at most
//! `capacity` hits, least recently served out first, and hits whose texts are longer than
//! [`MAX_REMEMBERED_TEXT_BYTES`] are not remembered. Feedback consumes the hit: one label per
//! served answer.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

use crate::cache::HitKind;
use crate::store::EntryId;

/// Longest query or matched prompt a remembered hit may carry (bytes): bounds the memory of
/// `quality.recent_hits` to about twice this per hit.
pub const MAX_REMEMBERED_TEXT_BYTES: usize = 4096;

/// What feedback on a hit needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedHit {
    pub entry: EntryId,
    pub kind: HitKind,
    /// The client's normalized prompt.
    pub query: String,
    /// The stored prompt whose answer was served.
    pub matched: String,
    pub similarity: f32,
    /// The tenant the hit was served to; public feedback must come from the same one.
    pub tenant: String,
}

pub struct RecentHits {
    inner: Mutex<Inner>,
}

struct Inner {
    by_response: LruCache<u128, ServedHit>,
    /// The latest response of each entry, for feedback naming the entry.
    by_entry: LruCache<EntryId, u128>,
}

/// `x-deja-response-id`: `dejaresp-` + 32 hex characters.
pub fn format_response_id(id: u128) -> String {
    format!("dejaresp-{id:032x}")
}

/// The id in a response id string, `None` if it is not one deja makes.
pub fn parse_response_id(s: &str) -> Option<u128> {
    let hex = s.strip_prefix("dejaresp-")?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

impl RecentHits {
    pub fn new(capacity: usize) -> RecentHits {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        RecentHits {
            inner: Mutex::new(Inner {
                by_response: LruCache::new(cap),
                by_entry: LruCache::new(cap),
            }),
        }
    }

    /// Remembers a hit and returns its response id; `None` when its texts are too long.
    pub fn remember(&self, hit: ServedHit) -> Option<u128> {
        if hit.query.len() > MAX_REMEMBERED_TEXT_BYTES
            || hit.matched.len() > MAX_REMEMBERED_TEXT_BYTES
        {
            return None;
        }
        let id = uuid::Uuid::new_v4().as_u128();
        let mut inner = self.inner.lock();
        inner.by_entry.put(hit.entry, id);
        inner.by_response.put(id, hit);
        Some(id)
    }

    /// Takes the hit of response `id`; with `tenant`, only if it was served to that tenant.
    pub fn take_response(&self, id: u128, tenant: Option<&str>) -> Option<ServedHit> {
        let mut inner = self.inner.lock();
        let hit = inner.by_response.peek(&id)?;
        if tenant.is_some_and(|t| t != hit.tenant) {
            return None;
        }
        let hit = inner.by_response.pop(&id)?;
        if inner.by_entry.peek(&hit.entry) == Some(&id) {
            inner.by_entry.pop(&hit.entry);
        }
        Some(hit)
    }

    /// Takes the latest remembered hit of `entry` (see [`Self::take_response`]).
    pub fn take_entry(&self, entry: EntryId, tenant: Option<&str>) -> Option<ServedHit> {
        let id = *self.inner.lock().by_entry.peek(&entry)?;
        self.take_response(id, tenant)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_response.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(entry: EntryId, tenant: &str) -> ServedHit {
        ServedHit {
            entry,
            kind: HitKind::Semantic,
            query: "q".into(),
            matched: "m".into(),
            similarity: 0.9,
            tenant: tenant.into(),
        }
    }

    #[test]
    fn response_ids_round_trip_and_reject_others() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let s = format_response_id(id);
        assert_eq!(s, "dejaresp-0123456789abcdef0011223344556677");
        assert_eq!(parse_response_id(&s), Some(id));
        for bad in [
            "chatcmpl-1",
            "dejaresp-12",
            "dejaresp-zz23456789abcdef0011223344556677",
        ] {
            assert_eq!(parse_response_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn feedback_takes_a_hit_once_and_only_for_its_tenant() {
        let r = RecentHits::new(10);
        let id = r.remember(hit(5, "key:a")).unwrap();
        assert_eq!(r.take_response(id, Some("key:b")), None, "another tenant");
        assert_eq!(r.take_entry(5, None).map(|h| h.entry), Some(5));
        assert_eq!(r.take_response(id, None), None, "taken once");
    }

    #[test]
    fn bounded_by_count_and_by_text_length() {
        let r = RecentHits::new(2);
        let ids: Vec<u128> = (0..3).map(|i| r.remember(hit(i, "t")).unwrap()).collect();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.take_response(ids[0], None),
            None,
            "least recent went first"
        );
        assert!(r.take_response(ids[2], None).is_some());
        let mut long = hit(9, "t");
        long.query = "x".repeat(MAX_REMEMBERED_TEXT_BYTES + 1);
        assert_eq!(r.remember(long), None);
    }
}
