//! Schema migrations, run by [`super::meta`] when it opens a store older than
//! [`SCHEMA_VERSION`], one step after the other:
//! - schema 1 (bincode 1 entries) → 2 (postcard, see [`super::codec`]): entries rewritten; the
//!   `exact` and `access` trees and every id are the same in both ([`from_bincode`]);
//! - schema 2 (exact keys hash the normalized prompt) → 3 (they hash its exact form,
//!   [`super::exact_key`]): the `exact` tree is cleared and rebuilt from each entry's scope and
//!   prompt ([`rekey_exact`]). Entries whose prompts now share a key (a prose prompt stored
//!   once with and once without its question mark) are merged as an insert would merge them:
//!   the newest keeps the key, the older ones are removed with their access records;
//! - schema 3 → 4 (answers carry tool calls): entries rewritten in the new layout with no tool
//!   calls ([`add_tool_calls`]); the other trees and every id stay.
//!
//! Each schema has one entry layout (1 bincode, 2 and 3 [`codec::legacy::decode_v3`], 4
//! [`codec::decode`]), so a store several schemas behind goes through every step in turn.
//!
//! All are crash-safe and idempotent: entries are read in key (id) order in batches, each
//! batch written in one sled transaction with a cursor in `meta` (the last entry key done), and
//! the schema version changes in the transaction that removes the cursor. sled replays whole
//! transactions in order after a crash, so an interrupted migration reopens at the old schema
//! with a cursor that matches the trees, and resumes after it; a finished one is never run
//! again. Memory stays bounded by one batch.

use super::meta::SCHEMA_VERSION;
use super::{codec, exact_key, StoreError};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};
use std::ops::Bound;
use std::path::Path;

/// The schema whose entries are bincode 1.
pub(crate) const BINCODE_SCHEMA: u32 = 1;

/// The schema whose entries are postcard and whose exact keys hash the normalized prompt.
pub(crate) const PROMPT_KEY_SCHEMA: u32 = 2;

/// The schema whose exact keys hash the prompt's exact form, and whose answers have no tool
/// calls.
pub(crate) const EXACT_FORM_SCHEMA: u32 = 3;

/// Entries rewritten per transaction (a few hundred KB of writes).
const BATCH: usize = 256;

/// In `meta` while a migration from schema 1 runs: the key of the last entry rewritten.
const KEY_CURSOR: &[u8] = b"migrate_v1_cursor";

/// In `meta` while the exact tree is rebuilt (schema 2 → 3): the key of the last entry
/// re-keyed, empty once the old tree is cleared and before any entry is done.
const KEY_REKEY_CURSOR: &[u8] = b"migrate_v2_cursor";

/// In `meta` while schema-3 entries are rewritten as schema 4: the key of the last one done.
const KEY_V3_CURSOR: &[u8] = b"migrate_v3_cursor";

/// One entry-rewriting step: every entry read in `from`'s layout and written in `to`'s.
struct Rewrite {
    cursor: &'static [u8],
    from: u32,
    to: u32,
    decode: fn(&[u8]) -> Result<super::Entry, String>,
    encode: fn(&super::Entry) -> Result<Vec<u8>, String>,
}

const FROM_BINCODE: Rewrite = Rewrite {
    cursor: KEY_CURSOR,
    from: BINCODE_SCHEMA,
    to: PROMPT_KEY_SCHEMA,
    decode: codec::legacy::decode_v1,
    encode: codec::legacy::encode_v3,
};

const ADD_TOOL_CALLS: Rewrite = Rewrite {
    cursor: KEY_V3_CURSOR,
    from: EXACT_FORM_SCHEMA,
    to: SCHEMA_VERSION,
    decode: codec::legacy::decode_v3,
    encode: |e| codec::encode(e).map_err(|e| e.to_string()),
};

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
    rewrite_until(
        &FROM_BINCODE,
        meta,
        entries,
        schema_key,
        path,
        batch,
        batches,
    )
}

/// Rewrites every schema-3 entry as schema 4 (no tool calls), then records [`SCHEMA_VERSION`]
/// under `schema_key`. Returns how many entries it rewrote.
pub(crate) fn add_tool_calls(
    meta: &Tree,
    entries: &Tree,
    schema_key: &[u8],
    path: &Path,
) -> Result<usize, StoreError> {
    add_tool_calls_until(meta, entries, schema_key, path, BATCH, usize::MAX)
}

/// [`add_tool_calls`] stopped after `batches` batches of `batch` entries (tests).
pub(crate) fn add_tool_calls_until(
    meta: &Tree,
    entries: &Tree,
    schema_key: &[u8],
    path: &Path,
    batch: usize,
    batches: usize,
) -> Result<usize, StoreError> {
    rewrite_until(
        &ADD_TOOL_CALLS,
        meta,
        entries,
        schema_key,
        path,
        batch,
        batches,
    )
}

/// One [`Rewrite`] step in batches, each batch and its cursor in one transaction; the version
/// is recorded (and the cursor removed) once no entry is left after the cursor.
fn rewrite_until(
    step: &Rewrite,
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
        let after = meta.get(step.cursor).map_err(db)?;
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
            let entry = (step.decode)(&raw).map_err(|message| StoreError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "migrating to schema {}: entry {} does not decode as schema {}: {message}",
                    step.to,
                    hex::encode(&key),
                    step.from
                ),
            })?;
            let bytes = (step.encode)(&entry).map_err(|e| {
                StoreError::InvalidEntry(format!("cannot encode entry {}: {e}", entry.id))
            })?;
            batch.push((key, bytes));
        }
        let Some((last, _)) = batch.last() else {
            finish(meta, schema_key, step.cursor, step.to, path)?;
            if rewritten > 0 || after.is_some() {
                tracing::info!(
                    rewritten,
                    secs = started.elapsed().as_secs_f64(),
                    "store migrated from schema {} to {}",
                    step.from,
                    step.to
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
                meta.insert(step.cursor, &last)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| tx_err(path, e))?;
        rewritten += batch.len();
    }
    Ok(rewritten)
}

/// `version` recorded and `cursor` gone, in one transaction, then made durable.
fn finish(
    meta: &Tree,
    schema_key: &[u8],
    cursor: &[u8],
    version: u32,
    path: &Path,
) -> Result<(), StoreError> {
    meta.transaction(|meta| {
        meta.insert(schema_key, &version.to_be_bytes())?;
        meta.remove(cursor)?;
        Ok::<_, ConflictableTransactionError<StoreError>>(())
    })
    .map_err(|e| tx_err(path, e))?;
    meta.flush().map_err(|e| StoreError::from_sled(path, e))?;
    Ok(())
}

/// The store's trees a migration reads and writes.
pub(crate) struct Trees<'a> {
    pub meta: &'a Tree,
    pub entries: &'a Tree,
    pub exact: &'a Tree,
    pub access: &'a Tree,
}

/// What [`rekey_exact`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rekeyed {
    /// Entries given their new exact key.
    pub keyed: usize,
    /// Older entries removed because a newer one now has the same exact key.
    pub merged: usize,
}

/// Rebuilds the `exact` tree of a schema-2 store with [`exact_key`], then records
/// [`EXACT_FORM_SCHEMA`] under `schema_key`.
pub(crate) fn rekey_exact(
    trees: &Trees<'_>,
    schema_key: &[u8],
    path: &Path,
) -> Result<Rekeyed, StoreError> {
    rekey_exact_until(trees, schema_key, path, BATCH, usize::MAX)
}

/// [`rekey_exact`] in batches of `batch` entries, stopping (as a crash would) after `batches`
/// of them; tests interrupt it this way.
pub(crate) fn rekey_exact_until(
    trees: &Trees<'_>,
    schema_key: &[u8],
    path: &Path,
    batch: usize,
    batches: usize,
) -> Result<Rekeyed, StoreError> {
    let Trees {
        meta,
        entries,
        exact,
        access,
    } = *trees;
    let size = batch.max(1);
    let started = std::time::Instant::now();
    let db = |e| StoreError::from_sled(path, e);
    let mut done = Rekeyed::default();
    for _ in 0..batches {
        let after = match meta.get(KEY_REKEY_CURSOR).map_err(db)? {
            Some(key) => key,
            None => {
                // Not started: the old keys go first. A crash while clearing leaves no cursor,
                // so the next open clears again; the cursor is written after every removal.
                exact.clear().map_err(db)?;
                meta.insert(KEY_REKEY_CURSOR, &[]).map_err(db)?;
                IVec::default()
            }
        };
        let mut batch: Vec<(IVec, [u8; 48])> = Vec::with_capacity(size);
        for kv in entries
            .range::<IVec, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(size)
        {
            let (key, raw) = kv.map_err(db)?;
            let entry = codec::legacy::decode_v3(&raw).map_err(|message| StoreError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "migrating to schema {EXACT_FORM_SCHEMA}: entry {} does not decode: {message}",
                    hex::encode(&key)
                ),
            })?;
            batch.push((key, exact_key(entry.scope, &entry.prompt)));
        }
        let Some((last, _)) = batch.last() else {
            finish(meta, schema_key, KEY_REKEY_CURSOR, EXACT_FORM_SCHEMA, path)?;
            tracing::info!(
                keyed = done.keyed,
                merged = done.merged,
                secs = started.elapsed().as_secs_f64(),
                "store migrated from schema {PROMPT_KEY_SCHEMA} to {EXACT_FORM_SCHEMA} \
                 (exact keys rebuilt)"
            );
            return Ok(done);
        };
        let last = last.clone();
        let merged = (entries, exact, access, meta)
            .transaction(|(entries, exact, access, meta)| {
                let mut merged = 0;
                for (key, ekey) in &batch {
                    // Entries come in id order and the tree started empty, so a key already
                    // there belongs to an older entry: the newer answer wins, as on insert.
                    if let Some(older) = exact.insert(&ekey[..], key)? {
                        if older != *key {
                            entries.remove(&older)?;
                            access.remove(&older)?;
                            merged += 1;
                        }
                    }
                }
                meta.insert(KEY_REKEY_CURSOR, &last)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(merged)
            })
            .map_err(|e| tx_err(path, e))?;
        done.keyed += batch.len();
        done.merged += merged;
    }
    Ok(done)
}

fn tx_err(path: &Path, e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::from_sled(path, e),
    }
}
