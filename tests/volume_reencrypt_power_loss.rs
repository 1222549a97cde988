//! Simulated power loss during a data-key re-encryption (issue 15): a
//! volume on a [`CrashBackend`] is re-encrypted in small steps while a
//! client writes between them (unaligned, with and without FUA, trims,
//! flushes), and power goes during a random backend operation — inside a
//! step's superblock update, its data writes, its flush, or a client's
//! write. The image a restart finds keeps only synced data, or also a torn
//! last write, or any subset of the unsynced writes (a reordering cache),
//! in atomic units of one sector.
//!
//! After every crash point:
//! * the superblock opens (still in transition, or finished under the new
//!   key), the volume opens with the keys it names, and recovery of an
//!   interrupted step completes;
//! * every byte whose last change was acknowledged durable holds exactly
//!   that value, every other byte a value some unsynced write put there;
//! * the re-encryption then runs to completion on the recovered volume,
//!   the plaintext is unchanged by it, and every stored sector is either
//!   a hole (all zeros, where the plaintext is zeros) or the new key's
//!   ciphertext of the plaintext — checked with the reference XTS cipher,
//!   not the engine that wrote it — and never the old key's.
//!
//! Crash point `i` of sector size `ss` uses seed `i`: deterministic but
//! for a pipelined stretch, whose step writes race the next step's reads
//! (every order is one a real disk could see).
//! `CRASH_POINTS` per sector size: 2 × 550 = 1100 crash points.

mod common;

use common::crash_model::Model;
use rand::{Rng, SeedableRng, rngs::StdRng};
use uuid::Uuid;

use envol::volume::reencryption::{self, NewKey};
use envol::volume::testing::{CrashBackend, PowerLoss};
use envol::volume::{
    BlockDevice, DATA_OFFSET, DataKey, SectorCipher, Superblock, Volume, XtsModeCipher,
    read_superblocks_from, write_superblock_to,
};

const SIZE: usize = 128 * 1024;
const CRASH_POINTS: u64 = 550;
/// Small steps, so that a re-encryption is many steps (and many crash
/// points inside each kind of operation).
const STEP_BYTES: u64 = 16 * 1024;

struct Keys {
    old: DataKey,
    new: DataKey,
}

/// A volume image with data in part of it (the rest holes), and a
/// re-encryption begun: both superblock copies and the data synced.
fn begun_image(ss: u32, keys: &Keys) -> (Vec<u8>, Superblock, Vec<u8>) {
    let uuid = Uuid::new_v4();
    let mut sb = Superblock::new(
        uuid,
        SIZE as u64,
        ss,
        "arn:aws:kms:us-east-1:111122223333:key/original".into(),
        vec![0xab; 120],
        keys.old.key_check(&uuid),
        0,
    )
    .unwrap();
    let b = CrashBackend::new(DATA_OFFSET as usize + SIZE, ss as usize);
    write_superblock_to(&b, &mut sb).unwrap();
    let vol = Volume::open(b.clone(), &sb, keys.old.clone()).unwrap();
    let mut plain = vec![0u8; SIZE];
    let mut rng = StdRng::seed_from_u64(u64::from(ss));
    // Data in 40 KiB stretches every 64 KiB: holes in between.
    for at in (0..SIZE).step_by(64 * 1024) {
        let data: Vec<u8> = (0..40 * 1024).map(|_| rng.r#gen::<u8>() | 1).collect();
        vol.write_at(at as u64 + 300, &data, false).unwrap();
        plain[at + 300..at + 300 + data.len()].copy_from_slice(&data);
    }
    vol.flush().unwrap();
    drop(vol);
    let mut begun = reencryption::begin(
        &sb,
        NewKey {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/new".into(),
            wrapped_key: vec![0xcd; 120],
            key_check: keys.new.key_check(&uuid),
        },
        0,
    );
    write_superblock_to(&b, &mut begun).unwrap();
    assert_eq!(b.unsynced_writes(), 0);
    (b.power_loss(PowerLoss::DropUnsynced), begun, plain)
}

/// A random byte range, biased to small, sub-sector and sector-crossing.
fn range(rng: &mut StdRng, ss: usize) -> (usize, usize) {
    let max = match rng.gen_range(0..4) {
        0 => 16,
        1 => ss + 1,
        2 => 3 * ss + 7,
        _ => 20_000,
    };
    let off = rng.gen_range(0..SIZE);
    let len = rng.gen_range(1..=max).min(SIZE - off);
    (off, len)
}

/// Opens whatever the superblock on `b` describes: in transition (both
/// keys, recovering a hotzone), or finished (the new key alone).
fn open_after(b: CrashBackend, keys: &Keys, what: &str) -> Volume {
    let best = read_superblocks_from(&b)
        .best()
        .unwrap_or_else(|e| panic!("{what}: superblock does not open: {e}"))
        .clone();
    match &best.transition {
        Some(_) => Volume::open_in_transition(b, &best, keys.old.clone(), keys.new.clone()),
        None => Volume::open(b, &best, keys.new.clone()),
    }
    .unwrap_or_else(|e| panic!("{what}: volume does not open: {e}"))
}

/// Returns which kind of operation power went in: 0 a client operation,
/// 1 a step (or the finish), 2 no crash (the run completed first).
fn crash_point(ss: u32, seed: u64, keys: &Keys, image: &[u8], sb: &Superblock, plain: &[u8]) -> u8 {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(ss) << 32));
    let ssz = ss as usize;
    let b = CrashBackend::from_image(image.to_vec(), ssz);
    let vol =
        Volume::open_in_transition(b.clone(), sb, keys.old.clone(), keys.new.clone()).unwrap();
    let mut model = Model::new(SIZE);
    model.durable.copy_from_slice(plain);
    // A whole run is 8 steps of ~7 backend operations and ~12 client
    // operations of 1-3 each: spread the crash over all of it.
    b.crash_after(rng.gen_range(0..90));
    let mut crashed_in = 2u8;
    let mut finished = false;
    while !finished {
        // One step or a pipelined stretch of up to three (the next step
        // read while one is written), then up to three client operations.
        let stretch = STEP_BYTES * rng.gen_range(1..=3);
        let step = vol.reencrypt_steps(stretch, STEP_BYTES).and_then(|p| {
            if p.is_complete() {
                finished = true;
                vol.finish_reencryption().map(|_| ())
            } else {
                Ok(())
            }
        });
        if step.is_err() {
            assert!(
                b.is_dead(),
                "seed {seed}: step failed without a power loss: {step:?}"
            );
            crashed_in = 1;
            break;
        }
        let mut failed = false;
        for _ in 0..rng.gen_range(0..=3) {
            let outcome = match rng.gen_range(0..10) {
                0..=5 => {
                    let (off, len) = range(&mut rng, ssz);
                    let fill: u8 = rng.r#gen();
                    let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8) | 1).collect();
                    let fua = rng.gen_bool(0.4);
                    model.issue(off, data.clone());
                    let r = vol.write_at(off as u64, &data, fua);
                    if r.is_ok() && fua {
                        model.durable_now(off, &data);
                    }
                    r
                }
                6 => {
                    let (off, len) = range(&mut rng, ssz);
                    model.issue(off, vec![0; len]);
                    vol.trim(off as u64, len as u64)
                }
                7 | 8 => {
                    let r = vol.flush();
                    if r.is_ok() {
                        model.flushed();
                    }
                    r
                }
                _ => {
                    let mut buf = vec![0; 5000];
                    let off = rng.gen_range(0..SIZE - buf.len());
                    vol.read_at(off as u64, &mut buf)
                }
            };
            if outcome.is_err() {
                assert!(
                    b.is_dead(),
                    "seed {seed}: client I/O failed without a power loss"
                );
                crashed_in = 0;
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
    }
    drop(vol);

    let how = match seed % 3 {
        0 => PowerLoss::DropUnsynced,
        1 => PowerLoss::TearLast { seed },
        _ => PowerLoss::Reorder { seed },
    };
    let what = format!("ss {ss} seed {seed} {how:?}");
    let image = if b.is_dead() {
        b.power_loss(how)
    } else {
        b.power_loss(PowerLoss::DropUnsynced)
    };
    let after = CrashBackend::from_image(image, ssz);
    let vol = open_after(after.clone(), keys, &what);
    let mut got = vec![0; SIZE];
    vol.read_at(0, &mut got).unwrap();
    model.check(&got, &format!("{what}, after recovery"));

    // The re-encryption completes from wherever it was, and changes no
    // plaintext.
    if vol.reencryption_progress().is_some() {
        while !vol.reencrypt_step(64 * 1024).unwrap().is_complete() {}
        vol.finish_reencryption().unwrap();
    }
    let mut done = vec![0; SIZE];
    vol.read_at(0, &mut done).unwrap();
    assert!(
        done == got,
        "{what}: the re-encryption changed the plaintext"
    );
    drop(vol);
    check_stored_under_new_key(&after, ssz, keys, &got, &what);
    crashed_in
}

/// Every stored sector is a hole where the plaintext is zeros, or the new
/// key's ciphertext of the plaintext (by the reference cipher) — and not
/// the old key's.
fn check_stored_under_new_key(b: &CrashBackend, ss: usize, keys: &Keys, plain: &[u8], what: &str) {
    use envol::volume::Backend;
    let mut stored = vec![0u8; SIZE];
    b.read_at(DATA_OFFSET, &mut stored).unwrap();
    let new = XtsModeCipher::new(&keys.new, ss).unwrap();
    let old = XtsModeCipher::new(&keys.old, ss).unwrap();
    for (n, (s, p)) in stored.chunks(ss).zip(plain.chunks(ss)).enumerate() {
        if s.iter().all(|&x| x == 0) {
            assert!(
                p.iter().all(|&x| x == 0),
                "{what}: sector {n} is a hole but holds data"
            );
            continue;
        }
        let mut with_new = s.to_vec();
        new.decrypt_sectors(n as u64, &mut with_new);
        assert!(
            with_new == p,
            "{what}: sector {n} is not the new key's ciphertext"
        );
        let mut with_old = s.to_vec();
        old.decrypt_sectors(n as u64, &mut with_old);
        assert!(
            with_old != p,
            "{what}: sector {n} still decrypts under the old key"
        );
    }
    let sb = read_superblocks_from(b).best().unwrap().clone();
    assert!(sb.transition.is_none(), "{what}: still in transition");
    assert_eq!(sb.key_check, keys.new.key_check(&sb.uuid));
}

fn run(ss: u32) {
    let keys = Keys {
        old: DataKey::generate(),
        new: DataKey::generate(),
    };
    let (image, sb, plain) = begun_image(ss, &keys);
    let t = std::time::Instant::now();
    let mut counts = [0u32; 3];
    for seed in 0..CRASH_POINTS {
        counts[crash_point(ss, seed, &keys, &image, &sb, &plain) as usize] += 1;
    }
    eprintln!(
        "{CRASH_POINTS} crash points, {ss}-byte sectors: {} in client I/O, {} in a re-encryption step, {} after completion; all consistent ({:?})",
        counts[0],
        counts[1],
        counts[2],
        t.elapsed()
    );
    assert!(
        counts[1] >= CRASH_POINTS as u32 / 3,
        "too few crashes inside steps: {counts:?}"
    );
    assert!(
        counts[0] >= 20,
        "too few crashes inside client I/O: {counts:?}"
    );
}

#[test]
fn power_loss_during_reencryption_512_byte_sectors() {
    run(512);
}

#[test]
fn power_loss_during_reencryption_4096_byte_sectors() {
    run(4096);
}
