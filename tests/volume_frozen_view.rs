//! A volume frozen for a snapshot while it stays attached
//! (`Volume::freeze`, `read_frozen`, `thaw`): every write path — writes,
//! trims, stored writes — copies a chunk the view still needs before
//! changing it; change tracking restarts at the freeze and gets the taken
//! changes back when the snapshot fails. Real `Volume`s on an in-memory
//! store (the control socket and S3 side: `tests/snapshot_attached.rs`).

mod common;

use common::nbd::volume_on;
use envol::volume::{BlockDevice, CHUNK_SIZE, Changes, MemBackend};

const MIB: u64 = CHUNK_SIZE;
const SIZE: u64 = 4 * MIB;
const BASE: &str = "s3://b/p/snap-0123456789abcdef";
const FIRST: &str = "s3://b/p/snap-00000000000000ff";

/// A volume on a fresh in-memory store (no change record: `Unknown`),
/// whose tracking an earlier snapshot `FIRST` started.
fn tracked_volume() -> envol::volume::Volume {
    let vol = volume_on(MemBackend::new((SIZE + 2 * MIB) as usize), SIZE, 4096);
    let (taken, view) = vol.freeze(FIRST, false, 8 * MIB).unwrap();
    assert!(matches!(taken, Changes::Unknown { .. }), "{taken:?}");
    assert_eq!(
        view.usage().chunks_left,
        4,
        "unknown changes: every chunk kept"
    );
    vol.thaw(&view, None);
    vol
}

fn stored(vol: &envol::volume::Volume, chunk: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MIB as usize];
    vol.read_stored(chunk * MIB, &mut buf).unwrap();
    buf
}

#[test]
fn every_write_path_keeps_the_frozen_chunks_and_a_failure_gives_the_changes_back() {
    let vol = tracked_volume();
    for chunk in 0..4 {
        vol.write_at(chunk * MIB, &vec![b'A'; MIB as usize], false)
            .unwrap();
    }
    let at_freeze: Vec<Vec<u8>> = (0..4).map(|c| stored(&vol, c)).collect();

    let (taken, view) = vol.freeze(BASE, false, 8 * MIB).unwrap();
    assert_eq!(
        taken,
        Changes::Exact {
            base: Some(FIRST.into()),
            chunks: vec![0, 1, 2, 3]
        }
    );
    // A write, a trim and a stored write, each into another chunk, and an
    // unaligned write straddling chunks 2 and 3.
    vol.write_at(10, b"B", false).unwrap();
    vol.trim(MIB, 8192).unwrap();
    vol.write_stored(2 * MIB, &vec![7u8; 4096]).unwrap();
    vol.write_at(3 * MIB - 5, b"0123456789", false).unwrap();
    assert_eq!(view.usage().copied_bytes, 4 * MIB);
    for chunk in 0..4 {
        assert!(
            vol.read_frozen(&view, chunk).unwrap() == at_freeze[chunk as usize],
            "chunk {chunk} is as it was at the freeze"
        );
        assert!(
            stored(&vol, chunk) != at_freeze[chunk as usize],
            "changed since"
        );
    }
    assert_eq!(
        vol.changes(),
        Changes::Exact {
            base: Some(BASE.into()),
            chunks: vec![0, 1, 2, 3]
        },
        "tracking restarted at the freeze and counts the writes since"
    );

    // The snapshot failed: the taken changes come back.
    vol.thaw(&view, Some(taken));
    assert_eq!(view.usage().copied_bytes, 0);
    assert_eq!(
        vol.changes(),
        Changes::Exact {
            base: Some(FIRST.into()),
            chunks: vec![0, 1, 2, 3]
        }
    );
}

#[test]
fn only_the_changed_chunks_are_kept_unless_all_are_asked_for() {
    let vol = tracked_volume();
    vol.write_at(MIB, &[1u8; 4096], false).unwrap();
    let (taken, view) = vol.freeze(BASE, false, 8 * MIB).unwrap();
    assert_eq!(
        taken,
        Changes::Exact {
            base: Some(FIRST.into()),
            chunks: vec![1]
        }
    );
    vol.write_at(0, &[2u8; 4096], false).unwrap();
    assert_eq!(view.usage().copied_bytes, 0, "chunk 0 is not needed");
    assert!(vol.read_frozen(&view, 0).is_err());
    vol.thaw(&view, None);

    // A second snapshot keeping every chunk; and only one at a time.
    let (_, all) = vol.freeze(BASE, true, 8 * MIB).unwrap();
    assert_eq!(all.usage().chunks_left, 4);
    assert!(vol.freeze(BASE, true, 8 * MIB).is_err());
    vol.write_at(3 * MIB, &[3u8; 4096], false).unwrap();
    assert_eq!(all.usage().copied_bytes, MIB);
    vol.thaw(&all, None);
}
