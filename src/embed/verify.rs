//! SHA-256 verification of model weights, remembered in a small marker file so that a restart
//! does not re-hash 90 MB. The marker records size, mtime and hash; any change to the file
//! invalidates it. This module never downloads or deletes anything.

use super::EmbedError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::UNIX_EPOCH;

/// Name of the marker inside a deja-cache model directory.
pub(crate) const MARKER_NAME: &str = ".verified";

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Marker {
    file: String,
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// Lowercase hex SHA-256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String, EmbedError> {
    let mut file =
        File::open(path).map_err(|e| EmbedError::io(format!("open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| EmbedError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub(crate) fn normalize_hex(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// Checks `weights` against `expected`, trusting `marker` when it still describes the file.
/// A successful full hash refreshes the marker; failing to write it only costs time later.
pub(crate) fn verify_weights(
    weights: &Path,
    expected: &str,
    marker: Option<&Path>,
) -> Result<(), EmbedError> {
    let expected = normalize_hex(expected);
    if let Some(marker) = marker {
        if marker_matches(marker, weights, &expected) {
            return Ok(());
        }
    }
    let actual = sha256_file(weights)?;
    if actual != expected {
        return Err(EmbedError::Checksum {
            file: weights.to_path_buf(),
            expected,
            actual,
        });
    }
    if let Some(marker) = marker {
        if let Err(e) = write_marker(marker, weights, &actual) {
            tracing::debug!(marker = %marker.display(), error = %e, "could not write verification marker");
        }
    }
    Ok(())
}

fn file_stamp(path: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((meta.len(), mtime.as_nanos()))
}

/// Only the file name: a deja-cache directory is unpacked under a temporary name and renamed,
/// and markers for files elsewhere are already keyed by their path.
fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn marker_matches(marker: &Path, weights: &Path, expected: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(marker) else {
        return false;
    };
    let Ok(recorded) = serde_json::from_str::<Marker>(&text) else {
        return false;
    };
    let Some((size, mtime_ns)) = file_stamp(weights) else {
        return false;
    };
    recorded.sha256 == expected
        && recorded.size == size
        && recorded.mtime_ns == mtime_ns
        && recorded.file == file_label(weights)
}

/// Records that `weights` (as it is now) hashes to `sha256`. Written to a temporary name and
/// renamed so a crash never leaves a half-written marker.
pub(crate) fn write_marker(marker: &Path, weights: &Path, sha256: &str) -> std::io::Result<()> {
    let (size, mtime_ns) = file_stamp(weights)
        .ok_or_else(|| std::io::Error::other("cannot read size/mtime of the weights"))?;
    let record = Marker {
        file: file_label(weights),
        size,
        mtime_ns,
        sha256: normalize_hex(sha256),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    if let Some(parent) = marker.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = marker.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, b"not really weights").unwrap();
        let sha = hex::encode(Sha256::digest(b"not really weights"));
        (dir, weights, sha)
    }

    #[test]
    fn mismatch_is_a_checksum_error() {
        let (_dir, weights, _) = setup();
        let wrong = "00".repeat(32);
        match verify_weights(&weights, &wrong, None) {
            Err(EmbedError::Checksum {
                expected, actual, ..
            }) => {
                assert_eq!(expected, wrong);
                assert_ne!(actual, wrong);
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }

    #[test]
    fn marker_is_written_and_invalidated_by_a_change() {
        let (dir, weights, sha) = setup();
        let marker = dir.path().join(MARKER_NAME);
        verify_weights(&weights, &sha.to_uppercase(), Some(&marker)).unwrap();
        assert!(marker_matches(&marker, &weights, &sha));
        // A different expected hash never trusts the marker.
        assert!(!marker_matches(&marker, &weights, &"11".repeat(32)));
        // Same size, new content: the mtime/size check must force a re-hash that fails.
        std::fs::write(&weights, b"NOT really weights").unwrap();
        let f = std::fs::File::options().write(true).open(&weights).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_000))
            .unwrap();
        assert!(matches!(
            verify_weights(&weights, &sha, Some(&marker)),
            Err(EmbedError::Checksum { .. })
        ));
    }
}
