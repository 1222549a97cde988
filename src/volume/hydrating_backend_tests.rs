//! A hydrating volume against a real origin: another volume's stored
//! chunks play the snapshot (the fetcher reads them as stored, as S3 hands
//! them back), the target store is a `CrashBackend` so power can go at any
//! write of a fetch.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use uuid::Uuid;

use crate::volume::Volume;
use crate::volume::backend::{Backend, MemBackend};
use crate::volume::change_map::CHUNK_SIZE;
use crate::volume::device::BlockDevice;
use crate::volume::hydrating_backend::{ChunkFetcher, HydratingBackend, Hydration};
use crate::volume::hydration_record::{HydrationRecord, HydrationSource, record_offset};
use crate::volume::key::DataKey;
use crate::volume::superblock::{DATA_OFFSET, Superblock};
use crate::volume::testing::{CrashBackend, PowerLoss, format_new_volume};

/// Six chunks, the last one partial.
const SIZE: u64 = 5 * CHUNK_SIZE + 8192;
const CHUNKS: u64 = 6;
/// Chunk 2 of the origin is never written: the snapshot has no data there.
const EMPTY_CHUNK: u64 = 2;

struct Keys([u8; 64]);

impl Keys {
    fn new() -> Keys {
        loop {
            let mut bytes = [0u8; 64];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            if DataKey::from_slice(&bytes).is_ok() {
                return Keys(bytes);
            }
        }
    }
    fn key(&self) -> DataKey {
        DataKey::from_slice(&self.0).unwrap()
    }
}

fn superblock(key: &DataKey) -> Superblock {
    let uuid = Uuid::new_v4();
    Superblock::new(
        uuid,
        SIZE,
        4096,
        "arn:aws:kms:us-east-1:111122223333:key/test".into(),
        vec![1, 2, 3],
        key.key_check(&uuid),
        0,
    )
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The snapshot: an origin volume's stored chunks, and its plaintext.
struct Origin {
    store: Arc<MemBackend>,
    plaintext: Vec<u8>,
    /// Chunks the fetcher refuses (a tampered object).
    failing: Mutex<HashSet<u64>>,
    fetches: AtomicU64,
}

impl Origin {
    fn new(keys: &Keys, sb: &Superblock) -> Arc<Origin> {
        let store = Arc::new(MemBackend::new((DATA_OFFSET + SIZE) as usize));
        format_new_volume(&*store, sb);
        let mut plaintext = pattern(SIZE as usize, 0x5a);
        let empty = (EMPTY_CHUNK * CHUNK_SIZE) as usize..((EMPTY_CHUNK + 1) * CHUNK_SIZE) as usize;
        plaintext[empty.clone()].fill(0);
        let volume = Volume::open(SharedMem(store.clone()), sb, keys.key()).unwrap();
        volume
            .write_at(0, &plaintext[..empty.start], false)
            .unwrap();
        volume
            .write_at(empty.end as u64, &plaintext[empty.end..], false)
            .unwrap();
        volume.flush().unwrap();
        drop(volume);
        Arc::new(Origin {
            store,
            plaintext,
            failing: Mutex::new(HashSet::new()),
            fetches: AtomicU64::new(0),
        })
    }
}

/// The origin store, shared with the test.
struct SharedMem(Arc<MemBackend>);

impl Backend for SharedMem {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.punch_hole(offset, len)
    }
    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }
    fn lock_attachment(
        &self,
        mode: crate::volume::AttachMode,
    ) -> Result<(), crate::volume::AttachmentError> {
        self.0.lock_attachment(mode)
    }
}

impl ChunkFetcher for Origin {
    fn fetch(&self, index: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        if self.failing.lock().unwrap().contains(&index) {
            return Err(io::Error::other(format!("chunk {index} is damaged")));
        }
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if index == EMPTY_CHUNK {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        self.store
            .read_at(DATA_OFFSET + index * CHUNK_SIZE, &mut buf)
            .unwrap();
        Ok(Some(buf))
    }
}

fn source() -> HydrationSource {
    HydrationSource {
        snapshot: "s3://bucket/prefix/snap-test".into(),
        endpoint_url: None,
        profile: None,
        region: None,
    }
}

/// A new restored volume: superblocks and its record, nothing fetched (the
/// empty chunk counts as in already, as `restore --lazy` records it).
fn restored(sb: &Superblock) -> CrashBackend {
    let target = CrashBackend::new((DATA_OFFSET + SIZE) as usize, 512);
    format_new_volume(&target, sb);
    HydrationRecord::new(sb, source(), |i| i == EMPTY_CHUNK)
        .write(&target, sb)
        .unwrap();
    target
}

fn open(
    target: &CrashBackend,
    sb: &Superblock,
    keys: &Keys,
    origin: &Arc<Origin>,
) -> (Volume, Arc<Hydration>) {
    let record = HydrationRecord::load(target, sb)
        .unwrap()
        .expect("a record");
    let h = Hydration::new(Box::new(target.clone()), sb, record, origin.clone());
    let v = Volume::open(HydratingBackend(h.clone()), sb, keys.key()).unwrap();
    (v, h)
}

fn read(v: &Volume, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0xee; len];
    BlockDevice::read_at(v, offset, &mut buf)?;
    Ok(buf)
}

#[test]
fn reads_fetch_what_is_missing_writes_stick_and_completion_leaves_a_plain_volume() {
    let keys = Keys::new();
    let sb = superblock(&keys.key());
    let origin = Origin::new(&keys, &sb);
    let target = restored(&sb);
    let (v, h) = open(&target, &sb, &keys, &origin);
    assert_eq!(h.progress(), (1, CHUNKS));
    // A sub-chunk write into a chunk not yet fetched: fetched first.
    let written = pattern(8192, 0x11);
    let at = 3 * CHUNK_SIZE + 4096;
    v.write_at(at, &written, false).unwrap();
    assert!(h.is_present(3));
    let mut expect = origin.plaintext.clone();
    expect[at as usize..at as usize + written.len()].copy_from_slice(&written);
    // A read across chunks 0 and 1 fetches both, and only them.
    let r = read(&v, CHUNK_SIZE - 4096, 8192).unwrap();
    assert_eq!(
        r,
        expect[(CHUNK_SIZE - 4096) as usize..(CHUNK_SIZE + 4096) as usize]
    );
    assert_eq!(origin.fetches.load(Ordering::SeqCst), 3);
    assert_eq!(h.progress(), (4, CHUNKS));
    assert!(!h.complete().unwrap(), "chunks 4 and 5 are missing");
    // Background hydration's part, then the whole volume.
    for i in h.missing() {
        h.ensure(i).unwrap();
    }
    assert_eq!(origin.fetches.load(Ordering::SeqCst), 5, "each chunk once");
    assert_eq!(read(&v, 0, SIZE as usize).unwrap(), expect);
    assert!(h.complete().unwrap());
    // The record is gone; the store holds the volume as a plain one.
    assert_eq!(HydrationRecord::load(&target, &sb).unwrap(), None);
    drop(v);
    drop(h);
    let plain = Volume::open(target.clone(), &sb, keys.key()).unwrap();
    assert_eq!(read(&plain, 0, SIZE as usize).unwrap(), expect);
}

#[test]
fn a_chunk_a_client_wrote_is_never_fetched_again_after_a_crash() {
    let keys = Keys::new();
    let sb = superblock(&keys.key());
    let origin = Origin::new(&keys, &sb);
    let target = restored(&sb);
    let (v, h) = open(&target, &sb, &keys, &origin);
    let written = pattern(4096, 0x22);
    v.write_at(CHUNK_SIZE, &written, false).unwrap();
    v.flush().unwrap();
    let image = target.power_loss(PowerLoss::DropUnsynced);
    drop((v, h));
    let target = CrashBackend::from_image(image, 512);
    let (v, h) = open(&target, &sb, &keys, &origin);
    assert!(
        h.is_present(1),
        "the written chunk's bit was durable before the write"
    );
    let before = origin.fetches.load(Ordering::SeqCst);
    assert_eq!(read(&v, CHUNK_SIZE, 4096).unwrap(), written);
    assert_eq!(origin.fetches.load(Ordering::SeqCst), before);
}

#[test]
fn power_lost_at_any_write_of_a_fetch_never_leaves_zeros_for_data() {
    let keys = Keys::new();
    let sb = superblock(&keys.key());
    let origin = Origin::new(&keys, &sb);
    let want = origin.plaintext[..CHUNK_SIZE as usize].to_vec();
    // A fetch is: the chunk, a flush, the bitmap byte (and writes after).
    for n in 0..5 {
        for how in [
            PowerLoss::DropUnsynced,
            PowerLoss::TearLast { seed: n },
            PowerLoss::Reorder { seed: n + 7 },
        ] {
            let target = restored(&sb);
            let (v, h) = open(&target, &sb, &keys, &origin);
            target.crash_after(n);
            let _ = read(&v, 0, 4096);
            let image = target.power_loss(how);
            drop((v, h));
            let target = CrashBackend::from_image(image, 512);
            let (v, _h) = open(&target, &sb, &keys, &origin);
            assert_eq!(
                read(&v, 0, CHUNK_SIZE as usize).unwrap(),
                want,
                "power lost at write {n} ({how:?})"
            );
        }
    }
}

#[test]
fn a_failed_fetch_fails_the_request_and_is_tried_again() {
    let keys = Keys::new();
    let sb = superblock(&keys.key());
    let origin = Origin::new(&keys, &sb);
    let target = restored(&sb);
    let (v, h) = open(&target, &sb, &keys, &origin);
    origin.failing.lock().unwrap().insert(4);
    let err = read(&v, 4 * CHUNK_SIZE, 4096).unwrap_err();
    assert!(err.to_string().contains("chunk 4"), "{err}");
    let err = v.write_at(4 * CHUNK_SIZE, &[1u8; 4096], false).unwrap_err();
    assert!(err.to_string().contains("could not be fetched"), "{err}");
    assert!(!h.is_present(4));
    origin.failing.lock().unwrap().clear();
    assert_eq!(
        read(&v, 4 * CHUNK_SIZE, 4096).unwrap(),
        origin.plaintext[(4 * CHUNK_SIZE) as usize..(4 * CHUNK_SIZE + 4096) as usize]
    );
}

#[test]
fn a_hydrating_volume_does_not_grow_and_a_damaged_record_is_refused() {
    let keys = Keys::new();
    let sb = superblock(&keys.key());
    let origin = Origin::new(&keys, &sb);
    let target = restored(&sb);
    let (v, _h) = open(&target, &sb, &keys, &origin);
    let err = v
        .grow(crate::volume::NewSize::To(SIZE + CHUNK_SIZE))
        .unwrap_err();
    assert!(err.to_string().contains("still being restored"), "{err}");
    drop(v);
    let mut byte = [0u8; 1];
    let at = record_offset(&sb) + 20;
    target.read_at(at, &mut byte).unwrap();
    target.write_at(at, &[byte[0] ^ 1]).unwrap();
    let err = HydrationRecord::load(&target, &sb).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}
