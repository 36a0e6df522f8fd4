//! Schema migrations, run by [`super::meta`] when it opens a store older than
//! [`SCHEMA_VERSION`]. Only one exists: schema 1 (bincode 1 entries) → 2 (postcard, see
//! [`super::codec`]); the `exact` and `access` trees and every id are the same in both.
//!
//! It is crash-safe and idempotent: entries are rewritten in batches, each batch in one sled
//! transaction with a cursor in `meta` (the last entry key done), and the schema version changes
//! in the transaction that removes the cursor. sled replays whole transactions in order after a
//! crash, so an interrupted migration reopens as schema 1 with a cursor that matches the
//! entries, and resumes after it; a finished one is never run again.

use super::codec;
use super::meta::SCHEMA_VERSION;
use super::StoreError;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};
use std::ops::Bound;
use std::path::Path;

/// The schema whose entries are bincode 1.
pub(crate) const BINCODE_SCHEMA: u32 = 1;

/// Entries rewritten per transaction (a few hundred KB of writes).
const BATCH: usize = 256;

/// In `meta` while a migration from schema 1 runs: the key of the last entry rewritten.
const KEY_CURSOR: &[u8] = b"migrate_v1_cursor";

/// Rewrites every schema-1 entry as schema 2, then records schema 2 under `schema_key`.
/// Returns how many entries it rewrote (0 if an earlier run had done them all).
pub(crate) fn from_bincode(
    meta: &Tree,
    entries: &Tree,
    schema_key: &[u8],
    path: &Path,
) -> Result<usize, StoreError> {
    from_bincode_until(meta, entries, schema_key, path, BATCH, usize::MAX)
}

/// [`from_bincode`] in batches of `batch` entries, stopping (as a crash would) after `batches`
/// of them; tests interrupt it this way.
pub(crate) fn from_bincode_until(
    meta: &Tree,
    entries: &Tree,
    schema_key: &[u8],
    path: &Path,
    batch: usize,
    batches: usize,
) -> Result<usize, StoreError> {
    let size = batch.max(1);
    let started = std::time::Instant::now();
    let db = |e| StoreError::from_sled(path, e);
    let mut rewritten = 0;
    for _ in 0..batches {
        let after = meta.get(KEY_CURSOR).map_err(db)?;
        let lower = match &after {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut batch: Vec<(IVec, Vec<u8>)> = Vec::with_capacity(size);
        for kv in entries
            .range::<IVec, _>((lower, Bound::Unbounded))
            .take(size)
        {
            let (key, raw) = kv.map_err(db)?;
            let entry = codec::legacy::decode_v1(&raw).map_err(|message| StoreError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "migrating to schema {SCHEMA_VERSION}: entry {} does not decode as \
                     schema {BINCODE_SCHEMA}: {message}",
                    hex::encode(&key)
                ),
            })?;
            let bytes = codec::encode(&entry).map_err(|e| {
                StoreError::InvalidEntry(format!("cannot encode entry {}: {e}", entry.id))
            })?;
            batch.push((key, bytes));
        }
        let Some((last, _)) = batch.last() else {
            finish(meta, schema_key, path)?;
            if rewritten > 0 || after.is_some() {
                tracing::info!(
                    rewritten,
                    secs = started.elapsed().as_secs_f64(),
                    "store migrated from schema {BINCODE_SCHEMA} to {SCHEMA_VERSION}"
                );
            }
            return Ok(rewritten);
        };
        let last = last.clone();
        (entries, meta)
            .transaction(|(entries, meta)| {
                for (key, bytes) in &batch {
                    entries.insert(key, bytes.as_slice())?;
                }
                meta.insert(KEY_CURSOR, &last)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| tx_err(path, e))?;
        rewritten += batch.len();
    }
    Ok(rewritten)
}

/// Schema 2 recorded and the cursor gone, in one transaction, then made durable.
fn finish(meta: &Tree, schema_key: &[u8], path: &Path) -> Result<(), StoreError> {
    meta.transaction(|meta| {
        meta.insert(schema_key, &SCHEMA_VERSION.to_be_bytes())?;
        meta.remove(KEY_CURSOR)?;
        Ok::<_, ConflictableTransactionError<StoreError>>(())
    })
    .map_err(|e| tx_err(path, e))?;
    meta.flush().map_err(|e| StoreError::from_sled(path, e))?;
    Ok(())
}

fn tx_err(path: &Path, e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::from_sled(path, e),
    }
}
