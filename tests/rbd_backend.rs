//! The RBD backend against a real Ceph cluster (scripts/micro-ceph.sh,
//! started by scripts/test.sh): librbd through envol's own FFI, the
//! exclusive lock, take-over and fencing. End-to-end `serve rbd:` tests
//! live with the CLI.

mod common;

use std::process::{Command, Stdio};
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

/// A child process that is killed when the test ends, passed or failed, so
/// it never outlives the test holding an image.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    assert!(
        img.ceph.blocklist().contains(&old),
        "the old holder is blocklisted"
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

/// The child half of the next test: holds the lock until killed.
fn hold_lock_until_killed(spec: &str) {
    let ceph = Ceph::from_env();
    let b = RbdBackend::open(
        &options(&ceph),
        &RbdAddress::parse(spec).unwrap(),
        AttachMode::ReadWrite,
    )
    .unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
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
    let img = TestImage::new("deadholder");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    drop(RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap());
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "take_over_if_holder_dead_waits_for_its_watch_to_expire",
                "--nocapture",
            ])
            .env("ENVOL_TEST_RBD_HOLDER", img.spec())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Its "ready" line, or end of file if it failed.
    let mut ready = String::new();
    while !ready.starts_with("ready ") {
        ready.clear();
        let n = std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.0.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert!(n > 0, "the holder child failed before it was ready");
    }
    let holder = ready["ready ".len()..].trim().to_string();
    assert_eq!(attached_by(&ceph, &addr).unwrap(), vec![holder.clone()]);
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    assert!(matches!(
        b.take_over(TakeOver::IfHolderDead),
        Err(RbdError::HolderAlive { .. })
    ));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    // Dead, but its lock stays until someone takes over: a plain attach is
    // still refused, naming it.
    let err = b.lock_attachment(AttachMode::ReadWrite).unwrap_err();
    assert!(err.to_string().contains(&holder), "{err}");
    // Once Ceph's watch timeout (5 s on the test cluster) has passed, the
    // take-over breaks the lock and blocklists the dead holder.
    let deadline = Instant::now() + Duration::from_secs(40);
    let broken = loop {
        match b.take_over(TakeOver::IfHolderDead) {
            Ok(broken) => break broken,
            Err(RbdError::HolderAlive { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "the dead holder's watch never expired"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
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
    let osd = img.ceph.osd_pid().to_string();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    assert!(
        Command::new("kill")
            .args(["-STOP", &osd])
            .status()
            .unwrap()
            .success()
    );
    let resume = Resume(osd);
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
    let ceph = Ceph::from_env();
    let b = RbdBackend::open(
        &options(&ceph),
        &RbdAddress::parse(spec).unwrap(),
        AttachMode::ReadWrite,
    )
    .unwrap();
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b.on_fenced(Box::new(|| {
        println!("fenced");
        std::process::exit(3);
    }));
    println!("ready {}", b.client_address());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Err(e) = b.write_at(0, &[0xeeu8; 4096]) {
            println!("write failed: {e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never fenced");
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
    let img = TestImage::new("paused");
    let ceph = options(&img.ceph);
    let addr = address(&img);
    drop(RbdBackend::create(&ceph, &addr, 8 * MIB, false).unwrap());
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_paused_holder_is_fenced_when_it_resumes",
                "--nocapture",
            ])
            .env("ENVOL_TEST_RBD_WRITER", img.spec())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("ready ") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "the writer child failed before it was ready");
    }
    let holder = line["ready ".len()..].trim().to_string();
    let pid = child.0.id().to_string();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let resume = Resume(pid.clone());
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let b = RbdBackend::open(&ceph, &addr, AttachMode::ReadWrite).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let broken = loop {
        match b.take_over(TakeOver::IfHolderDead) {
            Ok(broken) => break broken,
            Err(RbdError::HolderAlive { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "the paused holder's watch never expired"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(broken, Some(holder));
    b.lock_attachment(AttachMode::ReadWrite).unwrap();
    b.write_at(0, &[0x77u8; 4096]).unwrap();
    b.flush().unwrap();
    drop(resume);
    let resumed = Instant::now();
    // The child is told and exits by itself.
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if resumed.elapsed() > Duration::from_secs(20) {
            let _ = child.0.kill();
            panic!("the fenced writer did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
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
