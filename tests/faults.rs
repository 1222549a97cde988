//! Injected faults (issue 7 §5), each with the reply a client should see
//! and the server still alive afterwards:
//!
//! * the volume file on a full filesystem (a small tmpfs): ENOSPC, other
//!   sectors intact, writes work again once space is freed;
//! * I/O errors from the backing store (a failing test backend behind a
//!   real `Volume`, through the in-process NBD server): EIO;
//! * the KMS unreachable at attach — connection refused, answering 503, or
//!   accepting and never answering: one clear line after a bounded number
//!   of attempts, in bounded time;
//! * the KMS killed while volumes are attached: they keep serving, a new
//!   attach fails clearly;
//! * clients vanishing mid-request;
//! * a client that pipelines reads and never reads the replies: the
//!   server's memory stays bounded (RSS measured from /proc).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::nbd::TestServer;
use common::raw::*;
use common::volume::{
    ADMIN, Fixture, KEY_ALIAS, MIB, Vol, VolumeServer, assert_one_clean_line, output_with_timeout,
    parse_uuid, run_ok,
};
use envol::keys::aws::{KMS_MAX_ATTEMPTS, KMS_OPERATION_TIMEOUT};
use envol::nbd::{Export, IN_FLIGHT_BYTES};
use envol::volume::testing::{Fault, FaultOp, FaultyBackend};
use envol::volume::{DATA_OFFSET, DataKey, MemBackend, Superblock, Volume};

const EIO: u32 = 5;

fn attach(socket: &Path, export: &str) -> Raw {
    let mut c = Raw::connect(UnixStream::connect(socket).unwrap(), 0b11);
    c.go(export, &[]);
    c
}

fn expect(c: &mut Raw, cookie: u64, error: u32, what: &str) {
    let r = c.read_reply();
    assert_eq!(r, Reply::Simple { cookie, error }, "{what}");
}

fn write(c: &mut Raw, cookie: u64, off: u64, data: &[u8], flags: u16) -> u32 {
    c.request(CMD_WRITE, flags, cookie, off, data.len() as u32, data);
    match c.read_reply() {
        Reply::Simple { cookie: k, error } if k == cookie => error,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn read(c: &mut Raw, cookie: u64, off: u64, len: usize) -> Vec<u8> {
    c.request(CMD_READ, 0, cookie, off, len as u32, &[]);
    expect(c, cookie, 0, "read");
    c.read_data(len)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed | 1)
        .collect()
}

// ---------------------------------------------------------------------------
// Full filesystem

/// A tmpfs mounted on a fresh directory; unmounted on drop, whatever happens.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed (tests run as root)");
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: succeeds even if something still holds a file open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn full_filesystem_gives_enospc_and_corrupts_nothing() {
    let fx = Fixture::new();
    let mnt = Tmpfs::mount(fx.path("mnt"), "4m");
    let path = mnt.path.join("full.vol");
    let out = run_ok(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            path.to_str().unwrap(),
            "--size",
            &(8 * MIB).to_string(),
            "--key",
            KEY_ALIAS,
            "--sector-size",
            "4096",
        ],
    ));
    let vol = Vol {
        uuid: parse_uuid(&out),
        path,
        size: 8 * MIB,
        sector_size: 4096,
    };
    let server = fx.serve(ADMIN, &vol);
    let mut c = attach(&server.socket, &vol.export());
    let kept = pattern(256 * 1024, 1);
    assert_eq!(write(&mut c, 1, 0, &kept, FLAG_FUA), 0);

    // Fill the filesystem.
    let filler_path = mnt.path.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0x55u8; 64 * 1024];
    let err = loop {
        if let Err(e) = filler.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(28), "filling: {err}");

    // Writes needing new space: ENOSPC, as a reply, not a dropped connection.
    let at = 4 * MIB;
    assert_eq!(write(&mut c, 2, at, &pattern(64 * 1024, 2), 0), ENOSPC);
    assert_eq!(write(&mut c, 3, at + 5000, &[9; 100], FLAG_FUA), ENOSPC);
    c.request(CMD_WRITE_ZEROES, 1 << 1, 4, at, 64 * 1024, &[]);
    expect(&mut c, 4, ENOSPC, "WRITE_ZEROES with NO_HOLE needs space");
    // Sectors already allocated can be rewritten, and everything else is intact.
    let rewritten = pattern(8192, 3);
    assert_eq!(write(&mut c, 5, 4096, &rewritten, FLAG_FUA), 0);
    let mut want = kept.clone();
    want[4096..4096 + 8192].copy_from_slice(&rewritten);
    let got = read(&mut c, 6, 0, 8 * MIB as usize);
    assert_eq!(got[..want.len()], want[..], "written sectors intact");
    let untouched = |i: usize| !(at as usize..at as usize + 64 * 1024).contains(&i);
    assert!(
        (want.len()..got.len())
            .filter(|&i| untouched(i))
            .all(|i| got[i] == 0),
        "never-written sectors still read as zeros"
    );
    // A second client is served too.
    let mut d = attach(&server.socket, &vol.export());
    assert_eq!(read(&mut d, 1, 0, 4096), want[..4096]);

    // Space back: the same write succeeds on the same connection.
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let late = pattern(64 * 1024, 4);
    assert_eq!(write(&mut c, 7, at, &late, FLAG_FUA), 0);
    assert_eq!(read(&mut c, 8, at, late.len()), late);
    drop(c);
    drop(d);
    server.stop();
}

// ---------------------------------------------------------------------------
// Backend I/O errors

#[test]
fn backend_io_errors_give_eio_and_the_server_keeps_serving() {
    const SIZE: u64 = 4 * MIB;
    let key = DataKey::generate();
    let uuid = uuid::Uuid::new_v4();
    let sb = Superblock::new(
        uuid,
        SIZE,
        512,
        "arn:aws:kms:us-east-1:111122223333:key/faulty".into(),
        vec![1; 32],
        key.key_check(&uuid),
        0,
    )
    .unwrap();
    let backend = FaultyBackend::new(MemBackend::new((DATA_OFFSET + SIZE) as usize));
    let faults = backend.faults();
    let volume = Volume::open(backend, &sb, key).unwrap();
    let server = TestServer::start(vec![Export {
        name: "disk".into(),
        description: "a volume on a failing disk".into(),
        device: Arc::new(volume),
        read_only: false,
    }]);
    let mut c = attach(&server.socket, "disk");
    let good = pattern(8192, 5);
    assert_eq!(write(&mut c, 1, 0, &good, 0), 0);
    assert_eq!(write(&mut c, 2, 2 * MIB, &good, 0), 0);

    // Writes to [64 KiB, 128 KiB) of the data area fail; reads of sector
    // 2 MiB / 512 fail; flush fails.
    faults.add(Fault {
        op: FaultOp::Write,
        range: DATA_OFFSET + 65536..DATA_OFFSET + 131072,
        errno: 5,
    });
    faults.add(Fault {
        op: FaultOp::Read,
        range: DATA_OFFSET + 2 * MIB..DATA_OFFSET + 2 * MIB + 512,
        errno: 5,
    });
    assert_eq!(write(&mut c, 3, 70000, &[7; 4096], 0), EIO);
    // A sub-sector write next to the failing range reads then writes: EIO too.
    assert_eq!(write(&mut c, 4, 131071, &[7; 2], 0), EIO);
    c.request(CMD_READ, 0, 5, 2 * MIB + 100, 1000, &[]);
    expect(&mut c, 5, EIO, "read of a failing sector");
    // The WRITE of a sub-sector range whose RMW read fails: EIO.
    assert_eq!(write(&mut c, 6, 2 * MIB + 3, &[1; 3], 0), EIO);
    c.request(CMD_TRIM, 0, 7, 65536, 65536, &[]);
    expect(&mut c, 7, 0, "trim punches, only writes fail");
    faults.add(Fault {
        op: FaultOp::Flush,
        range: 0..0,
        errno: 5,
    });
    c.request(CMD_FLUSH, 0, 8, 0, 0, &[]);
    expect(&mut c, 8, EIO, "flush");
    assert_eq!(
        write(&mut c, 9, 0, &good, FLAG_FUA),
        EIO,
        "FUA needs the flush"
    );
    // ENOSPC from the store maps to ENOSPC.
    faults.add(Fault {
        op: FaultOp::Write,
        range: DATA_OFFSET + 3 * MIB..DATA_OFFSET + 4 * MIB,
        errno: 28,
    });
    assert_eq!(write(&mut c, 10, 3 * MIB, &[1; 512], 0), ENOSPC);
    assert!(faults.injected() >= 7, "{}", faults.injected());

    // Everything outside the faults works and is intact, on this connection
    // and a new one.
    assert_eq!(read(&mut c, 11, 0, 8192), good);
    let mut d = attach(&server.socket, "disk");
    assert_eq!(read(&mut d, 1, 2 * MIB + 512, 4096), good[512..4608]);
    faults.clear();
    assert_eq!(read(&mut d, 2, 2 * MIB, 8192), good);
    assert_eq!(write(&mut d, 3, 70000, &[7; 4096], FLAG_FUA), 0);
    assert_eq!(read(&mut d, 4, 70000, 4096), vec![7; 4096]);
    drop(c);
    drop(d);
    server.stop().unwrap();
}

// ---------------------------------------------------------------------------
// KMS unreachable, or gone

/// `envol serve VOL` against `endpoint`; returns (stderr, elapsed). It must fail.
fn serve_against(fx: &Fixture, vol: &Vol, endpoint: &str) -> (String, Duration) {
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.envol(&[
        "serve",
        vol.path.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--endpoint",
        endpoint,
        "--profile",
        ADMIN,
    ]);
    let t = Instant::now();
    let out = output_with_timeout(&mut cmd, Duration::from_secs(90));
    let elapsed = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve without a KMS succeeded");
    assert!(!socket.exists(), "a refused serve left its socket");
    assert_one_clean_line("serve without a KMS", &stderr);
    assert!(stderr.contains("cannot unwrap the data key"), "{stderr}");
    eprintln!("serve against {endpoint}: {elapsed:?}: {}", stderr.trim());
    (stderr, elapsed)
}

/// A fake KMS on loopback counting connections; each is handled by `answer`.
fn fake_kms(answer: fn(std::net::TcpStream)) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || answer(s));
        }
    });
    (url, count)
}

#[test]
fn kms_unreachable_at_attach_fails_clearly_in_bounded_time() {
    let fx = Fixture::new();
    let vol = fx.create_volume("lonely.vol", 4 * MIB, 4096);

    // Nothing listening: connection refused, retried with backoff.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (stderr, elapsed) = serve_against(&fx, &vol, &format!("http://127.0.0.1:{port}"));
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        !stderr.contains("DispatchFailure {"),
        "a Debug dump: {stderr}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // A KMS that answers 503 every time: exactly KMS_MAX_ATTEMPTS attempts.
    let (url, count) = fake_kms(|mut s| {
        let mut buf = [0u8; 65536];
        let _ = s.read(&mut buf);
        let _ = s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    });
    let (stderr, elapsed) = serve_against(&fx, &vol, &url);
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    assert_eq!(count.load(Ordering::SeqCst), KMS_MAX_ATTEMPTS as usize);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // A KMS that accepts and never answers: each attempt times out, and the
    // whole attach gives up within the operation timeout (it used to hang).
    let (url, count) = fake_kms(|s| {
        std::thread::sleep(Duration::from_secs(120));
        drop(s);
    });
    let (stderr, elapsed) = serve_against(&fx, &vol, &url);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert_eq!(count.load(Ordering::SeqCst), KMS_MAX_ATTEMPTS as usize);
    assert!(
        elapsed < KMS_OPERATION_TIMEOUT + Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[test]
fn kms_killed_while_attached_volumes_keep_serving() {
    let mut fx = Fixture::new();
    let vol = fx.create_volume("attached.vol", 4 * MIB, 512);
    let other = fx.create_volume("later.vol", 4 * MIB, 512);
    let server = fx.serve(ADMIN, &vol);
    let mut c = attach(&server.socket, &vol.export());
    assert_eq!(write(&mut c, 1, 1000, &pattern(5000, 1), FLAG_FUA), 0);

    fx.kms.kill();

    // The attached volume does not need the KMS any more.
    let data = pattern(70000, 2);
    assert_eq!(write(&mut c, 2, 123_457, &data, 0), 0);
    c.request(CMD_FLUSH, 0, 3, 0, 0, &[]);
    expect(&mut c, 3, 0, "flush");
    let mut d = attach(&server.socket, &vol.export());
    assert_eq!(read(&mut d, 1, 123_457, data.len()), data);
    assert_eq!(read(&mut d, 2, 1000, 5000), pattern(5000, 1));

    // A new attach needs the KMS: a clear refusal, in bounded time.
    let (stderr, elapsed) = serve_against(&fx, &other, &fx.kms.endpoint.clone());
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(elapsed < KMS_OPERATION_TIMEOUT, "{elapsed:?}");
    // And the server is still serving.
    assert_eq!(read(&mut c, 4, 123_457, 100), data[..100]);
    drop(c);
    drop(d);
    server.stop();
}

// ---------------------------------------------------------------------------
// Clients that go away, or never read

#[test]
fn clients_vanishing_mid_request_leave_the_server_serving() {
    let fx = Fixture::new();
    let vol = fx.create_volume("vanish.vol", 8 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let export = vol.export();
    let mut c = attach(&server.socket, &export);
    let base = pattern(MIB as usize, 1);
    assert_eq!(write(&mut c, 1, 0, &base, FLAG_FUA), 0);

    for round in 0..20u64 {
        // A WRITE whose payload stops short: never applied.
        let mut a = attach(&server.socket, &export);
        a.request(CMD_WRITE, 0, 1, 4096, 65536, &[]);
        a.s.write_all(&[0xee; 1000]).unwrap();
        drop(a);
        // Half a request header.
        let mut b = attach(&server.socket, &export);
        b.s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0]).unwrap();
        drop(b);
        // Many requests in flight, replies never read, then gone.
        let mut p = attach(&server.socket, &export);
        for i in 0..32u64 {
            p.request(CMD_READ, 0, i, (i % 8) * MIB, MIB as u32, &[]);
            p.request(
                CMD_WRITE,
                0,
                100 + i,
                2 * MIB + i * 4096,
                4096,
                &[round as u8; 4096],
            );
        }
        p.s.shutdown(std::net::Shutdown::Both).unwrap();
        drop(p);
    }
    // Nothing of the cut-short writes landed; the server still answers.
    assert_eq!(read(&mut c, 2, 0, MIB as usize), base);
    let mut fresh = attach(&server.socket, &export);
    assert_eq!(read(&mut fresh, 1, 4096, 65536), base[4096..69632]);
    drop(c);
    drop(fresh);
    server.stop();
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_client_that_never_reads_replies_cannot_grow_server_memory() {
    const CONNECTIONS: u64 = 2;
    let fx = Fixture::new();
    let vol = fx.create_volume("slow.vol", 64 * MIB, 4096);
    let server: VolumeServer = fx.serve(ADMIN, &vol);
    let export = vol.export();
    // Warm up: one read through the whole path, then the baseline.
    let mut c = attach(&server.socket, &export);
    read(&mut c, 1, 0, 4 * MIB as usize);
    let (base_rss, _) = memory_of(server.pid());

    // Each connection asks for 1 GiB (256 × 4 MiB) and reads nothing.
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let mut p = attach(&server.socket, &export);
            p.s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            std::thread::spawn(move || {
                let mut sent = 0u64;
                for i in 0..256u64 {
                    let mut m = Vec::new();
                    m.extend_from_slice(&0x25609513u32.to_be_bytes());
                    m.extend_from_slice(&0u16.to_be_bytes());
                    m.extend_from_slice(&CMD_READ.to_be_bytes());
                    m.extend_from_slice(&i.to_be_bytes());
                    m.extend_from_slice(&((i % 16) * 4 * MIB).to_be_bytes());
                    m.extend_from_slice(&(4 * MIB as u32).to_be_bytes());
                    if p.s.write_all(&m).is_err() {
                        break; // the server stopped reading: pushed back
                    }
                    sent += 1;
                }
                (p, sent)
            })
        })
        .collect();
    let mut peak = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        peak = peak.max(memory_of(server.pid()).0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, hwm) = memory_of(server.pid());
    let held: Vec<(Raw, u64)> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let sent: Vec<u64> = held.iter().map(|(_, n)| *n).collect();
    let bound = base_rss + CONNECTIONS * (u64::from(IN_FLIGHT_BYTES) + 16 * MIB);
    eprintln!(
        "slow clients: {CONNECTIONS} connections sent {sent:?} × 4 MiB reads unread; server RSS {} MiB at rest, peak {} MiB (VmHWM {} MiB), bound {} MiB",
        base_rss / MIB,
        peak / MIB,
        hwm / MIB,
        bound / MIB
    );
    assert!(peak <= bound, "RSS peak {peak} over the bound {bound}");
    assert!(hwm <= bound, "VmHWM {hwm} over the bound {bound}");

    // The slow clients leave; everyone else is still served.
    drop(held);
    assert_eq!(read(&mut c, 2, 0, 4096), vec![0; 4096]);
    drop(c);
    server.stop();
}
