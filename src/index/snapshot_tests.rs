//! Snapshot round trips, and every way a snapshot can be unusable: each must be refused with an
//! error, never a panic, a process exit, or a wrong index.

use super::*;
use crate::index::synth::Synth;
use crate::index::ScopedIndex;
use std::time::Duration;
use tempfile::TempDir;

const DIM: usize = 24;

fn cfg() -> IndexConfig {
    IndexConfig {
        dim: DIM,
        flat_max: 40,
        ef_construction: 64,
        ..IndexConfig::default()
    }
}

fn tag() -> SnapshotTag {
    SnapshotTag {
        store_id: "store-a".into(),
        model_id: "model".into(),
        dim: DIM,
    }
}

fn scope(n: u8) -> ScopeId {
    ScopeId::from_bytes(&[n])
}

/// An index with one HNSW scope (300 vectors, ids 0..300, every 7th removed) and one flat
/// scope (10 vectors).
fn populated() -> (ScopedIndex, Vec<Vec<f32>>) {
    let idx = ScopedIndex::new(cfg()).unwrap();
    let vecs = Synth::new(5, DIM, 6).vectors(310);
    for (i, v) in vecs.iter().take(300).enumerate() {
        idx.insert(scope(1), i as u64, v).unwrap();
    }
    assert!(idx.wait_idle(Duration::from_secs(60)));
    for id in (0..300u64).step_by(7) {
        assert!(idx.remove(scope(1), id));
    }
    for (i, v) in vecs.iter().enumerate().skip(300) {
        idx.insert(scope(2), i as u64, v).unwrap();
    }
    assert_eq!(idx.scope_kind(scope(1)), Some("hnsw"));
    assert_eq!(idx.scope_kind(scope(2)), Some("flat"));
    (idx, vecs)
}

/// Opens the current snapshot under `root` and loads every scope into a fresh index.
fn restore(root: &Path) -> Result<ScopedIndex, SnapshotError> {
    let snap = Snapshot::open(root, &tag())?.expect("a snapshot");
    let idx = ScopedIndex::new(cfg()).unwrap();
    for s in snap.scopes()? {
        let sc = s.scope;
        let h = snap.load(&cfg(), s)?;
        idx.adopt(sc, h).unwrap();
    }
    Ok(idx)
}

fn files(root: &Path, suffix: &str) -> Vec<PathBuf> {
    let snap = Snapshot::open(root, &tag()).unwrap().unwrap();
    let mut out: Vec<PathBuf> = std::fs::read_dir(snap.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

#[test]
fn a_restored_graph_answers_exactly_like_the_original_and_keeps_growing() {
    let (idx, vecs) = populated();
    let dir = TempDir::new().unwrap();
    assert!(idx.changed_since_snapshot());
    let stats = idx.snapshot(dir.path(), &tag()).unwrap();
    assert!(!idx.changed_since_snapshot());
    // Only the HNSW scope is written, tombstones included.
    assert_eq!((stats.scopes, stats.nodes), (1, 300));

    let back = restore(dir.path()).unwrap();
    assert_eq!(back.scope_len(scope(1)), idx.scope_len(scope(1)));
    assert_eq!(back.stats().tombstones, 300 / 7 + 1);
    for (i, v) in vecs.iter().take(300).enumerate() {
        let want = idx.search(scope(1), v, 5).unwrap();
        let got = back.search(scope(1), v, 5).unwrap();
        assert_eq!(got, want, "query {i}");
        assert!(got.iter().all(|n| n.id % 7 != 0), "a tombstone came back");
    }
    // The reloaded graph accepts inserts and removals like a built one.
    let extra = Synth::new(99, DIM, 3).vectors(50);
    for (i, v) in extra.iter().enumerate() {
        back.insert(scope(1), 10_000 + i as u64, v).unwrap();
    }
    for (i, v) in extra.iter().enumerate() {
        assert_eq!(
            back.search(scope(1), v, 1).unwrap()[0].id,
            10_000 + i as u64
        );
    }
    assert!(back.remove(scope(1), 1));
    assert!(back
        .search(scope(1), &vecs[1], 3)
        .unwrap()
        .iter()
        .all(|n| n.id != 1));
}

#[test]
fn a_new_snapshot_replaces_the_old_and_leftovers_are_cleaned() {
    let (idx, vecs) = populated();
    let dir = TempDir::new().unwrap();
    idx.snapshot(dir.path(), &tag()).unwrap();
    // A crash mid-snapshot leaves a temporary generation behind: never loaded.
    let leftover = dir.path().join("gen-99999999999999999999.tmp");
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("manifest.json"), b"{").unwrap();
    assert!(restore(dir.path()).is_ok());

    idx.insert(scope(1), 5_000, &vecs[305]).unwrap();
    assert!(idx.changed_since_snapshot());
    idx.snapshot(dir.path(), &tag()).unwrap();
    let gens: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
    let back = restore(dir.path()).unwrap();
    assert_eq!(back.search(scope(1), &vecs[305], 1).unwrap()[0].id, 5_000);
}

#[test]
fn no_snapshot_is_none_and_a_foreign_one_is_refused() {
    let dir = TempDir::new().unwrap();
    assert!(Snapshot::open(dir.path(), &tag()).unwrap().is_none());
    let (idx, _) = populated();
    idx.snapshot(dir.path(), &tag()).unwrap();
    for other in [
        SnapshotTag {
            store_id: "store-b".into(),
            ..tag()
        },
        SnapshotTag {
            model_id: "another-model".into(),
            ..tag()
        },
        SnapshotTag { dim: 32, ..tag() },
    ] {
        let err = Snapshot::open(dir.path(), &other).err().expect("refused");
        assert!(matches!(err, SnapshotError::Invalid { .. }), "{err}");
    }
}

#[test]
fn damaged_files_are_refused_before_hnsw_rs_reads_them() {
    let (idx, _) = populated();
    // Each case damages one file of a fresh snapshot: flipped byte, truncation, removal.
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 4] = [
        (".hnsw.graph", |p| {
            let mut b = std::fs::read(p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            std::fs::write(p, b).unwrap();
        }),
        (".hnsw.data", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() - 3]).unwrap();
        }),
        (".ids", |p| {
            let mut b = std::fs::read(p).unwrap();
            b[0] ^= 1;
            std::fs::write(p, b).unwrap();
        }),
        (".hnsw.graph", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (suffix, damage) in cases {
        let dir = TempDir::new().unwrap();
        idx.snapshot(dir.path(), &tag()).unwrap();
        let victims = files(dir.path(), suffix);
        assert_eq!(victims.len(), 1);
        damage(&victims[0]);
        let err = restore(dir.path()).err().expect("damage went unnoticed");
        let msg = err.to_string();
        assert!(
            msg.contains("checksum") || matches!(err, SnapshotError::Io { .. }),
            "{suffix}: {msg}"
        );
    }
    // A manifest that no longer parses, and a CURRENT that points outside the root.
    let dir = TempDir::new().unwrap();
    idx.snapshot(dir.path(), &tag()).unwrap();
    let manifest = files(dir.path(), MANIFEST);
    std::fs::write(&manifest[0], b"{\"format\": 1").unwrap();
    assert!(Snapshot::open(dir.path(), &tag()).is_err());
    std::fs::write(dir.path().join(CURRENT), b"../elsewhere").unwrap();
    assert!(Snapshot::open(dir.path(), &tag()).is_err());
}

#[test]
fn a_graph_that_disagrees_with_its_ids_is_refused() {
    let (idx, _) = populated();
    let dir = TempDir::new().unwrap();
    idx.snapshot(dir.path(), &tag()).unwrap();
    let snap = Snapshot::open(dir.path(), &tag()).unwrap().unwrap();
    let mut s = snap.scopes().unwrap().remove(0);
    // An id the graph never held (as if the ids file belonged to another graph).
    s.live.insert(777_777);
    let err = snap.load(&cfg(), s).err().expect("refused");
    assert!(err.to_string().contains("live ids"), "{err}");
    // A graph of another dimension than the index is configured for.
    let s = snap.scopes().unwrap().remove(0);
    let wide = IndexConfig { dim: 48, ..cfg() };
    assert!(snap.load(&wide, s).is_err());
}

#[test]
fn writes_and_searches_go_on_while_a_snapshot_is_written() {
    let (idx, vecs) = populated();
    let idx = std::sync::Arc::new(idx);
    let dir = TempDir::new().unwrap();
    let extra = Synth::new(7, DIM, 4).vectors(400);
    std::thread::scope(|s| {
        let writer = {
            let idx = &idx;
            let extra = &extra;
            s.spawn(move || {
                for (i, v) in extra.iter().enumerate() {
                    idx.insert(scope(1), 20_000 + i as u64, v).unwrap();
                }
            })
        };
        for _ in 0..5 {
            idx.snapshot(dir.path(), &tag()).unwrap();
            assert!(!idx.search(scope(1), &vecs[3], 1).unwrap().is_empty());
        }
        writer.join().unwrap();
    });
    // Whatever the racing snapshot caught restores consistently (its ids match its graph),
    // and the live index lost no write.
    let live = 300 - (300 / 7 + 1);
    let back = restore(dir.path()).unwrap();
    assert!((live..=live + 400).contains(&back.scope_len(scope(1))));
    assert_eq!(idx.scope_len(scope(1)), live + 400);
    idx.snapshot(dir.path(), &tag()).unwrap();
    let back = restore(dir.path()).unwrap();
    assert_eq!(back.scope_len(scope(1)), live + 400);
    for (i, v) in extra.iter().enumerate().step_by(37) {
        assert_eq!(
            back.search(scope(1), v, 1).unwrap()[0].id,
            20_000 + i as u64
        );
    }
}

#[test]
fn a_finished_promotion_makes_a_snapshot_due() {
    let idx = ScopedIndex::new(cfg()).unwrap();
    let dir = TempDir::new().unwrap();
    let vecs = Synth::new(8, DIM, 4).vectors(41);
    // A gate holds the promotion back until the snapshot is taken.
    let gate = idx.bg.gate.lock();
    for (i, v) in vecs.iter().enumerate() {
        idx.insert(scope(3), i as u64, v).unwrap();
    }
    idx.snapshot(dir.path(), &tag()).unwrap();
    assert!(!idx.changed_since_snapshot());
    drop(gate);
    assert!(idx.wait_idle(Duration::from_secs(60)));
    assert_eq!(idx.scope_kind(scope(3)), Some("hnsw"));
    assert!(
        idx.changed_since_snapshot(),
        "the new graph is not in the snapshot yet"
    );
    assert_eq!(idx.snapshot(dir.path(), &tag()).unwrap().nodes, 41);
}
