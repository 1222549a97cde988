use super::*;
use crate::volume::superblock::{DATA_OFFSET, read_superblocks_from};
use crate::volume::testing::CrashBackend;
use uuid::Uuid;

const SIZE: u64 = 4 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

fn read(v: &Volume, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xeeu8; len];
    v.read_at(offset, &mut buf).unwrap();
    buf
}

/// An empty volume of `SIZE` on a shared in-memory store, its superblock
/// written under a fresh (old) key; returns the store, the superblock and
/// that key.
fn blank_volume(ss: u32) -> (CrashBackend, Superblock, DataKey) {
    let old = DataKey::generate();
    let uuid = Uuid::new_v4();
    let mut sb = Superblock::new(
        uuid,
        SIZE,
        ss,
        "arn:aws:kms:us-east-1:111122223333:key/old".into(),
        vec![1, 2, 3],
        old.key_check(&uuid),
        0,
    )
    .unwrap();
    let store = CrashBackend::new((DATA_OFFSET + SIZE) as usize, ss as usize);
    write_superblock_to(&store, &mut sb).unwrap();
    (store, sb, old)
}

/// A volume on a shared in-memory store, its superblock written, with
/// some data; returns the store, the superblock, old and new keys.
fn volume_with_data(ss: u32) -> (CrashBackend, Superblock, DataKey, DataKey) {
    let (store, sb, old) = blank_volume(ss);
    let uuid = sb.uuid;
    let v = Volume::open(store.clone(), &sb, old.clone()).unwrap();
    // Data in the first and last MiB; the middle stays a hole.
    v.write_at(0, &pattern(1 << 20, 1), false).unwrap();
    v.write_at(SIZE - (1 << 20) + 100, &pattern((1 << 20) - 100, 2), false)
        .unwrap();
    drop(v);
    let new = DataKey::generate();
    let begun = begin(
        &sb,
        NewKey {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/new".into(),
            wrapped_key: vec![4, 5, 6],
            key_check: new.key_check(&uuid),
        },
        0,
    );
    let mut begun = begun;
    write_superblock_to(&store, &mut begun).unwrap();
    (store, begun, old, new)
}

#[test]
fn a_volume_in_transition_serves_both_halves_and_completes_under_the_new_key() {
    for ss in [512u32, 4096] {
        let (store, sb, old, new) = volume_with_data(ss);
        let mut model = vec![0u8; SIZE as usize];
        model[..1 << 20].copy_from_slice(&pattern(1 << 20, 1));
        model[(SIZE - (1 << 20) + 100) as usize..].copy_from_slice(&pattern((1 << 20) - 100, 2));
        assert!(matches!(
            Volume::open(store.clone(), &sb, old.clone()),
            Err(VolumeError::InTransition)
        ));
        assert!(matches!(
            Volume::open_in_transition(store.clone(), &sb, new.clone(), new.clone()),
            Err(VolumeError::WrongKey)
        ));
        assert!(matches!(
            Volume::open_in_transition(store.clone(), &sb, old.clone(), old.clone()),
            Err(VolumeError::WrongNewKey)
        ));
        let v = Volume::open_in_transition(store.clone(), &sb, old.clone(), new.clone()).unwrap();
        let mut step = 0u64;
        loop {
            let p = v.reencrypt_step(300 * 1024).unwrap();
            // A client write straddling the watermark, every step.
            let at = (p.done_bytes() + 777 * step) % (SIZE - 5000);
            let data = pattern(5000, step as u8);
            v.write_at(at, &data, false).unwrap();
            model[at as usize..at as usize + 5000].copy_from_slice(&data);
            assert_eq!(read(&v, 0, SIZE as usize), model, "ss {ss} step {step}");
            step += 1;
            if p.is_complete() {
                break;
            }
        }
        assert!(v.read_stored(0, &mut vec![0; ss as usize]).is_ok());
        let done = v.finish_reencryption().unwrap();
        assert!(done.transition.is_none());
        assert_eq!(done.key_check, new.key_check(&done.uuid));
        assert_eq!(done.key_arn, "arn:aws:kms:us-east-1:111122223333:key/new");
        assert_eq!(read(&v, 0, SIZE as usize), model);
        drop(v);
        // On disk: version 1, the new key alone; opens with it, not the old.
        let on_disk = read_superblocks_from(&store).best().unwrap().clone();
        assert_eq!(on_disk.transition, None);
        assert!(matches!(
            Volume::open(store.clone(), &on_disk, old.clone()),
            Err(VolumeError::WrongKey)
        ));
        let v = Volume::open(store.clone(), &on_disk, new.clone()).unwrap();
        assert_eq!(read(&v, 0, SIZE as usize), model);
        // Never-written sectors are still zeros as stored (not encrypted zeros).
        let mut stored = vec![0xffu8; SIZE as usize];
        v.read_stored(0, &mut stored).unwrap();
        let mut holes = 0;
        for (plain, stored) in model.chunks(ss as usize).zip(stored.chunks(ss as usize)) {
            if plain.iter().all(|&b| b == 0) {
                holes += 1;
                assert!(
                    stored.iter().all(|&b| b == 0),
                    "ss {ss}: a hole was encrypted"
                );
            }
        }
        assert!(
            holes * u64::from(ss) > SIZE / 4,
            "ss {ss}: the test kept its holes"
        );
    }
}

#[test]
fn stored_reads_and_writes_are_refused_mid_transition() {
    let (store, sb, old, new) = volume_with_data(4096);
    let v = Volume::open_in_transition(store, &sb, old, new).unwrap();
    v.reencrypt_step(1 << 20).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = v.read_stored(0, &mut buf).unwrap_err();
    assert!(
        e.to_string().contains("re-encryption is in progress"),
        "{e}"
    );
    assert!(v.write_stored(0, &buf).is_err());
    assert!(v.finish_reencryption().is_err(), "not complete yet");
}

/// The truncated SHA-256 digest earlier versions recorded in a hotzone.
fn sha256_digest(stored_sector: &[u8]) -> [u8; HOTZONE_DIGEST_LEN] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(stored_sector);
    let mut d = [0u8; HOTZONE_DIGEST_LEN];
    d.copy_from_slice(&full[..HOTZONE_DIGEST_LEN]);
    d
}

#[test]
fn an_interrupted_step_is_recovered_at_open_whichever_sectors_landed() {
    // Digests as this version records them, and as a hotzone left behind
    // by an earlier version (truncated SHA-256) holds them.
    type Digest = fn(&[u8]) -> [u8; HOTZONE_DIGEST_LEN];
    let digests: [Digest; 2] = [hotzone_digest, sha256_digest];
    for (ss, digest) in [512u32, 4096]
        .into_iter()
        .flat_map(|ss| digests.map(|d| (ss, d)))
    {
        let (store, sb, old, new) = volume_with_data(ss);
        let model = {
            let v =
                Volume::open_in_transition(store.clone(), &sb, old.clone(), new.clone()).unwrap();
            read(&v, 0, SIZE as usize)
        };
        // Record a hotzone over sectors [0, 64) as a step would, then let
        // only every other sector's new ciphertext land.
        let n = 64usize;
        let ssz = ss as usize;
        let mut stored = vec![0u8; n * ssz];
        store.read_at(DATA_OFFSET, &mut stored).unwrap();
        let mut next = sb.clone();
        let t = next.transition.as_mut().unwrap();
        t.hotzone = stored.chunks(ssz).map(digest).collect();
        write_superblock_to(&store, &mut next).unwrap();
        let old_e = XtsEngine::new(&old, ssz).unwrap();
        let new_e = XtsEngine::new(&new, ssz).unwrap();
        for i in (0..n).step_by(2) {
            let s = &mut stored[i * ssz..(i + 1) * ssz];
            old_e.decrypt_sectors(i as u64, s);
            new_e.encrypt_sectors(i as u64, s);
            store.write_at(DATA_OFFSET + (i * ssz) as u64, s).unwrap();
        }
        let v = Volume::open_in_transition(store.clone(), &next, old.clone(), new.clone()).unwrap();
        assert_eq!(v.reencryption_progress().unwrap().done_sectors, n as u64);
        assert_eq!(read(&v, 0, SIZE as usize), model, "ss {ss}");
        drop(v);
        let after = read_superblocks_from(&store).best().unwrap().clone();
        let t = after.transition.unwrap();
        assert_eq!((t.watermark, t.hotzone.len()), (n as u64, 0));
    }
}

#[test]
fn marked_runs_are_the_maximal_runs_in_order() {
    let runs = |which: &[bool]| marked_runs(which).collect::<Vec<std::ops::Range<usize>>>();
    assert!(runs(&[]).is_empty());
    assert!(runs(&[false, false]).is_empty());
    assert_eq!(runs(&[true, true, true]), vec![0..3]);
    assert_eq!(
        runs(&[true, false, false, true, true, false, true]),
        vec![0..1, 3..5, 6..7]
    );
}

/// Online: a re-encryption begun on an open volume (`begin_reencryption`)
/// while readers and a writer run on other threads: every read sees what
/// was written, before, during and after the cipher swap; once finished,
/// the store opens with the new key alone and holds every last write.
#[test]
fn a_reencryption_begun_on_an_open_volume_keeps_concurrent_readers_and_writers_right() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const SLICE: usize = 64 * 1024;
    for ss in [512u32, 4096] {
        let (store, sb, old) = blank_volume(ss);
        let uuid = sb.uuid;
        let v = Volume::open(store.clone(), &sb, old.clone()).unwrap();
        let half = (SIZE / 2) as usize;
        let fixed = pattern(half, 1);
        v.write_at(0, &fixed, false).unwrap();
        let new = DataKey::generate();
        let stop = AtomicBool::new(false);
        let written = std::thread::scope(|s| {
            for t in 0..2usize {
                let (v, fixed, stop) = (&v, &fixed, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        // Unaligned, straddling sectors, both halves of the
                        // watermark as it moves.
                        for off in (t * 1000..half - SLICE).step_by(3 * SLICE + 4321) {
                            assert_eq!(read(v, off as u64, SLICE), fixed[off..off + SLICE]);
                        }
                    }
                });
            }
            let writer = {
                let (v, stop) = (&v, &stop);
                s.spawn(move || {
                    let mut model = vec![0u8; half];
                    let mut i = 0usize;
                    while !stop.load(Ordering::Acquire) || i < 64 {
                        let at = (i * 37 % (half / SLICE - 1)) * SLICE + 512 * (i % 3);
                        let data = pattern(SLICE, i as u8);
                        v.write_at((half + at) as u64, &data, false).unwrap();
                        model[at..at + SLICE].copy_from_slice(&data);
                        assert_eq!(read(v, (half + at) as u64, SLICE), data);
                        i += 1;
                    }
                    model
                })
            };
            let begun = v
                .begin_reencryption(
                    old.clone(),
                    new.clone(),
                    NewKey {
                        key_arn: "arn:aws:kms:us-east-1:111122223333:key/new".into(),
                        wrapped_key: vec![4, 5, 6],
                        key_check: new.key_check(&uuid),
                    },
                    0,
                )
                .unwrap();
            assert_eq!(begun.done_sectors, 0);
            assert!(matches!(
                v.begin_reencryption(
                    old.clone(),
                    new.clone(),
                    NewKey {
                        key_arn: "x".into(),
                        wrapped_key: vec![7],
                        key_check: new.key_check(&uuid),
                    },
                    0
                ),
                Err(VolumeError::InTransition)
            ));
            while !v.reencrypt_step(192 * 1024).unwrap().is_complete() {}
            let done = v.finish_reencryption().unwrap();
            assert!(done.transition.is_none());
            assert_eq!(done.key_check, new.key_check(&uuid));
            assert!(
                v.reencryption_progress().is_none(),
                "no watermark locks after"
            );
            stop.store(true, Ordering::Release);
            writer.join().unwrap()
        });
        let on_disk = v.superblock();
        drop(v);
        let v = Volume::open(store.clone(), &on_disk, new.clone()).unwrap();
        assert_eq!(read(&v, 0, half), fixed);
        let tail = read(&v, half as u64, half);
        for (i, (got, want)) in tail.chunks(SLICE).zip(written.chunks(SLICE)).enumerate() {
            assert!(
                got == want,
                "slice {i} of the written half, {ss}-byte sectors"
            );
        }
    }
}

/// Online, the volume stays open after a failed step: the next step
/// first recovers the failed one's hotzone by digest (a sector it did
/// rewrite is not transformed twice), as an open would.
#[test]
fn a_step_that_failed_part_way_is_recovered_by_the_next_on_the_open_volume() {
    use crate::volume::testing::{Fault, FaultOp, FaultyBackend};
    const K: u64 = 1 << 10;
    let ss = 4096u32;
    let (store, sb, old) = blank_volume(ss);
    let uuid = sb.uuid;
    let faulty = FaultyBackend::new(store.clone());
    let faults = faulty.faults();
    let v = Volume::open(faulty, &sb, old.clone()).unwrap();
    // Two runs of data in the second MiB, a hole between them: the step
    // over it writes them in two calls.
    let a = pattern(256 * K as usize, 7);
    let b = pattern(512 * K as usize, 9);
    v.write_at(1024 * K, &a, false).unwrap();
    v.write_at(1536 * K, &b, false).unwrap();
    let new = DataKey::generate();
    v.begin_reencryption(
        old.clone(),
        new.clone(),
        NewKey {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/new".into(),
            wrapped_key: vec![4, 5, 6],
            key_check: new.key_check(&uuid),
        },
        0,
    )
    .unwrap();
    assert_eq!(v.reencrypt_step(1 << 20).unwrap().done_bytes(), 1 << 20);
    // The second run's write fails: the first run is already rewritten.
    faults.add(Fault {
        op: FaultOp::Write,
        range: DATA_OFFSET + 1536 * K..DATA_OFFSET + 2048 * K,
        errno: 5,
    });
    assert!(v.reencrypt_step(1 << 20).is_err());
    // Until it is recovered, the step's sectors are refused: the first
    // run holds new ciphertext below a watermark that says old, so a read
    // would decrypt it with the wrong key, and a write under the old key
    // would later be taken for new ciphertext.
    let mut buf = vec![0u8; 4096];
    assert!(
        v.read_at(1024 * K, &mut buf).is_err(),
        "read of a failed step"
    );
    assert!(v.write_at(1024 * K, &buf, false).is_err(), "write to it");
    assert!(v.write_at(1100 * K + 7, &buf[..100], false).is_err());
    assert_eq!(read(&v, 0, 4096), vec![0u8; 4096], "a sector before it");
    faults.clear();
    while !v.reencrypt_step(1 << 20).unwrap().is_complete() {}
    let done = v.finish_reencryption().unwrap();
    assert_eq!(read(&v, 1024 * K, a.len()), a);
    assert_eq!(read(&v, 1536 * K, b.len()), b);
    drop(v);
    let v = Volume::open(store, &done, new).unwrap();
    assert_eq!(read(&v, 1024 * K, a.len()), a);
    assert_eq!(read(&v, 1536 * K, b.len()), b);
    assert_eq!(
        read(&v, 1280 * K, 256 * K as usize),
        vec![0u8; 256 * K as usize]
    );
}
