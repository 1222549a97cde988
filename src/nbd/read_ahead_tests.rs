//! The read-ahead slot: what it hands out, when it waits, what it drops.

use super::*;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::volume::BlockSizes;

const LEN: u32 = READ_AHEAD_MIN;
const SIZE: u64 = 16 * LEN as u64;

/// Bytes that say where they are; a generation moved by `write`; reads
/// that can be held until released, or panic.
#[derive(Default)]
struct Device {
    generation: AtomicU64,
    hold: Mutex<Option<mpsc::Receiver<()>>>,
    panics: bool,
}

impl Device {
    fn byte(offset: u64) -> u8 {
        (offset / 4096) as u8
    }
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        SIZE
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 1 << 20,
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Self::byte(offset + i as u64);
        }
        Ok(())
    }
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        assert!(!self.panics, "device failure");
        let held = self.hold.lock().unwrap().take();
        if let Some(release) = held {
            release.recv().unwrap();
        }
        self.read_at(offset, buf).map(|()| true)
    }
    fn contents_generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::SeqCst))
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
}

fn generation(d: &Device) -> Option<u64> {
    d.contents_generation()
}

fn run_all(ra: &ReadAhead, planned: Vec<Planned>, dev: &Device, pool: &Arc<BufferPool>) {
    for p in planned {
        ra.run(p, dev, pool);
    }
}

const L: u64 = LEN as u64;

#[test]
fn reads_two_ranges_ahead_and_hands_out_each_exact_range_once() {
    let (ra, dev, pool) = (
        ReadAhead::default(),
        Device::default(),
        Arc::new(BufferPool::default()),
    );
    assert!(ra.take(0, LEN, generation(&dev)).is_none());
    assert!(!ra.continues(2 * L), "not where the last READ ended");
    assert!(ra.continues(L));
    // Too small, too large, or past the end: nothing planned.
    assert!(ra.plan(0, LEN / 2, SIZE).is_empty());
    assert!(ra.plan(0, READ_AHEAD_MAX + 1, SIZE).is_empty());
    assert!(ra.plan(SIZE - L, LEN, SIZE).is_empty());
    assert_eq!(ra.plan(SIZE - 3 * L, LEN, SIZE).len(), 2);
    assert!(
        ra.plan(SIZE - 3 * L, LEN, SIZE).is_empty(),
        "planned already"
    );
    let ra = ReadAhead::default();
    assert_eq!(ra.plan(SIZE - 2 * L, LEN, SIZE).len(), 1, "one fits");

    let ra = ReadAhead::default();
    let planned = ra.plan(L, LEN, SIZE);
    assert_eq!(planned.len(), 2);
    run_all(&ra, planned, &dev, &pool);
    for at in [2 * L, 3 * L] {
        let data = ra.take(at, LEN, generation(&dev)).expect("ready");
        assert_eq!(data.as_slice().len(), LEN as usize);
        assert_eq!(data.as_slice()[0], Device::byte(at));
        assert_eq!(data.as_slice()[LEN as usize - 1], Device::byte(at + L - 1));
    }
    assert!(ra.take(4 * L, LEN, generation(&dev)).is_none(), "all taken");

    // Another range, or another length: everything is dropped.
    run_all(&ra, ra.plan(0, LEN, SIZE), &dev, &pool);
    assert!(ra.take(L, LEN / 2, generation(&dev)).is_none());
    assert!(ra.take(2 * L, LEN, generation(&dev)).is_none(), "dropped");
}

#[test]
fn a_write_since_the_read_ahead_began_throws_it_away() {
    let (ra, dev, pool) = (
        ReadAhead::default(),
        Device::default(),
        Arc::new(BufferPool::default()),
    );
    run_all(&ra, ra.plan(0, LEN, SIZE), &dev, &pool);
    dev.write_at(0, &[1], false).unwrap();
    assert!(ra.take(L, LEN, generation(&dev)).is_none());
    assert!(ra.take(2 * L, LEN, generation(&dev)).is_none());
    // A device that stopped counting: nothing is reused either.
    run_all(&ra, ra.plan(2 * L, LEN, SIZE), &dev, &pool);
    assert!(ra.take(3 * L, LEN, None).is_none());
}

#[test]
fn a_queued_read_ahead_is_taken_back_and_a_running_one_waited_for() {
    let (ra, dev, pool) = (
        Arc::new(ReadAhead::default()),
        Arc::new(Device::default()),
        Arc::new(BufferPool::default()),
    );
    // Queued, not yet run: the READ does not wait for it, and the worker
    // that gets to it later finds nothing to do.
    let mut planned = ra.plan(0, LEN, SIZE);
    assert!(ra.take(L, LEN, generation(&dev)).is_none());
    ra.run(planned.remove(0), &*dev, &pool);
    assert!(ra.take(L, LEN, generation(&dev)).is_none());

    // Running: the READ for its range waits, then gets it.
    let (release, held) = mpsc::channel();
    *dev.hold.lock().unwrap() = Some(held);
    let ra = Arc::new(ReadAhead::default());
    let mut planned = ra.plan(0, LEN, SIZE);
    let first = planned.remove(0);
    let worker = {
        let (ra, dev, pool) = (ra.clone(), dev.clone(), pool.clone());
        std::thread::spawn(move || ra.run(first, &*dev, &pool))
    };
    while dev.hold.lock().unwrap().is_some() {
        std::thread::yield_now();
    }
    let reader = {
        let (ra, dev) = (ra.clone(), dev.clone());
        std::thread::spawn(move || ra.take(L, LEN, generation(&dev)).is_some())
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(!reader.is_finished(), "waits for the running read-ahead");
    release.send(()).unwrap();
    worker.join().unwrap();
    assert!(reader.join().unwrap(), "and gets its data");
    // The second range, run late, is still there for the READ after.
    ra.run(planned.remove(0), &*dev, &pool);
    assert!(ra.take(2 * L, LEN, generation(&dev)).is_some());
}

#[test]
fn a_panicking_device_leaves_nothing_to_wait_for() {
    let dev = Device {
        panics: true,
        ..Device::default()
    };
    let (ra, pool) = (ReadAhead::default(), Arc::new(BufferPool::default()));
    run_all(&ra, ra.plan(0, LEN, SIZE), &dev, &pool);
    assert!(ra.take(L, LEN, generation(&dev)).is_none());
}
