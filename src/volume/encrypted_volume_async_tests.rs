//! The started (asynchronous) reads, writes and flushes of [`Volume`] on a
//! store that completes later, on its own thread ([`LatencyBackend`]).

use super::tests::sized_superblock;
use super::*;

use std::sync::{Mutex, mpsc};
use std::time::Duration;

use crate::volume::backend::MemBackend;
use crate::volume::superblock::DATA_OFFSET;
use crate::volume::testing::{Fault, FaultOp, FaultyBackend, LatencyBackend};

const SIZE: u64 = 1 << 20;
const DELAY: Duration = Duration::from_millis(2);
const WAIT: Duration = Duration::from_secs(20);

fn open_on<B: Backend>(backend: B, sector_size: u32) -> Volume {
    let key = DataKey::generate();
    let sb = sized_superblock(&key, SIZE, sector_size);
    Volume::open(backend, &sb, key).unwrap()
}

fn latency_volume(sector_size: u32) -> (Volume, LatencyBackend) {
    let backend = LatencyBackend::new(MemBackend::new((DATA_OFFSET + SIZE) as usize), DELAY);
    (open_on(backend.clone(), sector_size), backend)
}

type Outcome = (Vec<u8>, io::Result<()>);

/// A completion that sends its outcome (the buffer's bytes) to `tx`.
fn reply_to(tx: &mpsc::Sender<Outcome>) -> IoDone {
    let tx = tx.clone();
    Box::new(move |buf, result| {
        let _ = tx.send((buf.bytes().to_vec(), result));
    })
}

fn started_read(v: &Volume, offset: u64, len: usize) -> Outcome {
    let (tx, rx) = mpsc::channel();
    v.start_read(offset, Box::new(vec![0xeeu8; len]), reply_to(&tx));
    rx.recv_timeout(WAIT)
        .expect("a started read never completed")
}

fn started_write(v: &Volume, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    v.start_write(offset, Box::new(data.to_vec()), fua, reply_to(&tx));
    let (back, result) = rx
        .recv_timeout(WAIT)
        .expect("a started write never completed");
    assert_eq!(back, data, "the caller's buffer comes back untouched");
    result
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn started_requests_of_any_alignment_match_a_model() {
    for ss in [512u32, 4096] {
        let (v, backend) = latency_volume(ss);
        assert!(v.is_asynchronous());
        let mut model = vec![0u8; SIZE as usize];
        let cases: [(u64, usize); 7] = [
            (0, 8192),
            (4096, 4096),
            (5, 100),
            (4000, 200),
            (1000, 70_000),
            (SIZE - 4096, 4096),
            (SIZE - 7, 7),
        ];
        for (i, &(offset, len)) in cases.iter().enumerate() {
            let data = pattern(len, i as u8);
            started_write(&v, offset, &data, i % 2 == 0).unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
        }
        // Every range, started and blocking, aligned or not, reads the model.
        for &(offset, len) in cases.iter().chain(&[(0, SIZE as usize), (3, 9000)]) {
            let (got, result) = started_read(&v, offset, len);
            result.unwrap();
            let want = &model[offset as usize..offset as usize + len];
            assert!(got == want, "started read {offset}+{len}, sector {ss}");
            let mut blocking = vec![0u8; len];
            v.read_at(offset, &mut blocking).unwrap();
            assert!(
                blocking == want,
                "blocking read {offset}+{len}, sector {ss}"
            );
        }
        // Never-written sectors read as zeros (the zero-sector rule) and
        // the store holds no plaintext.
        assert_eq!(started_read(&v, SIZE / 2, 4096).0, vec![0u8; 4096]);
        let stored = backend.inner().snapshot();
        let marker = pattern(1000, 4);
        assert!(!stored.windows(64).any(|w| w == &marker[100..164]));
    }
}

#[test]
fn started_writes_are_all_in_flight_at_once() {
    let (v, backend) = latency_volume(4096);
    backend.hold();
    let (tx, rx) = mpsc::channel();
    for i in 0..64u64 {
        v.start_write(
            i * 4096,
            Box::new(vec![i as u8 + 1; 4096]),
            false,
            reply_to(&tx),
        );
    }
    assert_eq!(
        backend.in_flight(),
        64,
        "starting a write must not wait for it"
    );
    backend.release();
    for _ in 0..64 {
        rx.recv_timeout(WAIT).unwrap().1.unwrap();
    }
    assert_eq!(backend.max_in_flight(), 64);
    for i in 0..64u64 {
        assert_eq!(started_read(&v, i * 4096, 4096).0, vec![i as u8 + 1; 4096]);
    }
}

#[test]
fn a_started_write_holds_its_sectors_until_the_store_completes_it() {
    let (v, backend) = latency_volume(4096);
    let v = Arc::new(v);
    backend.hold();
    let (tx, rx) = mpsc::channel();
    v.start_write(0, Box::new(vec![1u8; 4096]), false, reply_to(&tx));
    // A read-modify-write of the same sector, started on another thread,
    // must wait for that write: its read would otherwise see the old bytes
    // and its write-back undo the first write.
    let rmw = {
        let (v, tx) = (v.clone(), tx.clone());
        std::thread::spawn(move || {
            v.start_write(100, Box::new(vec![2u8; 10]), false, reply_to(&tx))
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.in_flight(), 1, "the overlapping write went ahead");
    backend.release();
    for _ in 0..2 {
        rx.recv_timeout(WAIT).unwrap().1.unwrap();
    }
    rmw.join().unwrap();
    let mut want = vec![1u8; 4096];
    want[100..110].fill(2);
    assert_eq!(started_read(&v, 0, 4096).0, want);
}

#[test]
fn fua_completes_only_after_the_flush() {
    let (v, backend) = latency_volume(512);
    let (tx, rx) = mpsc::channel();
    let seen = backend.clone();
    v.start_write(
        512,
        Box::new(vec![9u8; 1024]),
        true,
        Box::new(move |_, result| {
            let _ = tx.send((result, seen.completed()));
        }),
    );
    let (result, (_, writes, flushes)) = rx.recv_timeout(WAIT).unwrap();
    result.unwrap();
    assert_eq!(
        (writes, flushes),
        (1, 1),
        "FUA: the write, then a flush, then done"
    );
    let (tx, rx) = mpsc::channel();
    let seen = backend.clone();
    v.start_flush(Box::new(move |result| {
        let _ = tx.send((result, seen.completed().2));
    }));
    let (result, flushes) = rx.recv_timeout(WAIT).unwrap();
    result.unwrap();
    assert_eq!(flushes, 2);
}

#[test]
fn errors_are_reported_through_done_exactly_once() {
    let faulty = FaultyBackend::new(MemBackend::new((DATA_OFFSET + SIZE) as usize));
    let faults = faulty.faults();
    let backend = LatencyBackend::new(faulty, DELAY);
    let v = open_on(backend.clone(), 4096);
    faults.add(Fault {
        op: FaultOp::Read,
        range: DATA_OFFSET..DATA_OFFSET + 8192,
        errno: 5,
    });
    faults.add(Fault {
        op: FaultOp::Write,
        range: DATA_OFFSET + 65536..DATA_OFFSET + 65537,
        errno: 28,
    });
    faults.add(Fault {
        op: FaultOp::Flush,
        range: 0..0,
        errno: 5,
    });
    let (tx, rx) = mpsc::channel::<Outcome>();
    let expect = |kind: Option<io::ErrorKind>, raw: Option<i32>| {
        let (_, result) = rx.recv_timeout(WAIT).expect("no completion");
        let err = result.unwrap_err();
        if let Some(kind) = kind {
            assert_eq!(err.kind(), kind);
        }
        if let Some(raw) = raw {
            assert_eq!(err.raw_os_error(), Some(raw));
        }
    };
    v.start_read(0, Box::new(vec![0u8; 4096]), reply_to(&tx));
    expect(None, Some(5));
    v.start_read(10, Box::new(vec![0u8; 10]), reply_to(&tx));
    expect(None, Some(5));
    v.start_write(65536, Box::new(vec![1u8; 4096]), false, reply_to(&tx));
    expect(None, Some(28));
    // An unaligned write whose edge-sector read fails: never written.
    v.start_write(4000, Box::new(vec![1u8; 10]), false, reply_to(&tx));
    expect(None, Some(5));
    // FUA whose flush fails: the write landed, the request failed.
    v.start_write(1 << 19, Box::new(vec![1u8; 4096]), true, reply_to(&tx));
    expect(None, Some(5));
    v.start_read(SIZE - 1, Box::new(vec![0u8; 2]), reply_to(&tx));
    expect(Some(io::ErrorKind::InvalidInput), None);
    v.start_write(u64::MAX, Box::new(vec![0u8; 2]), false, reply_to(&tx));
    expect(Some(io::ErrorKind::InvalidInput), None);
    let ro = open_on(backend.clone(), 4096).with_read_only(true);
    ro.start_write(0, Box::new(vec![0u8; 2]), false, reply_to(&tx));
    expect(Some(io::ErrorKind::PermissionDenied), None);
    assert!(faults.injected() >= 4);
    // Exactly once: nothing else arrives, and nothing is left in flight.
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    assert_eq!(backend.in_flight(), 0);
}

#[test]
fn a_blocking_store_completes_started_requests_inline() {
    let v = open_on(MemBackend::new((DATA_OFFSET + SIZE) as usize), 512);
    assert!(!v.is_asynchronous());
    let (tx, rx) = mpsc::channel();
    v.start_write(3, Box::new(vec![7u8; 600]), true, reply_to(&tx));
    assert!(
        rx.try_recv().unwrap().1.is_ok(),
        "done ran before the call returned"
    );
    v.start_read(3, Box::new(vec![0u8; 600]), reply_to(&tx));
    assert_eq!(rx.try_recv().unwrap().0, vec![7u8; 600]);
    let (ftx, frx) = mpsc::channel();
    v.start_flush(Box::new(move |r| ftx.send(r).unwrap()));
    frx.try_recv().unwrap().unwrap();
}

/// Waits (bounded) until `store` has `n` operations in flight.
fn wait_in_flight(store: &LatencyBackend, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while store.in_flight() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} operations reached the store",
            store.in_flight()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_dropped_volume_waits_for_its_started_operations_and_closes_on_its_own_thread() {
    use crate::volume::testing::COMPLETION_THREAD;
    let (v, store) = latency_volume(4096);
    // Opening read the change map's header: counted apart.
    let (opening_reads, _, _) = store.completed();
    let (tx, rx) = mpsc::channel();
    store.hold();
    // A read (its completion holds the cipher), a FUA write (its completion
    // starts the flush on the backend), a flush.
    v.start_read(0, Box::new(vec![0u8; 8192]), reply_to(&tx));
    v.start_write(4096, Box::new(pattern(4096, 7)), true, reply_to(&tx));
    let flush_tx = tx.clone();
    v.start_flush(Box::new(move |r| {
        let _ = flush_tx.send((Vec::new(), r));
    }));
    wait_in_flight(&store, 3);
    let owner = std::thread::Builder::new()
        .name("volume-owner".into())
        .spawn(move || drop(v))
        .unwrap();
    // The owner waits for the store, however long it is held.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !owner.is_finished(),
        "the volume was dropped with operations pending"
    );
    assert!(store.dropped_on().is_empty());
    store.release();
    owner.join().unwrap();
    for _ in 0..3 {
        let (_, result) = rx.recv_timeout(WAIT).expect("an operation never completed");
        result.unwrap();
    }
    assert_eq!(
        store.completed(),
        (opening_reads + 1, 1, 2),
        "the FUA write's flush ran too"
    );
    let dropped = store.dropped_on();
    assert_eq!(dropped, vec!["volume-owner".to_string()]);
    assert!(!dropped.iter().any(|t| t == COMPLETION_THREAD));
}

/// An executor that runs work on one thread of its own and counts it.
struct OneThread {
    jobs: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    ran: Arc<std::sync::atomic::AtomicUsize>,
}

impl OneThread {
    fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = ran.clone();
        std::thread::Builder::new()
            .name("cpu-executor".into())
            .spawn(move || {
                for job in rx {
                    // Counted before it runs: the job itself answers the
                    // test, which may look at the count at once.
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    job();
                }
            })
            .unwrap();
        Arc::new(OneThread {
            jobs: Mutex::new(tx),
            ran,
        })
    }
}

impl CpuExecutor for OneThread {
    fn execute(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        let _ = self.jobs.lock().unwrap().send(work);
    }
}

#[test]
fn reads_started_on_an_executor_are_decrypted_there() {
    let (v, _store) = latency_volume(4096);
    let written = pattern(3 * 4096, 3);
    started_write(&v, 0, &written, false).unwrap();
    let cpu = OneThread::new();
    // Aligned and unaligned.
    for (offset, len) in [(0u64, 2 * 4096usize), (100, 5000)] {
        let (tx, rx) = mpsc::channel();
        v.start_read_on(
            offset,
            Box::new(vec![0xeeu8; len]),
            Box::new(move |buf, result| {
                let thread = std::thread::current().name().map(str::to_string);
                let _ = tx.send((buf.bytes().to_vec(), result, thread));
            }),
            cpu.clone(),
        );
        let (bytes, result, thread) = rx.recv_timeout(WAIT).expect("read never completed");
        result.unwrap();
        assert_eq!(bytes, written[offset as usize..offset as usize + len]);
        assert_eq!(thread.as_deref(), Some("cpu-executor"));
    }
    assert_eq!(cpu.ran.load(std::sync::atomic::Ordering::SeqCst), 2);
}
