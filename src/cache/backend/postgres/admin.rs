//! The operator's calls on the shared backend (issue 17): remove one entry and scan the table
//! in pages, for `crate::admin`'s delete, purge, stats and export. Kept apart from the request
//! path's statements; they use the same pool, timeouts and health bookkeeping.

use super::{entry_from, ms, PgError, PostgresBackend, COLUMNS};
use crate::cache::backend::Scanned;
use crate::cache::engine::CacheError;
use crate::store::{Entry, EntryId};
use std::sync::atomic::Ordering;

impl PostgresBackend {
    /// Deletes the row: committed when it returns, for every replica at once.
    pub(super) fn remove_entry(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        let s = &self.shared;
        s.hits.lock().remove(&(id as i64));
        self.run("remove", async {
            let c = s.client("remove").await?;
            let q = format!(
                "DELETE FROM {} WHERE id = $1 RETURNING {COLUMNS}",
                s.names.entries
            );
            let row = c
                .query_opt(&q, &[&(id as i64)])
                .await
                .map_err(PgError::db("remove"))?;
            match row {
                Some(r) => {
                    let _ = s
                        .count
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
                    // The periodic estimate is the last exact count plus the ids taken since:
                    // take the removed row off that count too, or the next estimate restores it.
                    let mut counted = s.counted.lock();
                    counted.0 = counted.0.saturating_sub(1);
                    Ok(Some(entry_from(&r, 0)?))
                }
                None => Ok(None),
            }
        })
    }

    /// One page in id order (keyset pagination: no offset to skip over).
    pub(super) fn scan_entries(
        &self,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Scanned>, CacheError> {
        let s = &self.shared;
        let after = after.map_or(-1, ms);
        let limit = limit.min(i64::MAX as usize) as i64;
        self.run("scan", async {
            let c = s.client("scan").await?;
            let q = format!(
                "SELECT {COLUMNS}, hits, namespace FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                s.names.entries
            );
            let rows = c
                .query(&q, &[&after, &limit])
                .await
                .map_err(PgError::db("scan"))?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let hits: i64 = r.try_get(7).map_err(|_| PgError::Db {
                    op: "scan",
                    message: "malformed hits in a stored entry".into(),
                })?;
                let namespace: Option<String> = r.try_get(8).map_err(|_| PgError::Db {
                    op: "scan",
                    message: "malformed namespace in a stored entry".into(),
                })?;
                out.push(Scanned {
                    entry: entry_from(&r, 0)?,
                    hits: hits.max(0) as u64,
                    namespace,
                });
            }
            Ok(out)
        })
    }
}
