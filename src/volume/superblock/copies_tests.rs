//! The two copies: picking the newest valid one, the crash-safe update
//! (alternation, torn writes), creating a volume file, random damage.

use super::*;
use crate::volume::backend::MemBackend;
use crate::volume::superblock::format::DATA_OFFSET;
use crate::volume::superblock::test_sample::sample;
use rand::{Rng, RngCore, SeedableRng};

fn mem_volume(sb: &Superblock) -> MemBackend {
    let b = MemBackend::new(2 << 20);
    let bytes = padded(sb).unwrap();
    b.write_at(PRIMARY_OFFSET, &bytes).unwrap();
    b.write_at(SECONDARY_OFFSET, &bytes).unwrap();
    b
}

#[test]
fn corrupted_primary_opens_from_secondary() {
    let b = mem_volume(&sample());
    b.write_at(100, &[0xee; 8]).unwrap();
    let set = read_superblocks_from(&b);
    assert!(matches!(set.primary, Err(SuperblockError::BadChecksum)));
    let (slot, best) = set.best_slot().unwrap();
    assert_eq!(slot, Slot::Secondary);
    assert_eq!(*best, sample());
}

#[test]
fn both_corrupted_is_a_clear_error() {
    let b = mem_volume(&sample());
    b.write_at(100, &[0xee; 8]).unwrap();
    b.write_at(SECONDARY_OFFSET, b"NOTENVOL").unwrap();
    let err = read_superblocks_from(&b).best().unwrap_err();
    assert_eq!(
        err.to_string(),
        "both superblock copies are invalid: primary: bad checksum; secondary: bad magic (not an envol volume)"
    );
    // An empty (all-zero) device says so too.
    let empty = MemBackend::new(1 << 20);
    let msg = read_superblocks_from(&empty)
        .best()
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("both superblock copies are invalid: primary: bad magic"));
    // A file too short for either copy: truncated, not a panic.
    let tiny = MemBackend::new(10);
    tiny.write_at(0, &sample().encode().unwrap()[..10]).unwrap();
    let msg = read_superblocks_from(&tiny).best().unwrap_err().to_string();
    assert_eq!(
        msg,
        "both superblock copies are invalid: primary: truncated; secondary: truncated"
    );
}

#[test]
fn higher_sequence_wins() {
    let b = mem_volume(&sample());
    let mut newer = sample();
    newer.sequence = 9;
    newer.key_arn = "arn:aws:kms:us-east-1:111122223333:key/other".into();
    b.write_at(SECONDARY_OFFSET, &padded(&newer).unwrap())
        .unwrap();
    assert_eq!(*read_superblocks_from(&b).best().unwrap(), newer);
}

#[test]
fn update_alternates_copies_and_keeps_both_equal() {
    let b = mem_volume(&sample());
    let mut sb = sample();
    let mut firsts = Vec::new();
    for round in 0..4u64 {
        let before = read_superblocks_from(&b);
        let expected_first = before.first_to_write(sb.sequence + 1);
        firsts.push(expected_first);
        sb.key_arn = format!("arn:aws:kms:us-east-1:111122223333:key/round-{round}");
        write_superblock_to(&b, &mut sb).unwrap();
        assert_eq!(sb.sequence, 2 + round);
        let set = read_superblocks_from(&b);
        assert_eq!(set.primary.as_ref().unwrap(), &sb);
        assert_eq!(set.secondary.as_ref().unwrap(), &sb);
    }
    assert_eq!(
        firsts,
        vec![
            Slot::Primary,
            Slot::Secondary,
            Slot::Primary,
            Slot::Secondary
        ]
    );
}

#[test]
fn torn_second_write_leaves_first_copy_with_new_sequence() {
    let b = mem_volume(&sample());
    let mut sb = sample();
    sb.key_arn = "arn:aws:kms:us-east-1:111122223333:key/new".into();
    write_superblock_steps(&b, &mut sb, true).unwrap();
    assert_eq!(sb.sequence, 2);
    // The crash tore the second copy: its first 100 bytes are new, the
    // rest old. (Sequence 2 is even, so the primary went first.)
    let new_bytes = sb.encode().unwrap();
    b.write_at(SECONDARY_OFFSET, &new_bytes[..100]).unwrap();
    let set = read_superblocks_from(&b);
    assert!(set.secondary.is_err());
    let (slot, best) = set.best_slot().unwrap();
    assert_eq!(slot, Slot::Primary);
    assert_eq!(best, &sb);
    // The next update repairs the torn copy first and moves on.
    let mut again = best.clone();
    write_superblock_to(&b, &mut again).unwrap();
    assert_eq!(again.sequence, 3);
    let set = read_superblocks_from(&b);
    assert_eq!(set.primary.unwrap().sequence, 3);
    assert_eq!(set.secondary.unwrap().sequence, 3);
}

#[test]
fn torn_first_write_leaves_old_copy() {
    let b = mem_volume(&sample());
    let mut sb = sample();
    sb.key_arn = "arn:aws:kms:us-east-1:111122223333:key/new".into();
    // Crash during the first write: the primary (first for sequence 2)
    // is half new, half old.
    let mut next = sb.clone();
    next.sequence = 2;
    b.write_at(PRIMARY_OFFSET, &next.encode().unwrap()[..150])
        .unwrap();
    let set = read_superblocks_from(&b);
    let (slot, best) = set.best_slot().unwrap();
    assert_eq!(slot, Slot::Secondary);
    assert_eq!(*best, sample());
}

#[test]
fn create_volume_file_layout_and_refusal() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.envol");
    let sb = sample();
    let file = create_volume_file(&path, &sb, false).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), DATA_OFFSET + sb.size);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Sparse: only the two superblock copies are allocated.
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    let set = read_superblocks(&file);
    assert_eq!(set.primary.as_ref().unwrap(), &sb);
    assert_eq!(set.secondary.as_ref().unwrap(), &sb);
    drop(file);

    let err = create_volume_file(&path, &sb, false).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut smaller = sample();
    smaller.size = 4096;
    let file = create_volume_file(&path, &smaller, true).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), DATA_OFFSET + 4096);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut updated = read_superblocks(&file).best().unwrap().clone();
    assert_eq!(updated, smaller);
    write_superblock(&file, &mut updated).unwrap();
    assert_eq!(read_superblocks(&file).best().unwrap().sequence, 2);
}

#[test]
fn random_damage_to_both_copies_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..200 {
        let b = mem_volume(&sample());
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..(2 * COPY_SIZE as u64 - 8));
            let mut junk = [0u8; 8];
            rng.fill_bytes(&mut junk);
            b.write_at(at, &junk).unwrap();
        }
        let set = read_superblocks_from(&b);
        match set.best() {
            Ok(sb) => assert_eq!(*sb, sample()),
            Err(e) => assert!(e.to_string().starts_with("both superblock copies")),
        }
    }
}

#[test]
fn damaged_names_the_one_invalid_copy() {
    let b = mem_volume(&sample());
    assert!(read_superblocks_from(&b).damaged().is_none());
    b.write_at(SECONDARY_OFFSET + 100, &[0xee; 8]).unwrap();
    let set = read_superblocks_from(&b);
    let (slot, why) = set.damaged().unwrap();
    assert_eq!(slot, Slot::Secondary);
    assert_eq!(why.to_string(), "bad checksum");
    assert_eq!(slot.to_string(), "secondary copy (offset 64 KiB)");
    assert_eq!(Slot::Primary.to_string(), "primary copy (offset 0)");
    // Both bad: nothing to repair from.
    b.write_at(100, &[0xee; 8]).unwrap();
    assert!(read_superblocks_from(&b).damaged().is_none());
}

#[test]
fn repair_rewrites_each_invalid_copy_from_the_valid_one() {
    for (bad, good) in [
        (PRIMARY_OFFSET, SECONDARY_OFFSET),
        (SECONDARY_OFFSET, PRIMARY_OFFSET),
    ] {
        let b = mem_volume(&sample());
        b.write_at(bad, b"NOTENVOL").unwrap();
        let good_before = {
            let mut v = vec![0u8; COPY_SIZE];
            b.read_at(good, &mut v).unwrap();
            v
        };
        let set = read_superblocks_from(&b);
        let repaired = repair_superblock_to(&b, &set).unwrap().unwrap();
        let mut expected = sample();
        expected.sequence = sample().sequence + 1;
        assert_eq!(repaired, expected);
        let after = read_superblocks_from(&b);
        assert_eq!(after.primary.as_ref().unwrap(), &expected, "bad at {bad}");
        assert_eq!(after.secondary.as_ref().unwrap(), &expected, "bad at {bad}");
        assert_ne!(good_before, padded(&expected).unwrap());
        // Nothing left to repair: no write at all.
        assert!(repair_superblock_to(&b, &after).unwrap().is_none());
        assert_eq!(read_superblocks_from(&b).best().unwrap().sequence, 2);
    }
}

/// A repair cut off by power loss at every mutating operation it makes
/// (two writes, two flushes), with every way the crash backend can lose
/// what was unsynced: the superblock always opens with the volume's fields,
/// and the next repair leaves both copies valid.
#[test]
fn repair_interrupted_by_power_loss_still_opens() {
    use crate::volume::testing::{CrashBackend, PowerLoss};
    let mut cases = 0;
    for bad in [PRIMARY_OFFSET, SECONDARY_OFFSET] {
        for crash_at in 0..4u64 {
            for how in [
                PowerLoss::DropUnsynced,
                PowerLoss::TearLast { seed: crash_at },
                PowerLoss::TearLast {
                    seed: 100 + crash_at,
                },
                PowerLoss::Reorder { seed: 7 + crash_at },
                PowerLoss::Reorder {
                    seed: 70 + crash_at,
                },
            ] {
                let b = CrashBackend::new(2 << 20, 512);
                let bytes = padded(&sample()).unwrap();
                b.write_at(PRIMARY_OFFSET, &bytes).unwrap();
                b.write_at(SECONDARY_OFFSET, &bytes).unwrap();
                // One copy torn by an earlier crash (half of it garbage).
                b.write_at(bad + 256, &vec![0x5a; 1024]).unwrap();
                b.flush().unwrap();
                let set = read_superblocks_from(&b);
                assert!(set.damaged().is_some());
                b.crash_after(crash_at);
                let result = repair_superblock_to(&b, &set);
                assert!(result.is_err(), "power went at op {crash_at}: must fail");
                let image = b.power_loss(how);
                let restarted = CrashBackend::from_image(image, 512);
                let set = read_superblocks_from(&restarted);
                let best = set
                    .best()
                    .unwrap_or_else(|e| panic!("bad {bad}, crash {crash_at}, {how:?}: {e}"));
                let mut fields = best.clone();
                fields.sequence = sample().sequence;
                assert_eq!(fields, sample(), "bad {bad}, crash {crash_at}, {how:?}");
                assert!(best.sequence <= sample().sequence + 1);
                // Attaching again finishes the job.
                repair_superblock_to(&restarted, &set).unwrap();
                let set = read_superblocks_from(&restarted);
                assert!(set.primary.is_ok() && set.secondary.is_ok());
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 40);
}

#[test]
fn create_with_force_refuses_an_attached_volume_and_keeps_it() {
    use crate::volume::attachment::{AttachMode, lock_attachment};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.envol");
    drop(create_volume_file(&path, &sample(), false).unwrap());
    let before = std::fs::read(&path).unwrap();
    for mode in [AttachMode::ReadOnly, AttachMode::ReadWrite] {
        let attached = std::fs::File::open(&path).unwrap();
        lock_attachment(&attached, mode).unwrap();
        let mut other = sample();
        other.size = 4096;
        let err = create_volume_file(&path, &other, true).unwrap_err();
        assert!(err.to_string().starts_with("already attached"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{mode:?}");
    }
    // Detached: overwriting is allowed again.
    let mut other = sample();
    other.size = 4096;
    drop(create_volume_file(&path, &other, true).unwrap());
    assert_eq!(
        read_superblocks(&std::fs::File::open(&path).unwrap())
            .best()
            .unwrap()
            .size,
        4096
    );
}
