//! The NBD server on an asynchronous store (issue 13, build item 3): a
//! volume whose backend completes each read, write and flush milliseconds
//! later on its own thread ([`LatencyBackend`], Ceph's librbd in miniature),
//! served in-process over a Unix socket to a raw NBD client, on both
//! transmission loops, with the server's default worker count.
//!
//! * Requests pipelined on one connection, and on several, are all in
//!   flight in the store at once (the store is held, so nothing completes
//!   while we count) — not one per worker thread.
//! * Data written with any alignment, with and without FUA, in pipelined
//!   batches whose writes share sectors, reads back exactly.
//! * FUA writes and FLUSH are answered only after the store completed the
//!   flush.
//! * A store error becomes an NBD error reply; the connection goes on.
//! * Replies completed while the client reads nothing (the socket fills
//!   up) all arrive whole, once, with their own data.
//! * A device that drops a started request's completion, or panics while
//!   starting one, gets its client EIO for that request, not a hang.
//! * A completion still pending in the store when the server has given up
//!   on its connection (shutdown grace over) does not close the volume on
//!   the store's thread: the server's thread closes it, once the store is
//!   done.

mod common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nbd::{TestServer, device_export};
use common::raw::*;
use envol::nbd::{Server, TransmissionLoop};
use envol::volume::testing::MemDevice;
use envol::volume::testing::{COMPLETION_THREAD, Fault, FaultOp, FaultyBackend, LatencyBackend};
use envol::volume::{Backend, BlockDevice, DATA_OFFSET, IoBuf, IoDone, MemBackend, Volume};

const CLIENT_FLAGS: u32 = 0b11;
const SIZE: u64 = 8 << 20;
const DELAY: Duration = Duration::from_millis(2);
const EIO: u32 = 5;

/// A fresh 4 KiB-sector volume of [`SIZE`] bytes on `backend`.
fn volume_on(backend: impl Backend) -> Volume {
    common::nbd::volume_on(backend, SIZE, 4096)
}

fn store() -> LatencyBackend {
    LatencyBackend::new(MemBackend::new((DATA_OFFSET + SIZE) as usize), DELAY)
}

/// Serves `volume` as export "disk" with the default worker count.
fn serve(transmission: TransmissionLoop, volume: Volume) -> TestServer {
    TestServer::start_server(
        Server::new(vec![device_export("disk", Arc::new(volume))])
            .unwrap()
            .with_transmission_loop(transmission),
    )
}

fn attach(server: &TestServer) -> Raw {
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    c.go("disk", &[]);
    c
}

/// Holds `store`'s completions until dropped — also when a check fails, so
/// that a failing test ends instead of waiting for ever on a held store.
struct Held<'a, B>(&'a LatencyBackend<B>);

fn hold<B>(store: &LatencyBackend<B>) -> Held<'_, B> {
    store.hold();
    Held(store)
}

impl<B> Drop for Held<'_, B> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Waits (bounded) until `store` has at least `n` operations in flight.
fn wait_in_flight<B>(store: &LatencyBackend<B>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.in_flight() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests reached the store at once",
            store.in_flight()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads `expected.len()` replies in any order: every cookie answered once,
/// without error; returns each READ's data by cookie (`reads`: cookie →
/// length).
fn collect(c: &mut Raw, count: usize, reads: &HashMap<u64, usize>) -> HashMap<u64, Vec<u8>> {
    let mut seen = HashMap::new();
    for _ in 0..count {
        let Reply::Simple { cookie, error } = c.read_reply() else {
            panic!("a structured reply without structured replies negotiated");
        };
        assert_eq!(error, 0, "request {cookie} failed");
        let data = reads
            .get(&cookie)
            .map_or_else(Vec::new, |&len| c.read_data(len));
        assert!(
            seen.insert(cookie, data).is_none(),
            "cookie {cookie} answered twice"
        );
    }
    seen
}

/// Sends `requests` (command, cookie, offset, length; no payloads) in one
/// write, so they arrive together however busy the machine is.
fn pipeline(c: &mut Raw, requests: &[(u16, u64, u64, u32)]) {
    let mut bytes = Vec::with_capacity(requests.len() * 28);
    for &(kind, cookie, offset, length) in requests {
        bytes.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        bytes.extend_from_slice(&0u16.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
    }
    std::io::Write::write_all(&mut c.s, &bytes).unwrap();
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn pipelined_requests_are_all_in_flight_in_the_store(transmission: TransmissionLoop) {
    let store = store();
    let server = serve(transmission, volume_on(store.clone()));
    let mut c = attach(&server);
    let held = hold(&store);
    let mut reads = HashMap::new();
    for i in 0..64u64 {
        if i % 2 == 0 {
            c.request(CMD_WRITE, 0, i, i * 4096, 4096, &[i as u8 + 1; 4096]);
        } else {
            c.request(CMD_READ, 0, i, (64 + i) * 4096, 4096, &[]);
            reads.insert(i, 4096);
        }
    }
    // With two workers making blocking calls this stops at two.
    wait_in_flight(&store, 64);
    assert_eq!(store.max_in_flight(), 64);
    no_reply_within(
        &mut c,
        Duration::from_millis(100),
        "a reply came before the store completed anything",
    );
    drop(held);
    let replies = collect(&mut c, 64, &reads);
    assert!(reads.keys().all(|k| replies[k] == vec![0u8; 4096]));
    for i in (0..64u64).step_by(2) {
        c.request(CMD_READ, 0, 1000 + i, i * 4096, 4096, &[]);
        ok(&mut c, 1000 + i);
        assert_eq!(c.read_data(4096), vec![i as u8 + 1; 4096]);
    }
    store.reset_max_in_flight();
    // Any alignment, batches of pipelined writes (neighbours share sectors:
    // the slots are not sector-aligned), then pipelined reads.
    let mut model = vec![0u8; SIZE as usize];
    for i in (0..64usize).step_by(2) {
        model[i * 4096..(i + 1) * 4096].fill(i as u8 + 1);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const SLOT: u64 = 100_000;
    for round in 0..3u64 {
        for slot in 0..64u64 {
            let len = 1 + rng.below(20_000);
            let at = slot * SLOT + rng.below(SLOT - len);
            let fill: Vec<u8> = (0..len).map(|_| rng.below(255) as u8 + 1).collect();
            let flags = if rng.below(4) == 0 { FLAG_FUA } else { 0 };
            c.request(CMD_WRITE, flags, slot, at, len as u32, &fill);
            model[at as usize..(at + len) as usize].copy_from_slice(&fill);
        }
        collect(&mut c, 64, &HashMap::new());
        let mut reads = HashMap::new();
        let mut ranges = HashMap::new();
        let mut requests = Vec::new();
        for i in 0..64u64 {
            let len = 1 + rng.below(150_000);
            let at = rng.below(SIZE - len);
            let at = if i % 4 == 0 { at / 4096 * 4096 } else { at };
            requests.push((CMD_READ, i, at, len as u32));
            reads.insert(i, len as usize);
            ranges.insert(i, at as usize..(at + len) as usize);
        }
        // Held, so that every read must be in the store at once before any
        // completes (timing alone cannot prove it on a loaded machine).
        let held = hold(&store);
        pipeline(&mut c, &requests);
        wait_in_flight(&store, 64);
        drop(held);
        let data = collect(&mut c, 64, &reads);
        for (cookie, range) in ranges {
            assert!(
                data[&cookie] == model[range.clone()],
                "round {round}: read {range:?} differs from what was written"
            );
        }
    }
    assert_eq!(
        store.max_in_flight(),
        64,
        "unaligned pipelined reads were not all in flight at once"
    );
    drop(c);
    server.stop().unwrap();
}

fn several_connections_share_the_store(transmission: TransmissionLoop) {
    let store = store();
    let server = serve(transmission, volume_on(store.clone()));
    let mut conns: Vec<Raw> = (0..4).map(|_| attach(&server)).collect();
    // Sub-sector writes from every connection at once, and flushes.
    for (n, c) in conns.iter_mut().enumerate() {
        for i in 0..16u64 {
            let block = n as u64 * 16 + i;
            if i % 4 == 3 {
                c.request(CMD_FLUSH, 0, i, 0, 0, &[]);
            } else {
                c.request(
                    CMD_WRITE,
                    0,
                    i,
                    block * 8192 + 7,
                    5000,
                    &[n as u8 + 1; 5000],
                );
            }
        }
    }
    for c in &mut conns {
        collect(c, 16, &HashMap::new());
    }
    store.reset_max_in_flight();
    let held = hold(&store);
    let mut reads = HashMap::new();
    for (n, c) in conns.iter_mut().enumerate() {
        for i in 0..16u64 {
            let block = n as u64 * 16 + i;
            c.request(CMD_READ, 0, i, block * 8192, 8192, &[]);
            reads.insert(i, 8192);
        }
    }
    wait_in_flight(&store, 64);
    drop(held);
    for (n, c) in conns.iter_mut().enumerate() {
        let data = collect(c, 16, &reads);
        for i in 0..16u64 {
            let mut want = vec![0u8; 8192];
            if i % 4 != 3 {
                want[7..5007].fill(n as u8 + 1);
            }
            assert!(data[&i] == want, "connection {n}, block {i}");
        }
    }
    assert_eq!(store.max_in_flight(), 64);
    drop(conns);
    server.stop().unwrap();
}

/// Nothing arrives on `c` for `quiet` (the store holds every reply); then
/// reads wait up to 20 s again. `what` says what an early reply means.
fn no_reply_within(c: &mut Raw, quiet: Duration, what: &str) {
    c.s.set_read_timeout(Some(quiet)).unwrap();
    let mut byte = [0u8; 1];
    let early = std::io::Read::read(&mut c.s, &mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{what}: {early:?}"
    );
    c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
}

fn ok(c: &mut Raw, cookie: u64) {
    assert_eq!(c.read_reply(), Reply::Simple { cookie, error: 0 });
}

/// No reply within 200 ms (the store is held), then the store is released
/// and the reply comes: the store's counts when it did are returned.
fn answered_only_after_release<B>(c: &mut Raw, held: Held<'_, B>, cookie: u64) -> (u64, u64, u64) {
    let store = held.0;
    no_reply_within(
        c,
        Duration::from_millis(200),
        "answered before the store completed",
    );
    let before = store.completed();
    drop(held);
    ok(c, cookie);
    let after = store.completed();
    assert!(after.2 > before.2, "the reply came, the flush had not");
    after
}

fn fua_and_flush_are_answered_after_the_store_flushed(transmission: TransmissionLoop) {
    let store = store();
    let server = serve(transmission, volume_on(store.clone()));
    let mut c = attach(&server);
    let held = hold(&store);
    c.request(CMD_WRITE, FLAG_FUA, 1, 4096, 4096, &[3; 4096]);
    let (_, writes, flushes) = answered_only_after_release(&mut c, held, 1);
    assert_eq!((writes, flushes), (1, 1));
    let held = hold(&store);
    c.request(CMD_FLUSH, 0, 2, 0, 0, &[]);
    let (_, _, flushes) = answered_only_after_release(&mut c, held, 2);
    assert_eq!(flushes, 2);
    drop(c);
    server.stop().unwrap();
}

fn store_errors_become_error_replies(transmission: TransmissionLoop) {
    let faulty = FaultyBackend::new(MemBackend::new((DATA_OFFSET + SIZE) as usize));
    let faults = faulty.faults();
    let store = LatencyBackend::new(faulty, DELAY);
    let server = serve(transmission, volume_on(store.clone()));
    let mut c = attach(&server);
    faults.add(Fault {
        op: FaultOp::Read,
        range: DATA_OFFSET..DATA_OFFSET + 4096,
        errno: 5,
    });
    faults.add(Fault {
        op: FaultOp::Write,
        range: DATA_OFFSET + 65536..DATA_OFFSET + 65537,
        errno: 28,
    });
    c.request(CMD_READ, 0, 1, 0, 4096, &[]);
    c.request(CMD_READ, 0, 2, 100, 10, &[]);
    c.request(CMD_WRITE, 0, 3, 65536, 4096, &[1; 4096]);
    c.request(CMD_WRITE, FLAG_FUA, 4, 8192, 4096, &[2; 4096]);
    let mut errors = HashMap::new();
    for _ in 0..4 {
        let Reply::Simple { cookie, error } = c.read_reply() else {
            panic!("structured reply");
        };
        if error == 0 {
            assert_eq!(cookie, 4, "only the healthy write succeeds");
        }
        errors.insert(cookie, error);
    }
    assert_eq!(
        errors,
        HashMap::from([(1, EIO), (2, EIO), (3, ENOSPC), (4, 0)])
    );
    faults.add(Fault {
        op: FaultOp::Flush,
        range: 0..0,
        errno: 5,
    });
    c.request(CMD_FLUSH, 0, 5, 0, 0, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 5,
            error: EIO
        }
    );
    faults.clear();
    // The same connection goes on.
    c.request(CMD_READ, 0, 6, 8192, 4096, &[]);
    ok(&mut c, 6);
    assert_eq!(c.read_data(4096), vec![2; 4096]);
    c.request(CMD_FLUSH, 0, 7, 0, 0, &[]);
    ok(&mut c, 7);
    assert!(faults.injected() >= 4);
    drop(c);
    server.stop().unwrap();
}

/// Replies a client is slow to take: more READ data than the socket
/// buffers hold is completed at once while the client reads nothing, so
/// the threads that complete requests find the socket full (the threaded
/// loop's non-blocking sends then leave a frame half-sent, for the writer
/// thread to finish before anything else). Every reply must still arrive
/// whole, once, with its own data.
fn replies_a_slow_client_takes_later_arrive_whole(transmission: TransmissionLoop) {
    let store = store();
    let server = serve(transmission, volume_on(store.clone()));
    let mut c = attach(&server);
    const MIB: usize = 1 << 20;
    let model: Vec<u8> = (0..SIZE as usize)
        .map(|i| (i / 4096 * 31 + i * 7) as u8)
        .collect();
    for (i, chunk) in model.chunks(MIB).enumerate() {
        c.request(CMD_WRITE, 0, i as u64, (i * MIB) as u64, MIB as u32, chunk);
        ok(&mut c, i as u64);
    }
    // 24 MiB of 1 MiB replies (more than a 4 MiB send buffer, doubled by
    // the kernel, holds) and small ones between them.
    let mut requests = Vec::new();
    let mut reads = HashMap::new();
    let mut ranges = HashMap::new();
    for i in 0..48u64 {
        let (at, len) = if i % 2 == 0 {
            ((i / 2 % 8) * MIB as u64, MIB)
        } else {
            (i * 40_960 + 4096, 4096)
        };
        requests.push((CMD_READ, 100 + i, at, len as u32));
        reads.insert(100 + i, len);
        ranges.insert(100 + i, at as usize..at as usize + len);
    }
    let held = hold(&store);
    pipeline(&mut c, &requests);
    wait_in_flight(&store, requests.len());
    drop(held);
    // Let the completions run into the full socket before reading any.
    std::thread::sleep(Duration::from_millis(300));
    let data = collect(&mut c, requests.len(), &reads);
    for (cookie, range) in ranges {
        assert!(
            data[&cookie] == model[range.clone()],
            "read {cookie} of {range:?} came back with other bytes"
        );
    }
    drop(c);
    server.stop().unwrap();
}

crate::on_every_transmission_loop! {
    replies_a_slow_client_takes_later_arrive_whole,
    pipelined_requests_are_all_in_flight_in_the_store,
    several_connections_share_the_store,
    fua_and_flush_are_answered_after_the_store_flushed,
    store_errors_become_error_replies,
    a_lost_or_panicking_start_gets_eio,
}

/// An asynchronous device with bugs: it drops the completion of every
/// started read, and panics starting a write; everything else is a
/// [`MemDevice`]'s.
struct CarelessDevice(Arc<MemDevice>);

impl BlockDevice for CarelessDevice {
    crate::forward_block_device!(
        size,
        block_sizes,
        read_at,
        write_at,
        flush,
        trim,
        write_zeroes
    );
    fn is_asynchronous(&self) -> bool {
        true
    }
    fn start_read(&self, _offset: u64, _buf: IoBuf, done: IoDone) {
        drop(done);
    }
    fn start_write(&self, _offset: u64, _data: IoBuf, _fua: bool, _done: IoDone) {
        panic!("a device bug while starting a write");
    }
}

fn a_lost_or_panicking_start_gets_eio(transmission: TransmissionLoop) {
    let device = Arc::new(CarelessDevice(MemDevice::new(1 << 20)));
    let server = TestServer::start_server(
        Server::new(vec![device_export("disk", device)])
            .unwrap()
            .with_transmission_loop(transmission),
    );
    let mut c = attach(&server);
    c.request(CMD_READ, 0, 1, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: EIO
        }
    );
    c.request(CMD_WRITE, 0, 2, 0, 4096, &[1; 4096]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: EIO
        }
    );
    // The connection goes on: FLUSH is started (the default: inline).
    c.request(CMD_FLUSH, 0, 3, 0, 0, &[]);
    ok(&mut c, 3);
    drop(c);
    server.stop().unwrap();
}

#[test]
fn a_completion_pending_past_its_connection_never_closes_the_volume() {
    let store = store();
    let server = serve(TransmissionLoop::Async, volume_on(store.clone()));
    let mut c = attach(&server);
    let held = hold(&store);
    c.request(CMD_READ, 0, 1, 0, 4096, &[]);
    c.request(CMD_WRITE, FLAG_FUA, 2, 4096, 4096, &[7; 4096]);
    wait_in_flight(&store, 2);
    let stopper = std::thread::spawn(move || server.stop());
    // The server waits its shutdown grace for replies that cannot come
    // (the store is held), then gives up on the connection and closes it.
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.read_to_eof()
        .expect("the server did not close the connection after its shutdown grace");
    // Everything but the pending completions is gone now (or about to be);
    // the volume's owner must wait for the store rather than leave the
    // volume to whichever completion runs last.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !stopper.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !stopper.is_finished(),
        "the server finished with the volume's operations still in the store"
    );
    drop(held);
    stopper
        .join()
        .expect("server thread panicked")
        .expect("server stopped with an error");
    let dropped = store.dropped_on();
    assert!(!dropped.is_empty(), "the volume was never closed");
    assert!(
        !dropped.iter().any(|t| t == COMPLETION_THREAD),
        "the volume was closed by a completion on the store's thread: {dropped:?}"
    );
}
