use uuid::Uuid;

use super::*;
use crate::volume::backend::MemBackend;
use crate::volume::change_map::{CHUNK_SIZE, Changes};
use crate::volume::device::BlockDevice;
use crate::volume::key::DataKey;
use crate::volume::superblock::{DATA_OFFSET, read_superblocks_from};
use crate::volume::testing::{CrashBackend, PowerLoss, format_new_volume};
use crate::volume::{Volume, VolumeError};

const OLD: u64 = 3 << 20;
const NEW: u64 = 8 << 20;

fn superblock(key: &DataKey, size: u64, sector_size: u32) -> Superblock {
    let uuid = Uuid::new_v4();
    Superblock::new(
        uuid,
        size,
        sector_size,
        "arn:aws:kms:us-east-1:111122223333:key/test".into(),
        vec![1, 2, 3],
        key.key_check(&uuid),
        0,
    )
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read(v: &Volume, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xee; len];
    BlockDevice::read_at(v, offset, &mut buf).unwrap();
    buf
}

#[test]
fn shrinking_unaligned_and_equal_sizes() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 4096);
    let backend = MemBackend::new((DATA_OFFSET + OLD) as usize);
    format_new_volume(&backend, &sb);
    let err = grow_store(&backend, &sb, OLD - 4096).unwrap_err();
    assert!(matches!(err, GrowError::Shrink { .. }), "{err}");
    assert!(err.to_string().contains("refusing to shrink"), "{err}");
    let err = grow_store(&backend, &sb, OLD + 512).unwrap_err();
    assert!(matches!(err, GrowError::NotSectorMultiple { .. }), "{err}");
    assert!(matches!(
        grow_store(&backend, &sb, u64::MAX - 4095).unwrap_err(),
        GrowError::TooLarge
    ));
    let (same, grown) = grow_store(&backend, &sb, OLD).unwrap();
    assert!(grown.unchanged());
    assert_eq!(same.sequence, sb.sequence, "a no-op writes nothing");
    // Nothing was written by any of them.
    assert_eq!(backend.size().unwrap(), DATA_OFFSET + OLD);
    assert_eq!(
        read_superblocks_from(&backend).best().unwrap().sequence,
        sb.sequence
    );
    assert_eq!(NewSize::Plus(4096).resolve(OLD).unwrap(), OLD + 4096);
    assert!(matches!(
        NewSize::Plus(u64::MAX).resolve(OLD),
        Err(GrowError::TooLarge)
    ));
}

#[test]
fn a_grown_store_records_the_new_size_in_both_copies() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 512);
    let backend = MemBackend::new((DATA_OFFSET + OLD) as usize);
    format_new_volume(&backend, &sb);
    let (now, grown) = grow_store(&backend, &sb, NEW).unwrap();
    assert_eq!((grown.old_size, grown.new_size), (OLD, NEW));
    assert!(!grown.beyond_change_tracking);
    assert_eq!(now.size, NEW);
    assert_eq!(backend.size().unwrap(), DATA_OFFSET + NEW);
    let set = read_superblocks_from(&backend);
    assert_eq!(set.primary.as_ref().unwrap().size, NEW);
    assert_eq!(set.secondary.as_ref().unwrap().size, NEW);
    let v = Volume::open(backend, &now, key).unwrap();
    assert_eq!(v.size(), NEW);
}

/// Power goes during every mutating step of a grow in turn; whatever a
/// restart finds (unsynced writes dropped, the last one torn, the cache
/// reordered) opens, at the old size or the new, with the data written
/// before the grow intact and the new sectors reading as zeros.
#[test]
fn a_grow_interrupted_anywhere_still_opens() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 4096);
    let data = pattern(OLD as usize, 9);
    let b = CrashBackend::new((DATA_OFFSET + OLD) as usize, 512);
    format_new_volume(&b, &sb);
    {
        let v = Volume::open(b.clone(), &sb, key.clone()).unwrap();
        BlockDevice::write_at(&v, 0, &data, false).unwrap();
        BlockDevice::flush(&v).unwrap();
    }
    b.flush().unwrap();
    let image = b.power_loss(PowerLoss::DropUnsynced);

    // The steps of a whole grow: count them once.
    let counting = CrashBackend::from_image(image.clone(), 512);
    let before = counting.ops();
    grow_store(&counting, &sb, NEW).unwrap();
    let steps = counting.ops() - before;
    assert!(
        steps >= 5,
        "grow, flush, two copies and their syncs: {steps}"
    );

    let mut seen = [false; 2];
    for crash_at in 0..=steps {
        for how in [
            PowerLoss::DropUnsynced,
            PowerLoss::TearLast { seed: crash_at },
            PowerLoss::Reorder {
                seed: crash_at + 100,
            },
        ] {
            let b = CrashBackend::from_image(image.clone(), 512);
            b.crash_after(crash_at);
            let outcome = grow_store(&b, &sb, NEW);
            assert_eq!(outcome.is_ok(), crash_at == steps, "crash at {crash_at}");
            let after = CrashBackend::from_image(b.power_loss(how), 512);
            let best = read_superblocks_from(&after)
                .best()
                .unwrap_or_else(|e| panic!("crash at {crash_at} ({how:?}): {e}"))
                .clone();
            assert!(best.size == OLD || best.size == NEW, "{}", best.size);
            seen[usize::from(best.size == NEW)] = true;
            let v = Volume::open(after, &best, key.clone())
                .unwrap_or_else(|e| panic!("crash at {crash_at} ({how:?}): {e}"));
            assert_eq!(read(&v, 0, OLD as usize), data, "crash at {crash_at}");
            if best.size == NEW {
                assert!(read(&v, OLD, (NEW - OLD) as usize).iter().all(|&b| b == 0));
            }
        }
    }
    assert_eq!(seen, [true, true], "both outcomes happen");
}

/// A superblock that names a size its store does not have is refused
/// (the order store-then-superblock is what prevents this).
#[test]
fn a_superblock_larger_than_its_store_does_not_open() {
    let key = DataKey::generate();
    let sb = superblock(&key, NEW, 4096);
    let backend = MemBackend::new((DATA_OFFSET + OLD) as usize);
    format_new_volume(&backend, &sb);
    assert!(matches!(
        Volume::open(backend, &sb, key).unwrap_err(),
        VolumeError::BackendTooSmall { .. }
    ));
}

#[test]
fn an_open_volume_grows_and_serves_the_new_sectors() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 4096);
    let backend = MemBackend::new((DATA_OFFSET + OLD) as usize);
    format_new_volume(&backend, &sb);
    let v = Volume::open(backend, &sb, key).unwrap();
    let tail = pattern(8192, 3);
    BlockDevice::write_at(&v, OLD - 8192, &tail, false).unwrap();
    let mut beyond = [0u8; 512];
    assert!(BlockDevice::read_at(&v, OLD, &mut beyond).is_err());

    let grown = BlockDevice::grow(&v, NewSize::Plus(NEW - OLD)).unwrap();
    assert_eq!((grown.old_size, grown.new_size), (OLD, NEW));
    assert_eq!(BlockDevice::size(&v), NEW);
    assert_eq!(v.superblock().size, NEW);
    assert_eq!(read(&v, OLD - 8192, 8192), tail);
    assert!(read(&v, OLD, (NEW - OLD) as usize).iter().all(|&b| b == 0));
    let fresh = pattern(3 * 4096 + 100, 5);
    BlockDevice::write_at(&v, NEW - fresh.len() as u64, &fresh, false).unwrap();
    assert_eq!(read(&v, NEW - fresh.len() as u64, fresh.len()), fresh);

    // The chunks the grow added count as changed, and stay so after a
    // restart (their writes are not in the bitmap until the next open).
    let added: Vec<u64> = (OLD / CHUNK_SIZE..NEW / CHUNK_SIZE).collect();
    let Changes::Exact { chunks, .. } = v.changes() else {
        panic!("exact")
    };
    assert!(chunks.ends_with(&added), "{chunks:?}");
    v.restart_changes("s3://b/snap-1").unwrap();
    let Changes::Exact { chunks, .. } = v.changes() else {
        panic!("exact")
    };
    assert_eq!(chunks, added);

    let err = BlockDevice::grow(&v, NewSize::To(OLD)).unwrap_err();
    assert!(matches!(err, GrowError::Shrink { .. }), "{err}");
    assert!(BlockDevice::grow(&v, NewSize::To(NEW)).unwrap().unchanged());
}

#[test]
fn a_read_only_attachment_does_not_grow() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 4096);
    let backend = MemBackend::new((DATA_OFFSET + OLD) as usize);
    format_new_volume(&backend, &sb);
    let v = Volume::open(backend, &sb, key)
        .unwrap()
        .with_read_only(true);
    assert!(matches!(
        v.grow(NewSize::To(NEW)).unwrap_err(),
        GrowError::ReadOnly
    ));
    assert_eq!(BlockDevice::size(&v), OLD);
}

/// A sparse file grown past what the change map covers (~7 TiB of holes):
/// the grow says so, and the open volume's changes become unknown.
#[test]
fn growing_past_change_tracking_is_reported() {
    let key = DataKey::generate();
    let sb = superblock(&key, OLD, 4096);
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("v"))
        .unwrap();
    file.set_len(DATA_OFFSET + OLD).unwrap();
    let backend = crate::volume::backend::FileBackend::new(file);
    format_new_volume(&backend, &sb);
    let v = Volume::open(backend, &sb, key).unwrap();
    let beyond = (MAX_TRACKED_CHUNKS + 1) * CHUNK_SIZE;
    let grown = v.grow(NewSize::To(beyond)).unwrap();
    assert!(grown.beyond_change_tracking);
    assert_eq!(BlockDevice::size(&v), beyond);
    let Changes::Unknown { reason } = v.changes() else {
        panic!("changes past tracking cannot be exact")
    };
    assert!(
        reason.contains("larger than change tracking covers"),
        "{reason}"
    );
    // The last sector of the new area is a hole that reads as zeros.
    assert!(read(&v, beyond - 4096, 4096).iter().all(|&b| b == 0));
}
