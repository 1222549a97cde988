//! Simulated power loss (issue 7 §3): a volume on a [`CrashBackend`] runs a
//! random workload — unaligned writes with and without FUA, TRIM,
//! WRITE_ZEROES, FLUSH, and superblock updates as `volume rewrap` does them
//! — and power goes during a random backend operation. The image a restart
//! finds keeps only synced data, or also a torn last write, or any subset of
//! the unsynced writes (a reordering cache), in atomic units of one sector.
//!
//! After every crash point:
//! * the superblock opens, and it is the last acknowledged update or the one
//!   in flight (never an older one, never garbage);
//! * every byte whose last change was acknowledged with FUA or followed by
//!   an acknowledged FLUSH holds exactly that value;
//! * every other byte holds its last durable value or a value some
//!   unsynced operation wrote there (no garbage from torn sectors).
//!
//! Deterministic: crash point `i` of sector size `ss` uses seed `i`. Figures:
//! `CRASH_POINTS` per sector size (2 × 600 = 1200 crash points), a few
//! seconds in a debug build.

mod common;

use common::crash_model::Model;
use rand::{Rng, SeedableRng, rngs::StdRng};
use uuid::Uuid;

use envol::volume::testing::{CrashBackend, PowerLoss};
use envol::volume::{
    BlockDevice, DATA_OFFSET, DataKey, Superblock, Volume, read_superblocks_from,
    write_superblock_to,
};

const SIZE: usize = 256 * 1024;
const CRASH_POINTS: u64 = 600;
const OPS_PER_RUN: usize = 40;

/// A fresh volume image: both superblock copies written and synced.
fn new_image(ss: u32, key: &DataKey) -> (Vec<u8>, Superblock) {
    let uuid = Uuid::new_v4();
    let mut sb = Superblock::new(
        uuid,
        SIZE as u64,
        ss,
        "arn:aws:kms:us-east-1:111122223333:key/original".into(),
        vec![0xab; 120],
        key.key_check(&uuid),
        0,
    )
    .unwrap();
    let b = CrashBackend::new(DATA_OFFSET as usize + SIZE, ss as usize);
    write_superblock_to(&b, &mut sb).unwrap();
    assert_eq!(b.unsynced_writes(), 0);
    (b.power_loss(PowerLoss::DropUnsynced), sb)
}

/// A random byte range, biased to small, sub-sector and sector-crossing.
fn range(rng: &mut StdRng, ss: usize) -> (usize, usize) {
    let max = match rng.gen_range(0..4) {
        0 => 16,
        1 => ss + 1,
        2 => 3 * ss + 7,
        _ => 40_000,
    };
    let off = if rng.gen_bool(0.3) {
        rng.gen_range(0..SIZE / ss) * ss
    } else {
        rng.gen_range(0..SIZE)
    };
    let len = rng.gen_range(1..=max).min(SIZE - off);
    (off, len)
}

/// Returns whether power went during a superblock update.
fn crash_point(ss: u32, seed: u64, key: &DataKey, image: &[u8], sb0: &Superblock) -> bool {
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(ss) << 32);
    let b = CrashBackend::from_image(image.to_vec(), ss as usize);
    let vol = Volume::open(b.clone(), sb0, key.clone()).unwrap();
    let mut model = Model::new(SIZE);
    let mut sb_acked = sb0.clone();
    let mut sb_in_flight: Option<Superblock> = None;
    // Each operation makes one to four mutating backend calls.
    b.crash_after(rng.gen_range(0..(OPS_PER_RUN as u64 * 2)));
    let ssz = ss as usize;

    for n in 0..OPS_PER_RUN {
        let outcome = match rng.gen_range(0..10) {
            0..=3 => {
                let (off, len) = range(&mut rng, ssz);
                let fill: u8 = rng.r#gen();
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8) | 1).collect();
                let fua = rng.gen_bool(0.3);
                model.issue(off, data.clone());
                let r = vol.write_at(off as u64, &data, fua);
                if r.is_ok() && fua {
                    model.durable_now(off, &data);
                }
                r
            }
            4 | 5 => {
                let (off, len) = range(&mut rng, ssz);
                let fua = rng.gen_bool(0.3);
                model.issue(off, vec![0; len]);
                let r = if rng.gen_bool(0.5) {
                    vol.trim(off as u64, len as u64)
                } else {
                    vol.write_zeroes(off as u64, len as u64, rng.gen_bool(0.5))
                }
                // NBD's FUA on TRIM/WRITE_ZEROES: a flush after the operation.
                .and_then(|()| if fua { vol.flush() } else { Ok(()) });
                if r.is_ok() && fua {
                    model.durable_now(off, &vec![0; len]);
                }
                r
            }
            6 | 7 => {
                let r = vol.flush();
                if r.is_ok() {
                    model.flushed();
                }
                r
            }
            8 => {
                let mut buf = vec![0; 5000.min(SIZE)];
                let off = rng.gen_range(0..SIZE - buf.len());
                vol.read_at(off as u64, &mut buf)
            }
            _ => {
                // What `volume rewrap` changes, written as it writes it.
                let mut next = sb_acked.clone();
                next.key_arn = format!("arn:aws:kms:us-east-1:111122223333:key/k{n}");
                next.wrapped_key = (0..rng.gen_range(60..400)).map(|_| rng.r#gen()).collect();
                sb_in_flight = Some(next.clone());
                let r = write_superblock_to(&b, &mut next);
                match r {
                    Ok(()) => {
                        sb_acked = next;
                        sb_in_flight = None;
                        Ok(())
                    }
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            }
        };
        if outcome.is_err() {
            assert!(b.is_dead(), "seed {seed}: failed without a power loss");
            break;
        }
    }

    let how = match seed % 3 {
        0 => PowerLoss::DropUnsynced,
        1 => PowerLoss::TearLast { seed },
        _ => PowerLoss::Reorder { seed },
    };
    let what = format!("ss {ss} seed {seed} {how:?}");
    let after = CrashBackend::from_image(b.power_loss(how), ssz);

    let set = read_superblocks_from(&after);
    let best = set
        .best()
        .unwrap_or_else(|e| panic!("{what}: superblock does not open: {e}"))
        .clone();
    let is_acked = best == sb_acked;
    let is_in_flight = sb_in_flight.as_ref().is_some_and(|f| {
        best.sequence == sb_acked.sequence + 1
            && best.key_arn == f.key_arn
            && best.wrapped_key == f.wrapped_key
    });
    assert!(
        is_acked || is_in_flight,
        "{what}: superblock seq {} is neither the acknowledged one (seq {}) nor the update in flight",
        best.sequence,
        sb_acked.sequence
    );

    let vol = Volume::open(after, &best, key.clone())
        .unwrap_or_else(|e| panic!("{what}: volume does not open: {e}"));
    let mut got = vec![0; SIZE];
    vol.read_at(0, &mut got).unwrap();
    model.check(&got, &what);
    sb_in_flight.is_some()
}

fn run(ss: u32) {
    let key = DataKey::generate();
    let (image, sb) = new_image(ss, &key);
    let t = std::time::Instant::now();
    let mut in_superblock_update = 0;
    for seed in 0..CRASH_POINTS {
        in_superblock_update += u32::from(crash_point(ss, seed, &key, &image, &sb));
    }
    eprintln!(
        "{CRASH_POINTS} crash points, {ss}-byte sectors, {in_superblock_update} during a superblock update: all consistent ({:?})",
        t.elapsed()
    );
    assert!(
        in_superblock_update >= 20,
        "too few crashes inside superblock updates: {in_superblock_update}"
    );
}

#[test]
fn power_loss_512_byte_sectors() {
    run(512);
}

#[test]
fn power_loss_4096_byte_sectors() {
    run(4096);
}
