//! The server against misbehaving clients (issue 5 §5, §4): a silent or
//! stalled handshake is cut off by the handshake timeout, a WRITE whose
//! payload never fully arrives changes nothing, requests that break an
//! advertised minimum block size get EINVAL, FAST_ZERO on a device that
//! cannot zero fast gets a quick ENOTSUP, NBD_CMD_DISC waits for slow
//! in-flight requests. After each, another client is served normally.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nbd::{MemDevice, TestServer, export};
use common::raw::*;
use envol::nbd::{Server, TransmissionLoop};
use envol::volume::{BlockDevice, BlockSizes};

const MIB: usize = 1024 * 1024;
const CLIENT_FLAGS: u32 = 0b11;
const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
const ENOTSUP: u32 = 95;

fn attach(server: &TestServer, name: &str) -> Raw {
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    c.go(name, &[]);
    c
}

fn ok(c: &mut Raw, cookie: u64) {
    assert_eq!(c.read_reply(), Reply::Simple { cookie, error: 0 });
}

fn err(c: &mut Raw, cookie: u64, error: u32) {
    assert_eq!(c.read_reply(), Reply::Simple { cookie, error });
}

/// A second, well-behaved client writes and reads back.
fn still_serves(server: &TestServer) {
    let mut c = attach(server, "disk");
    c.request(CMD_WRITE, FLAG_FUA, 100, 8192, 4096, &[0x42; 4096]);
    ok(&mut c, 100);
    c.request(CMD_READ, 0, 101, 8192, 4096, &[]);
    ok(&mut c, 101);
    assert_eq!(c.read_data(4096), vec![0x42; 4096]);
}

#[test]
fn handshake_timeout_drops_silent_and_stalled_clients() {
    let server = Server::new(vec![export("disk", MemDevice::new(MIB))])
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(300));
    let server = TestServer::start_server(server);

    // Greeting read, client flags sent, then silence.
    let t = Instant::now();
    let mut silent = Raw::connect(server.connect(), CLIENT_FLAGS);
    assert!(silent.is_closed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Half an option header, then a stall.
    let mut stalled = Raw::connect(server.connect(), CLIENT_FLAGS);
    stalled.s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    assert!(stalled.is_closed());

    // The timeout covers haggling only: an attached client may idle.
    let mut idle = attach(&server, "disk");
    std::thread::sleep(Duration::from_millis(800));
    idle.request(CMD_FLUSH, 0, 1, 0, 0, &[]);
    ok(&mut idle, 1);
    still_serves(&server);
}

fn write_payload_cut_short_changes_nothing(transmission: TransmissionLoop) {
    let disk = MemDevice::new(MIB);
    let server = TestServer::start_on(transmission, vec![export("disk", disk.clone())]);
    let mut c = attach(&server, "disk");
    // 64 KiB announced, 1000 bytes sent, then the client's side closes.
    c.request(CMD_WRITE, 0, 1, 0, 65536, &[0x99; 1000]);
    c.s.shutdown(Shutdown::Write).unwrap();
    assert!(c.is_closed());
    assert!(
        disk.contents().iter().all(|&b| b == 0),
        "a partial WRITE payload reached the device"
    );
    still_serves(&server);
}

fn unaligned_requests_get_einval_when_the_minimum_block_size_requires_it(
    transmission: TransmissionLoop,
) {
    let disk = MemDevice::with_sizes(
        MIB,
        BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: MIB as u32,
        },
    );
    let server = TestServer::start_on(transmission, vec![export("disk", disk.clone())]);
    let mut c = attach(&server, "disk");
    c.request(CMD_READ, 0, 1, 512, 4096, &[]);
    err(&mut c, 1, EINVAL);
    c.request(CMD_READ, 0, 2, 0, 512, &[]);
    err(&mut c, 2, EINVAL);
    // The refused WRITE's payload is skipped: the next header is found.
    c.request(CMD_WRITE, 0, 3, 4096, 512, &[0x77; 512]);
    err(&mut c, 3, EINVAL);
    c.request(CMD_WRITE_ZEROES, 0, 4, 100, 4096, &[]);
    err(&mut c, 4, EINVAL);
    c.request(CMD_WRITE, 0, 5, 4096, 4096, &[0x66; 4096]);
    ok(&mut c, 5);
    let contents = disk.contents();
    assert!(contents[..4096].iter().all(|&b| b == 0));
    assert!(contents[4096..8192].iter().all(|&b| b == 0x66));
    assert!(contents[8192..].iter().all(|&b| b == 0));
    still_serves(&server);
}

fn fast_zero_on_a_device_that_cannot_is_enotsup_and_writes_nothing(transmission: TransmissionLoop) {
    let disk = MemDevice::new(MIB);
    disk.fill(0, &[5; 8192]);
    let ro = MemDevice::new(MIB);
    let mut ro_export = export("ro", ro);
    ro_export.read_only = true;
    let server = TestServer::start_on(transmission, vec![export("disk", disk.clone()), ro_export]);

    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    let (_, flags, _) = c.go("disk", &[]);
    assert_ne!(flags & (1 << 11), 0, "SEND_FAST_ZERO");
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 1, 0, 8192, &[]);
    err(&mut c, 1, ENOTSUP);
    assert!(disk.contents()[..8192].iter().all(|&b| b == 5));
    // Without the flag the same request zeroes.
    c.request(CMD_WRITE_ZEROES, 0, 2, 0, 4096, &[]);
    ok(&mut c, 2);
    assert!(disk.contents()[..4096].iter().all(|&b| b == 0));

    // Read-only: no FAST_ZERO advertised (no WRITE_ZEROES at all), EPERM.
    let mut r = Raw::connect(server.connect(), CLIENT_FLAGS);
    let (_, flags, _) = r.go("ro", &[]);
    assert_eq!(flags & (1 << 11 | 1 << 6), 0);
    r.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 1, 0, 4096, &[]);
    err(&mut r, 1, EPERM);
}

/// A device whose writes take a while, to catch a DISC that closes before
/// in-flight requests are answered.
struct Slow(Arc<MemDevice>);

impl BlockDevice for Slow {
    crate::forward_block_device!(size, block_sizes, read_at, flush, trim, write_zeroes);
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        self.0.write_at(offset, data, fua)
    }
}

fn disc_closes_only_after_slow_in_flight_requests_are_answered(transmission: TransmissionLoop) {
    let mem = MemDevice::new(MIB);
    let mut e = export("disk", mem.clone());
    e.device = Arc::new(Slow(mem.clone()));
    let server = TestServer::start_on(transmission, vec![e]);
    let mut c = attach(&server, "disk");
    for i in 0..4u64 {
        c.request(CMD_WRITE, 0, i, i * 4096, 4096, &[0xd0 + i as u8; 4096]);
    }
    c.request(CMD_DISC, 0, 99, 0, 0, &[]);
    let mut cookies: Vec<u64> = (0..4)
        .map(|_| match c.read_reply() {
            Reply::Simple { cookie, error: 0 } => cookie,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, vec![0, 1, 2, 3]);
    assert!(c.is_closed(), "server must close after NBD_CMD_DISC");
    for i in 0..4 {
        assert!(
            mem.contents()[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&b| b == 0xd0 + i as u8)
        );
    }
}

/// Server shutdown with busy connections: every request a client sent
/// before the shutdown is answered, then the connection closes; a client
/// that never reads its replies is cut off once the grace period is over,
/// so shutdown always ends.
fn shutdown_answers_what_was_sent_and_never_hangs(transmission: TransmissionLoop) {
    let disk = MemDevice::new(8 * MIB);
    let pattern: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8).collect();
    disk.fill(0, &pattern);
    let server = TestServer::start_on(transmission, vec![export("disk", disk.clone())]);

    // 64 MiB of replies it never reads: the server's writer stalls on it.
    let mut deaf = attach(&server, "disk");
    for i in 0..16u64 {
        deaf.request(CMD_READ, 0, 1000 + i, 0, 4 * MIB as u32, &[]);
    }
    // 32 reads, pipelined; replies read only once shutdown has begun.
    let mut busy = attach(&server, "disk");
    const READS: u64 = 32;
    for i in 0..READS {
        busy.request(CMD_READ, 0, i, i * 65536, 65536, &[]);
    }
    std::thread::sleep(Duration::from_millis(300));

    let stopper = std::thread::spawn(move || {
        let t = Instant::now();
        server.stop().unwrap();
        t.elapsed()
    });
    let mut answered = std::collections::HashSet::new();
    while let Some(reply) = busy.try_read_reply() {
        let Reply::Simple { cookie, error: 0 } = reply else {
            panic!("unexpected reply {reply:?}");
        };
        assert!(cookie < READS && answered.insert(cookie), "cookie {cookie}");
        let at = cookie as usize * 65536;
        assert_eq!(busy.read_data(65536), pattern[at..at + 65536]);
    }
    assert_eq!(
        answered.len() as u64,
        READS,
        "every request sent was answered"
    );

    let took = stopper.join().unwrap();
    assert!(
        took < envol::nbd::SHUTDOWN_GRACE + Duration::from_secs(5),
        "shutdown took {took:?}"
    );
    // Whatever reached the deaf client before the cut, it ends in EOF (not
    // in the 20 s read timeout).
    let drained = deaf.read_to_eof().expect("deaf connection closed");
    assert!(drained <= 16 * (4 * MIB + 16), "{drained} bytes");
}

// Every test that reaches the transmission phase runs on both loops a plain
// connection can get (`threaded::*`, `async_loop::*`). Handshake-only tests
// (`handshake_timeout_drops_silent_and_stalled_clients`) run once: no loop is involved before transmission.
crate::on_every_transmission_loop! {
    write_payload_cut_short_changes_nothing,
    unaligned_requests_get_einval_when_the_minimum_block_size_requires_it,
    fast_zero_on_a_device_that_cannot_is_enotsup_and_writes_nothing,
    disc_closes_only_after_slow_in_flight_requests_are_answered,
    shutdown_answers_what_was_sent_and_never_hangs,
}
