//! The RBD backend against a real Ceph cluster (scripts/micro-ceph.sh,
//! started by scripts/test.sh): librbd through envol's own FFI, the
//! exclusive lock, take-over and fencing. End-to-end `serve rbd:` tests
//! live with the CLI.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::ceph::{Ceph, TestImage};
use envol::volume::Backend;
use envol::volume::attachment::{AttachMode, AttachmentError};
use envol::volume::rbd::{
    CephOptions, RbdAddress, RbdBackend, RbdError, TakeOver, attached_by, is_fenced,
};

const MIB: u64 = 1 << 20;

/// Tests share one cluster; the one that pauses its OSD takes this for
/// writing, every other test for reading, so no other test sees the pause.
static CLUSTER: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_cluster() -> std::sync::RwLockReadGuard<'static, ()> {
    CLUSTER.read().unwrap_or_else(|e| e.into_inner())
}

/// This test binary re-run as a child for one test (`test`, with `var`
/// set to an image spec), that test's child half. It is killed when the
/// test ends, passed or failed, so it never outlives the test holding an
/// image.
struct ChildTest {
    child: std::process::Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildTest {
    fn spawn(test: &str, var: &str, spec: &str) -> ChildTest {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture"])
            .env(var, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        ChildTest { child, stdout }
    }

    /// Waits for the child's `ready ADDR` line (end of file if it failed)
    /// and returns its client address; `role` names it in the failure.
    fn ready(&mut self, role: &str) -> String {
        let mut line = String::new();
        while !line.starts_with("ready ") {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the {role} child failed before it was ready");
        }
        line["ready ".len()..].trim().to_string()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits (up to 20 s from `since`) for the child to exit by itself,
    /// and returns its status and the rest of its output; `what` names it
    /// in the failure.
    fn exit_by_itself(&mut self, since: Instant, what: &str) -> (ExitStatus, String) {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if since.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("{what} did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (status, rest)
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new 8 MiB image, and a child half ([`ChildTest`]) that opened it and
/// is ready, with its client address (`holder`).
struct OnNewImage {
    img: TestImage,
    ceph: CephOptions,
    addr: RbdAddress,
    child: ChildTest,
    holder: String,
}

/// Creates image `image` and starts test `test`'s child half on it (`var`
/// set to its spec; `role` names the child if it fails before ready).
fn child_on_new_image(image: &str, test: &str, var: &str, role: &str) -> OnNewImage {
    let img = TestImage::new(image);
    let ceph = options(&img.ceph);
    let addr = address(&img);
    drop(RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap());
    let mut child = ChildTest::spawn(test, var, &img.spec());
    let holder = child.ready(role);
    OnNewImage {
        img,
        ceph,
        addr,
        child,
        holder,
    }
}

/// A stopped process (SIGSTOP), continued (SIGCONT) when this is dropped,
/// also when the test fails first.
struct Stopped(String);

impl Stopped {
    /// Stops `pid` now.
    fn stop(pid: String) -> Stopped {
        let stopped = Stopped(pid);
        assert!(
            Command::new("kill")
                .args(["-STOP", &stopped.0])
                .status()
                .unwrap()
                .success()
        );
        stopped
    }

    /// `pid`, which stops itself.
    fn by_itself(pid: String) -> Stopped {
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

fn options(ceph: &Ceph) -> CephOptions {
    CephOptions {
        conf: Some(ceph.conf.clone()),
        ..Default::default()
    }
}

fn address(img: &TestImage) -> RbdAddress {
    RbdAddress::parse(&img.spec()).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn create_open_read_write_flush_round_trip() {
    let _cluster = shared_cluster();
    let img = TestImage::new("roundtrip");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    assert!(!RbdBackend::exists(&ceph, &addr).unwrap());
    let b = RbdBackend::create(&ceph, &addr, 16 * MIB, false).unwrap();
    assert!(RbdBackend::exists(&ceph, &addr).unwrap());
    assert_eq!(b.size().unwrap(), 16 * MIB);
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    let data = pattern(3 * MIB as usize + 12345, 7);
    b.write_at(MIB - 17, &data).unwrap();
    b.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    b.read_at(MIB - 17, &mut back).unwrap();
    assert_eq!(back, data);
    // What `rbd` itself reads is the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    drop(b);
    Ceph::run(img.ceph.rbd(&[
        "export",
        "--no-progress",
        &img.spec(),
        export.to_str().unwrap(),
    ]));
    let exported = std::fs::read(&export).unwrap();
    assert_eq!(exported.len() as u64, 16 * MIB);
    assert_eq!(&exported[(MIB - 17) as usize..][..data.len()], &data[..]);
    // Reopened: still there; the image has the features envol asks for.
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadOnly).unwrap();
    b.read_at(MIB - 17, &mut back).unwrap();
    assert_eq!(back, data);
    let info = Ceph::run(img.ceph.rbd(&["info", &img.spec()]));
    let info = String::from_utf8_lossy(&info.stdout);
    for feature in ["layering", "exclusive-lock", "object-map", "fast-diff"] {
        assert!(info.contains(feature), "{feature} missing: {info}");
    }
    // Beyond the end is an error, not a short read.
    assert!(b.read_at(16 * MIB - 10, &mut [0u8; 20]).is_err());
}

#[test]
fn create_refuses_an_existing_image_unless_forced() {
    let _cluster = shared_cluster();
    let img = TestImage::new("exists");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    drop(RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap());
    let err = RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap_err();
    assert!(matches!(err, RbdError::Exists(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("rbd:{} already exists (--force reuses it)", img.spec())
    );
    let b = RbdBackend::create(&ceph, &addr, 12 * MIB, true).unwrap();
    assert_eq!(b.size().unwrap(), 12 * MIB);
    // Forced reuse of an image another server has attached: refused, naming it.
    let err = RbdBackend::create(&ceph, &addr, 8 * MIB, true).unwrap_err();
    assert!(
        matches!(&err, RbdError::InUse { holders, .. } if *holders == vec![b.client_address().to_string()]),
        "{err:?}"
    );
    assert!(err.to_string().contains(b.client_address()), "{err}");
    assert_eq!(b.size().unwrap(), 12 * MIB, "not resized under its writer");
    drop(b);
    // Missing pool and image: one clear line each.
    let missing = RbdAddress::parse(&format!("{}/no-such-image-here", img.pool)).unwrap();
    let err = RbdBackend::open(&ceph, &missing, AttachMode::ReadWrite).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("rbd:{}/no-such-image-here does not exist", img.pool)
    );
    let err = RbdBackend::open(
        &ceph,
        &RbdAddress::parse("no-such-pool/x").unwrap(),
        AttachMode::ReadOnly,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "Ceph pool \"no-such-pool\" does not exist");
    // A configuration file that is not there: one line naming it.
    let bad = CephOptions {
        conf: Some("/nonexistent/ceph.conf".into()),
        ..Default::default()
    };
    let err = RbdBackend::exists(&bad, &addr).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/ceph.conf") && !err.contains('\n'),
        "{err}"
    );
}

/// Starts `count` writes of 64 KiB through `start_write` before any is
/// waited for, then reads them all back through `start_read`.
#[test]
fn aio_keeps_many_requests_in_flight() {
    let _cluster = shared_cluster();
    let img = TestImage::new("aio");
    let ceph = options(&img.ceph);
    let b = RbdBackend::create(&ceph, &address(&img), 64 * MIB, false).unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    assert!(b.is_asynchronous());
    const COUNT: usize = 64;
    const LEN: usize = 64 * 1024;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let buffers: Vec<Vec<u8>> = (0..COUNT).map(|i| pattern(LEN, i as u8)).collect();
    for (i, buffer) in buffers.into_iter().enumerate() {
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        most_in_flight.fetch_max(now, Ordering::SeqCst);
        let tx = tx.clone();
        let in_flight = in_flight.clone();
        b.start_write(
            (i * LEN) as u64,
            Box::new(buffer),
            Box::new(move |buf, result| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send((i, buf.bytes().len(), result.map_err(|e| e.to_string())));
            }),
        );
    }
    let started_all = in_flight.load(Ordering::SeqCst);
    for _ in 0..COUNT {
        let (i, len, result) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(len, LEN, "write {i} gave back its buffer");
        result.unwrap();
    }
    // A Ceph write takes milliseconds, starting one microseconds: when the
    // last was started most of the others were still running.
    assert!(
        started_all >= COUNT / 2,
        "only {started_all} of {COUNT} writes in flight when the last was started"
    );
    assert!(most_in_flight.load(Ordering::SeqCst) >= COUNT / 2);
    let (ftx, frx) = mpsc::channel();
    b.start_flush(Box::new(move |r| {
        let _ = ftx.send(r.map_err(|e| e.to_string()));
    }));
    frx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    for i in 0..COUNT {
        let tx = tx.clone();
        b.start_read(
            (i * LEN) as u64,
            Box::new(vec![0u8; LEN]),
            Box::new(move |buf, result| {
                let _ = tx.send((
                    i,
                    buf.bytes().to_vec().len(),
                    result.map_err(|e| e.to_string()),
                ));
            }),
        );
    }
    let (btx, brx) = mpsc::channel::<(usize, Vec<u8>)>();
    for i in 0..COUNT {
        let btx = btx.clone();
        b.start_read(
            (i * LEN) as u64,
            Box::new(vec![0u8; LEN]),
            Box::new(move |buf, result| {
                result.unwrap();
                let _ = btx.send((i, buf.bytes().to_vec()));
            }),
        );
    }
    for _ in 0..COUNT {
        let (i, _, result) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        result.unwrap_or_else(|e| panic!("read {i}: {e}"));
    }
    for _ in 0..COUNT {
        let (i, bytes) = brx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(bytes, pattern(LEN, i as u8), "block {i}");
    }
    // An aio error comes back through `done` too: a read past the end.
    let (etx, erx) = mpsc::channel();
    b.start_read(
        64 * MIB - 4096,
        Box::new(vec![0u8; 8192]),
        Box::new(move |_, r| {
            let _ = etx.send(r.is_err());
        }),
    );
    assert!(erx.recv_timeout(Duration::from_secs(30)).unwrap());
}

#[test]
fn punched_ranges_read_zeros_and_extents_follow_writes() {
    let _cluster = shared_cluster();
    let img = TestImage::new("zeros");
    let ceph = options(&img.ceph);
    let b = RbdBackend::create(&ceph, &address(&img), 32 * MIB, false).unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    // A new image is all hole.
    assert!(b.is_hole(0, 32 * MIB).unwrap());
    // 4 KiB inside written data: far below librbd's discard granularity,
    // where a plain discard would be skipped.
    b.write_at(8 * MIB, &vec![0xabu8; 64 * 1024]).unwrap();
    b.punch_hole(8 * MIB + 8192, 4096).unwrap();
    let mut back = vec![0u8; 64 * 1024];
    b.read_at(8 * MIB, &mut back).unwrap();
    assert!(back[..8192].iter().all(|&x| x == 0xab));
    assert!(
        back[8192..12288].iter().all(|&x| x == 0),
        "punched 4 KiB reads zeros"
    );
    assert!(back[12288..].iter().all(|&x| x == 0xab));
    // Extents: the written object (4 MiB objects) is data, the rest holes,
    // and they tile the asked range exactly.
    let extents = b.extents(0, 32 * MIB).unwrap();
    let total: u64 = extents.iter().map(|e| e.len).sum();
    assert_eq!(total, 32 * MIB);
    assert_eq!(extents.first().unwrap().offset, 0);
    let data: Vec<_> = extents.iter().filter(|e| !e.hole).collect();
    assert_eq!(data.len(), 1, "{extents:?}");
    assert!(data[0].offset <= 8 * MIB && data[0].offset + data[0].len >= 8 * MIB + 65536);
    assert!(data[0].len <= 4 * MIB, "{extents:?}");
    assert!(b.is_hole(0, 8 * MIB).unwrap());
    assert!(b.is_hole(12 * MIB, 20 * MIB).unwrap());
    assert!(!b.is_hole(8 * MIB, 4096).unwrap());
    // An unaligned query is clipped to the asked range.
    let extents = b.extents(8 * MIB + 100, 1000).unwrap();
    assert_eq!(extents.len(), 1);
    assert_eq!(
        (extents[0].offset, extents[0].len, extents[0].hole),
        (8 * MIB + 100, 1000, false)
    );
    // Zeroing the whole object deallocates it: a hole again.
    b.punch_hole(8 * MIB, 4 * MIB).unwrap();
    assert!(
        b.is_hole(0, 32 * MIB).unwrap(),
        "{:?}",
        b.extents(0, 32 * MIB).unwrap()
    );
    b.read_at(8 * MIB, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0));
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let _cluster = shared_cluster();
    let img = TestImage::new("twowriters");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    let a = RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap();
    a.lock_attachment(AttachMode::ReadWrite).unwrap();
    let holder = a.client_address().to_string();
    assert_eq!(attached_by(&ceph, &addr).unwrap(), vec![holder.clone()]);
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    assert_ne!(
        b.client_address(),
        holder,
        "each backend is its own Ceph client"
    );
    let started = Instant::now();
    let err = b.lock_attachment(AttachMode::ReadWrite).unwrap_err();
    eprintln!("refused after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let AttachmentError::InUseByClient { holders, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(holders, &vec![holder.clone()]);
    let line = err.to_string();
    assert!(
        line.contains(&holder) && line.contains(&format!("rbd:{}", img.spec())),
        "{line}"
    );
    assert!(!line.contains('\n'));
    // The refused writer cannot write either: librbd asks the holder for the
    // lock, and the holder (managed mode) keeps it.
    a.write_at(4096, &[1u8; 4096]).unwrap();
    // A reader beside the writer is refused too, as for a volume file.
    let r = RbdBackend::open(&ceph, &addr, AttachMode::ReadOnly).unwrap();
    let err = r.lock_attachment(AttachMode::ReadOnly).unwrap_err();
    assert!(err.to_string().contains(&holder), "{err}");
    // A take-over that waits for the holder's death is refused while it lives.
    let err = b.take_over(TakeOver::IfHolderDead).unwrap_err();
    assert!(
        matches!(&err, RbdError::HolderAlive { holder: h, .. } if *h == holder),
        "{err:?}"
    );
    assert!(err.to_string().contains(&holder));
    // The holder still holds it; after it lets go, the next writer gets it.
    assert_eq!(attached_by(&ceph, &addr).unwrap(), vec![holder]);
    drop(a);
    assert!(attached_by(&ceph, &addr).unwrap().is_empty());
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    assert_eq!(
        attached_by(&ceph, &addr).unwrap(),
        vec![b.client_address().to_string()]
    );
}

#[test]
fn a_forced_take_over_fences_the_old_writer() {
    let _cluster = shared_cluster();
    let img = TestImage::new("fence");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    let a = RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap();
    a.lock_attachment(AttachMode::ReadWrite).unwrap();
    let fired = Arc::new(AtomicUsize::new(0));
    let counter = fired.clone();
    a.on_fenced(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    a.write_at(0, &[0x11u8; 4096]).unwrap();
    a.flush().unwrap();
    let old = a.client_address().to_string();

    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    assert_eq!(b.take_over(TakeOver::Force).unwrap(), Some(old.clone()));
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    let blocklist = img.ceph.blocklist();
    let entry = blocklist
        .lines()
        .find(|l| l.contains(&old))
        .unwrap_or_else(|| panic!("the old holder is not blocklisted: {blocklist}"));
    // `ADDRESS EXPIRY` (`2036-11-30T04:00:00.123456+0000`): for years, not
    // the monitors' default hour, which a paused holder could outwait.
    let expires: u64 = entry
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.get(..4))
        .and_then(|y| y.parse().ok())
        .unwrap_or_else(|| panic!("no expiry year in {entry:?}"));
    let this_year = 1970
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952;
    assert!(
        expires >= this_year + 5,
        "the blocklist entry expires too soon: {entry:?}"
    );

    // The old writer's next writes fail with the fenced error, whatever
    // path they take, and nothing of them reaches the image.
    let err = a.write_at(0, &[0x22u8; 4096]).unwrap_err();
    assert!(is_fenced(&err), "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    assert_eq!(fired.load(Ordering::SeqCst), 1, "on_fenced ran once");
    let (tx, rx) = mpsc::channel();
    a.start_write(
        4096,
        Box::new(vec![0x22u8; 4096]),
        Box::new(move |_, r| {
            let _ = tx.send(r.map_err(|e| is_fenced(&e)));
        }),
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), Err(true));
    assert!(a.flush().is_err());
    assert_eq!(fired.load(Ordering::SeqCst), 1, "on_fenced runs only once");
    let late = Arc::new(AtomicUsize::new(0));
    let late_counter = late.clone();
    a.on_fenced(Box::new(move || {
        late_counter.fetch_add(1, Ordering::SeqCst);
    }));
    assert_eq!(
        late.load(Ordering::SeqCst),
        1,
        "a late on_fenced runs at once"
    );

    let mut back = vec![0u8; 8192];
    b.read_at(0, &mut back).unwrap();
    assert!(
        back[..4096].iter().all(|&x| x == 0x11),
        "the old writer's last acknowledged write is there"
    );
    assert!(
        back[4096..].iter().all(|&x| x == 0),
        "nothing the fenced writer sent landed"
    );
    b.write_at(0, &[0x33u8; 4096]).unwrap();
    b.flush().unwrap();
}

/// A child half's backend: `spec` opened read-write and locked.
fn open_locked(spec: &str) -> RbdBackend {
    let ceph = Ceph::from_env();
    let b = RbdBackend::open(
        &options(&ceph),
        &RbdAddress::parse(spec).unwrap(),
        AttachMode::ReadWrite,
    )
    .unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b
}

/// `open_locked`, and the process exits with status 3 (printing
/// "fenced") when the backend is fenced.
fn open_locked_exit_when_fenced(spec: &str) -> RbdBackend {
    let b = open_locked(spec);
    b.on_fenced(Box::new(|| {
        println!("fenced");
        std::process::exit(3);
    }));
    b
}

/// A writer child's loop: writes 0xEE over the first block every 20 ms
/// for `limit` (it is meant to be fenced and exit before then).
fn write_first_block_until_fenced(b: &RbdBackend, limit: Duration) -> ! {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Err(e) = b.write_at(0, &[0xeeu8; 4096]) {
            println!("write failed: {e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never fenced");
}

/// Takes the lock over from a holder that is dead or paused
/// (`TakeOver::IfHolderDead`), retrying while it still counts as alive
/// (its watch not yet expired), for up to 40 s; returns the broken
/// holder. `holder` describes it in the failure.
fn take_over_once_holder_dead(b: &RbdBackend, holder: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match b.take_over(TakeOver::IfHolderDead) {
            Ok(broken) => return broken,
            Err(RbdError::HolderAlive { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "the {holder} holder's watch never expired"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The child half of the next test: holds the lock until killed.
fn hold_lock_until_killed(spec: &str) {
    let b = open_locked(spec);
    // One flushed write, then acknowledged writes that are never flushed
    // (after a first flush a writeback cache would be free to hold them).
    b.write_at(0, &[0x5au8; 4096]).unwrap();
    b.flush().unwrap();
    b.write_at(4096, &[0xa5u8; 4096]).unwrap();
    let (tx, rx) = mpsc::channel();
    b.start_write(
        8192,
        Box::new(vec![0x3cu8; 4096]),
        Box::new(move |_, r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap());
    println!("ready {}", b.client_address());
    std::thread::sleep(Duration::from_secs(120));
    panic!("not killed in time");
}

#[test]
fn take_over_if_holder_dead_waits_for_its_watch_to_expire() {
    let _cluster = shared_cluster();
    if let Ok(spec) = std::env::var("ENVOL_TEST_RBD_HOLDER") {
        return hold_lock_until_killed(&spec);
    }
    let OnNewImage {
        img,
        ceph,
        addr,
        mut child,
        holder,
    } = child_on_new_image(
        "deadholder",
        "take_over_if_holder_dead_waits_for_its_watch_to_expire",
        "ENVOL_TEST_RBD_HOLDER",
        "holder",
    );
    assert_eq!(attached_by(&ceph, &addr).unwrap(), vec![holder.clone()]);
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    assert!(matches!(
        b.take_over(TakeOver::IfHolderDead),
        Err(RbdError::HolderAlive { .. })
    ));
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    let killed = Instant::now();
    // Dead, but its lock stays until someone takes over: a plain attach is
    // still refused, naming it.
    let err = b.lock_attachment(AttachMode::ReadWrite).unwrap_err();
    assert!(err.to_string().contains(&holder), "{err}");
    // Once Ceph's watch timeout (5 s on the test cluster) has passed, the
    // take-over breaks the lock and blocklists the dead holder.
    let broken = take_over_once_holder_dead(&b, "dead");
    eprintln!("take-over after {:?}", killed.elapsed());
    assert_eq!(broken, Some(holder.clone()));
    assert!(img.ceph.blocklist().contains(&holder));
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    // Every write the dead holder had acknowledged is in the image, flushed
    // or not: librbd's default cache policy (writearound) acknowledges a
    // write once the OSD has it.
    let mut back = vec![0u8; 12288];
    b.read_at(0, &mut back).unwrap();
    assert!(back[..4096].iter().all(|&x| x == 0x5a));
    assert!(
        back[4096..8192].iter().all(|&x| x == 0xa5),
        "unflushed sync write lost"
    );
    assert!(
        back[8192..].iter().all(|&x| x == 0x3c),
        "unflushed aio write lost"
    );
    b.write_at(0, &[5u8; 4096]).unwrap();
}

/// Where librbd is absent, an `rbd:` volume fails with one line. Run in a
/// child whose mount namespace hides librbd and librados (`/dev/null`
/// bind-mounted over them), so the loader really cannot open them.
#[test]
fn absent_librbd_is_one_line() {
    let ceph = CephOptions::default();
    let addr = RbdAddress::parse("rbd/anything").unwrap();
    if std::env::var_os("ENVOL_TEST_HIDDEN_LIBRBD").is_some() {
        let err = RbdBackend::exists(&ceph, &addr).unwrap_err();
        assert!(matches!(err, RbdError::NotInstalled));
        println!("child: {err}");
        return;
    }
    let mut hide = String::new();
    for lib in ["librbd.so.1", "librados.so.2"] {
        // ldconfig lives in /sbin, which a non-login PATH may lack.
        let ldconfig = if std::path::Path::new("/sbin/ldconfig").exists() {
            "/sbin/ldconfig"
        } else {
            "ldconfig"
        };
        let out = Command::new(ldconfig).arg("-p").output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        let path = listing
            .lines()
            .find(|l| l.trim_start().starts_with(lib))
            .and_then(|l| l.split("=> ").nth(1))
            .unwrap_or_else(|| panic!("{lib} not in ldconfig -p"))
            .trim()
            .to_string();
        let real = std::fs::canonicalize(&path).unwrap();
        hide.push_str(&format!("mount --bind /dev/null {} && ", real.display()));
    }
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &format!("{hide}exec \"$0\" \"$@\"")])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "absent_librbd_is_one_line", "--nocapture"])
        .env("ENVOL_TEST_HIDDEN_LIBRBD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("child: librbd is not installed: apt-get install librbd1\n"),
        "{stdout}"
    );
    // Here, with the libraries present, the same call reaches Ceph.
    assert!(envol::volume::rbd::librbd_installed());
}

/// A fenced writer that gets no request learns it anyway (its server must
/// exit instead of lingering): `on_fenced` runs within seconds.
#[test]
fn an_idle_fenced_writer_is_told() {
    let _cluster = shared_cluster();
    let img = TestImage::new("idlefence");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    let a = RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap();
    a.lock_attachment(AttachMode::ReadWrite).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    a.on_fenced(Box::new(move || {
        let _ = tx.lock().unwrap().send(Instant::now());
    }));
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    let broken_at = Instant::now();
    assert!(b.take_over(TakeOver::Force).unwrap().is_some());
    let told_at = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the idle fenced writer was never told");
    eprintln!("told after {:?}", told_at - broken_at);
    assert!(
        told_at - broken_at < Duration::from_secs(10),
        "told too late: {:?}",
        told_at - broken_at
    );
    assert!(a.is_fenced());
    assert!(rx.try_recv().is_err(), "told once");
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
}

/// An OSD that stops answering makes requests fail with ETIMEDOUT after
/// the configured deadline instead of hanging; once it answers again the
/// same backend serves on.
#[test]
fn a_stalled_osd_fails_requests_within_the_deadline() {
    let _cluster = CLUSTER.write().unwrap_or_else(|e| e.into_inner());
    let img = TestImage::new("stall");
    let ceph = CephOptions {
        op_timeout: Some(Duration::from_secs(2)),
        ..options(&img.ceph)
    };
    let b = RbdBackend::create(&ceph, &address(&img), 8 * MIB, false).unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b.write_at(0, &[7u8; 4096]).unwrap();
    let resume = Stopped::stop(img.ceph.osd_pid().to_string());
    let started = Instant::now();
    let err = b.write_at(8192, &[8u8; 4096]).unwrap_err();
    let waited = started.elapsed();
    drop(resume);
    eprintln!("failed after {waited:?}: {err}");
    assert_eq!(err.raw_os_error(), Some(110), "ETIMEDOUT: {err}");
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Resumed: the same backend reads and writes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match b.write_at(8192, &[9u8; 4096]) {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never resumed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let mut back = vec![0u8; 12288];
    b.read_at(0, &mut back).unwrap();
    assert!(back[..4096].iter().all(|&x| x == 7));
    assert!(back[8192..].iter().all(|&x| x == 9));
}

/// No monitor answers: connecting fails after the operation deadline with
/// one line, instead of librados's 300 s mount timeout.
#[test]
fn an_unreachable_cluster_fails_within_the_deadline() {
    let _cluster = shared_cluster();
    let ceph = Ceph::from_env();
    let tmp = tempfile::tempdir().unwrap();
    // The test cluster's configuration and keyring, with monitors where
    // nothing listens.
    let conf = std::fs::read_to_string(&ceph.conf).unwrap();
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("mon host") {
                "mon host = [v2:127.0.0.1:9,v1:127.0.0.1:9]".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let path = tmp.path().join("ceph.conf");
    std::fs::write(&path, conf).unwrap();
    let options = CephOptions {
        conf: Some(path.clone()),
        op_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let started = Instant::now();
    let err = RbdBackend::exists(&options, &RbdAddress::parse("rbd/x").unwrap()).unwrap_err();
    let waited = started.elapsed();
    let line = err.to_string();
    eprintln!("after {waited:?}: {line}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(
        line.starts_with("connecting to Ceph as client.admin"),
        "{line}"
    );
    assert!(
        line.contains(path.to_str().unwrap()) && !line.contains('\n'),
        "{line}"
    );
}

/// The child half of the next test: holds the lock and keeps writing
/// 0xEE over the first block; exits with status 3 when fenced.
fn write_until_fenced(spec: &str) {
    let b = open_locked_exit_when_fenced(spec);
    println!("ready {}", b.client_address());
    write_first_block_until_fenced(&b, Duration::from_secs(120));
}

/// A holder paused (SIGSTOP) long enough for its watch to expire is taken
/// over without --force; when it resumes, its writes are refused, it is
/// told (and exits), and nothing it wrote after the break is in the image.
#[test]
fn a_paused_holder_is_fenced_when_it_resumes() {
    let _cluster = shared_cluster();
    if let Ok(spec) = std::env::var("ENVOL_TEST_RBD_WRITER") {
        return write_until_fenced(&spec);
    }
    let OnNewImage {
        img: _img,
        ceph,
        addr,
        mut child,
        holder,
    } = child_on_new_image(
        "paused",
        "a_paused_holder_is_fenced_when_it_resumes",
        "ENVOL_TEST_RBD_WRITER",
        "writer",
    );
    let pid = child.pid();
    let resume = Stopped::stop(pid);
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    let broken = take_over_once_holder_dead(&b, "paused");
    assert_eq!(broken, Some(holder));
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b.write_at(0, &[0x77u8; 4096]).unwrap();
    b.flush().unwrap();
    drop(resume);
    let resumed = Instant::now();
    // The child is told and exits by itself.
    let (status, rest) = child.exit_by_itself(resumed, "the fenced writer");
    eprintln!(
        "exited {:?} after {:?}: {rest:?}",
        status,
        resumed.elapsed()
    );
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("fenced"), "{rest}");
    let mut back = vec![0u8; 4096];
    b.read_at(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&x| x == 0x77),
        "a write of the fenced holder landed"
    );
}

/// librados writes nothing to stderr, whatever the configuration file
/// says: a client id without a key fails as one line of envol's own. Run
/// in a child, whose stderr is librados's only outlet, with a ceph.conf
/// that leaves librados's own logging at its defaults.
#[test]
fn a_failed_connect_prints_nothing_from_ceph() {
    if let Ok(conf) = std::env::var("ENVOL_TEST_RBD_LOUD_CONF") {
        let options = CephOptions {
            conf: Some(conf.into()),
            id: Some("nosuch".into()),
            op_timeout: Some(Duration::from_secs(3)),
        };
        let err = RbdBackend::exists(&options, &RbdAddress::parse("rbd/x").unwrap()).unwrap_err();
        println!("child: {err}");
        return;
    }
    let ceph = Ceph::from_env();
    let dir = tempfile::tempdir().unwrap();
    let conf = std::fs::read_to_string(&ceph.conf).unwrap();
    let loud: String = conf
        .lines()
        .filter(|l| !l.contains("to stderr") && !l.trim_start().starts_with("log file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let loud_conf = dir.path().join("ceph.conf");
    std::fs::write(&loud_conf, loud).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_failed_connect_prints_nothing_from_ceph",
            "--nocapture",
        ])
        .env("ENVOL_TEST_RBD_LOUD_CONF", &loud_conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}{stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("child: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("child: connecting to Ceph as client.nosuch"),
        "{stdout}"
    );
    assert_eq!(stderr, "", "librados wrote to stderr");
}

/// `create` hands back the image attached read-write: it holds the lock
/// (no other server can take the image while its superblocks are
/// written), and attaching again is a no-op.
#[test]
fn create_returns_a_locked_backend() {
    let _cluster = shared_cluster();
    let img = TestImage::new("createlocked");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    let a = RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap();
    assert_eq!(
        attached_by(&ceph, &addr).unwrap(),
        vec![a.client_address().to_string()],
        "created without the lock"
    );
    a.lock_attachment(AttachMode::ReadWrite).unwrap();
    a.write_at(0, &[9u8; 4096]).unwrap();
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    let err = b.lock_attachment(AttachMode::ReadWrite).unwrap_err();
    assert!(err.to_string().contains(a.client_address()), "{err}");
}

/// An image without exclusive-lock cannot be attached read-write (one
/// line naming the fix); one made by `rbd import` has it and can.
#[test]
fn an_image_without_exclusive_lock_is_refused_read_write() {
    let _cluster = shared_cluster();
    let img = TestImage::new("nolock");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    Ceph::run(img.ceph.rbd(&[
        "create",
        "--size",
        "8M",
        "--image-feature",
        "layering",
        &img.spec(),
    ]));
    let a = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    let line = a
        .lock_attachment(AttachMode::ReadWrite)
        .unwrap_err()
        .to_string();
    assert!(
        line.contains(&format!("rbd feature enable {} exclusive-lock", img.spec())),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
    drop(a);

    let imported = TestImage::new("imported");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("volume");
    std::fs::write(&file, pattern(2 * MIB as usize, 3)).unwrap();
    Ceph::run(img.ceph.rbd(&[
        "import",
        "--no-progress",
        file.to_str().unwrap(),
        &imported.spec(),
    ]));
    let b = RbdBackend::open(&ceph, &address(&imported), AttachMode::ReadWrite).unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    let mut back = vec![0u8; 4096];
    b.read_at(MIB, &mut back).unwrap();
    assert_eq!(back, pattern(2 * MIB as usize, 3)[MIB as usize..][..4096]);
}

/// Dropping the last handle of a backend inside one of its own
/// completions (on librbd's callback thread) closes the image without
/// hanging: the lock is released and the callback returns.
#[test]
fn dropping_the_backend_inside_its_completion_does_not_hang() {
    let _cluster = shared_cluster();
    let img = TestImage::new("dropincallback");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    let a = Arc::new(RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap());
    let (tx, rx) = mpsc::channel();
    let (go, wait) = mpsc::channel::<()>();
    let owned = a.clone();
    a.start_write(
        0,
        Box::new(vec![1u8; 4096]),
        Box::new(move |_, r| {
            // Until the test has dropped its handle, so that this drop is
            // the last one.
            let _ = wait.recv_timeout(Duration::from_secs(20));
            drop(owned);
            let _ = tx.send(r.is_ok());
        }),
    );
    drop(a);
    go.send(()).unwrap();
    assert!(
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the completion never returned"),
        "the write failed"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !attached_by(&ceph, &addr).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the image was never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child half of the next test: holds the lock, writes, stops itself
/// (SIGSTOP, with no write in flight), and when resumed keeps writing
/// 0xEE over the first block; exits with status 3 when fenced.
fn write_stop_write(spec: &str) {
    let b = open_locked_exit_when_fenced(spec);
    b.write_at(0, &[0xeeu8; 4096]).unwrap();
    b.flush().unwrap();
    println!("ready {}", b.client_address());
    let me = std::process::id().to_string();
    Command::new("kill").args(["-STOP", &me]).status().unwrap();
    write_first_block_until_fenced(&b, Duration::from_secs(60));
}

/// A holder paused for longer than its last confirmation stays fresh, whose
/// lock was broken *without* blocklisting it (as after a blocklist entry
/// expired), writes nothing when it resumes: its writes wait for an OSD
/// to say who holds the lock, and it is fenced. (A write it had already
/// handed to librbd when it was paused is not covered: only the
/// blocklist stops that one, which is why its entry must outlive it.)
#[test]
fn a_paused_holder_whose_blocklist_lapsed_writes_nothing() {
    let _cluster = shared_cluster();
    if let Ok(spec) = std::env::var("ENVOL_TEST_RBD_WRITER") {
        return write_stop_write(&spec);
    }
    let OnNewImage {
        img,
        ceph,
        addr,
        mut child,
        holder,
    } = child_on_new_image(
        "lapsed",
        "a_paused_holder_whose_blocklist_lapsed_writes_nothing",
        "ENVOL_TEST_RBD_WRITER",
        "writer",
    );
    let pid = child.pid();
    let resume = Stopped::by_itself(pid.clone());
    // Wait until it has stopped itself (state T in /proc/PID/stat).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        if state == Some("T") {
            break;
        }
        assert!(Instant::now() < deadline, "the child never stopped: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Instant::now();
    // Break the lock as `rbd lock rm` does, but leave the holder off the
    // blocklist.
    let out = Ceph::run(
        img.ceph
            .rbd(&["lock", "ls", "--format", "json", &img.spec()]),
    );
    let locks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lock = &locks[0];
    assert_eq!(lock["address"].as_str(), Some(holder.as_str()), "{locks}");
    Ceph::run(img.ceph.rbd(&[
        "--rbd_blocklist_on_break_lock=false",
        "lock",
        "rm",
        &img.spec(),
        lock["id"].as_str().unwrap(),
        lock["locker"].as_str().unwrap(),
    ]));
    assert!(!img.ceph.blocklist().contains(&holder));
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b.write_at(0, &[0x77u8; 4096]).unwrap();
    b.flush().unwrap();
    // Paused for longer than a confirmation stays fresh (5 s).
    std::thread::sleep(Duration::from_secs(7).saturating_sub(stopped.elapsed()));
    drop(resume);
    let resumed = Instant::now();
    let (status, rest) = child.exit_by_itself(resumed, "the lock-less writer");
    eprintln!("exited {status:?} after {:?}: {rest:?}", resumed.elapsed());
    assert_eq!(status.code(), Some(3), "{rest}");
    let mut back = vec![0u8; 4096];
    b.read_at(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&x| x == 0x77),
        "a write of the lock-less holder landed"
    );
}
