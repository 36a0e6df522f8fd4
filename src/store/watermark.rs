//! Noticing a store that lost flushed writes. sled treats damage in its log (a truncated or
//! overwritten file) as a torn write and recovers the log up to it, so a damaged store opens
//! consistent but silently without its newest entries. To notice, every flush that follows a
//! change writes a sequence number into the `meta` tree, and once sled has made it durable,
//! records it with the live entry count in a small file beside sled's ([`FILE`]). On open, a
//! sequence number in sled older than the file's means sled lost writes it had made durable:
//! the loss is logged at WARN and reported by [`Store::recovery`](super::Store::recovery).
//!
//! The file is written only after sled's flush returned, so it is never ahead of what sled
//! holds unless sled's files were damaged; a crash between the two leaves it behind, which
//! reads as "nothing lost". A missing or unreadable file means "no information", never a loss.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::access::Tracker;
use super::StoreError;

/// Beside sled's files: `flush_seq <n>` and `entries <n>`, one per line.
pub const FILE: &str = "deja-store.flushed";
const KEY_FLUSH_SEQ: &[u8] = b"flush_seq";

/// What opening the store found about writes lost to damaged files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// sled came back older than its last recorded flush: its files were damaged or truncated.
    pub lost_flushed_writes: bool,
    /// Entries the last recorded flush held that are gone (a lower bound when entries were
    /// also removed meanwhile).
    pub lost_entries: usize,
}

/// Flushing with the sequence number: shared by the store and its flusher thread.
pub(crate) struct Durable {
    db: sled::Db,
    meta: sled::Tree,
    dir: std::path::PathBuf,
    tracker: Arc<Mutex<Tracker>>,
    /// Entries were written or removed since the last recorded flush.
    changed: AtomicBool,
    seq: AtomicU64,
}

impl Durable {
    pub(crate) fn new(
        db: sled::Db,
        meta: sled::Tree,
        dir: &Path,
        tracker: Arc<Mutex<Tracker>>,
        seq: u64,
    ) -> Durable {
        Durable {
            db,
            meta,
            dir: dir.to_path_buf(),
            tracker,
            changed: AtomicBool::new(false),
            seq: AtomicU64::new(seq),
        }
    }

    pub(crate) fn mark_changed(&self) {
        self.changed.store(true, Ordering::Release);
    }

    /// Makes buffered writes durable (fsync); after a change, records the flush beside sled.
    pub(crate) fn flush(&self) -> Result<(), sled::Error> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return self.db.flush().map(|_| ());
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let live = self.tracker.lock().len();
        let flushed = self
            .meta
            .insert(KEY_FLUSH_SEQ, &seq.to_be_bytes())
            .and_then(|_| self.db.flush());
        if let Err(e) = flushed {
            self.mark_changed();
            return Err(e);
        }
        write_file(&self.dir, seq, live);
        Ok(())
    }
}

/// Compares sled's sequence number with the file's. Returns what was lost and the sequence
/// number to continue from (never below the file's, so a loss is reported once).
pub(crate) fn recover(
    meta: &sled::Tree,
    dir: &Path,
    live: usize,
) -> Result<(Recovery, u64), StoreError> {
    let in_sled = meta
        .get(KEY_FLUSH_SEQ)
        .map_err(|e| StoreError::from_sled(dir, e))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let Some((recorded, entries)) = read_file(&dir.join(FILE)) else {
        return Ok((Recovery::default(), in_sled));
    };
    if in_sled >= recorded {
        return Ok((Recovery::default(), in_sled));
    }
    let recovery = Recovery {
        lost_flushed_writes: true,
        lost_entries: entries.saturating_sub(live),
    };
    tracing::warn!(
        path = %dir.display(),
        lost_entries = recovery.lost_entries,
        entries_now = live,
        entries_at_last_flush = entries,
        "the store lost writes it had flushed: its files were truncated or damaged; \
         it opened with the entries that survived"
    );
    // Record what survived as the new baseline, so the loss is reported by this open only.
    let sled_err = |e| StoreError::from_sled(dir, e);
    meta.insert(KEY_FLUSH_SEQ, &recorded.to_be_bytes())
        .map_err(sled_err)?;
    meta.flush().map_err(sled_err)?;
    write_file(dir, recorded, live);
    Ok((recovery, recorded))
}

/// Records a flush beside sled's files. Not fsynced: a lost or torn file only means the next
/// open cannot check.
fn write_file(dir: &Path, seq: u64, live: usize) {
    let text = format!("flush_seq {seq}\nentries {live}\n");
    let tmp = dir.join(format!("{FILE}.tmp"));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(FILE)));
    if let Err(e) = written {
        tracing::warn!(error = %e, "recording the store flush failed");
    }
}

fn read_file(path: &Path) -> Option<(u64, usize)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut seq = None;
    let mut entries = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("flush_seq", v)) => seq = v.trim().parse().ok(),
            Some(("entries", v)) => entries = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some((seq?, entries?))
}
