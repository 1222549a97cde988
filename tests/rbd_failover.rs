//! Failover of an `rbd:` volume between two real `envol serve` processes
//! (issue 13, "one writer, fenced"), and Ceph going away under a server.
//!
//! The property: a client that reconnects to the server that took over
//! finds every write it saw acknowledged — by either server — and nothing
//! the old server does after the break reaches the image. Server A serves;
//! a raw NBD client writes (FUA and FLUSH mixed in) and records what was
//! acknowledged, then leaves more writes in flight; A is stopped (SIGSTOP)
//! or killed (SIGKILL); B starts with `--take-over --force`, or plain
//! `--take-over` once Ceph sees A's watch expire. The client reconnects to
//! B and reads everything. A stopped A also got *fenced* writes — sent after
//! it was stopped, so it can only act on them after the break — and is then
//! resumed: none of them may be acknowledged or reach the image (B reads the
//! same bytes before and after A resumed), and A must exit with one clear
//! line. B then serves the next cycle as "A".
//!
//! "Acknowledged" means any success reply, not only FUA or flushed
//! writes: with librbd's client cache on (Ceph 16's default, policy
//! `writearound`, which completes a write once it is dispatched, before an
//! OSD has it) the cycle test fails: writes acknowledged but not yet at an
//! OSD are lost at the break, and a resumed fenced server acknowledges
//! writes. The backend must run librbd with its cache off for the promise
//! the README makes.
//!
//! A write in flight when A stopped may or may not have landed (NBD promises
//! nothing for it); each write is one 4 KiB cipher sector in one RADOS
//! object, which lands whole or not at all, so a slot holds its acknowledged
//! bytes or its in-flight bytes, nothing else.
//!
//! The Ceph-outage test kills the OSD of a private cluster (other tests of
//! this binary share the run's cluster) under a server, expects EIO within
//! the backend's operation timeout, restarts the OSD and expects the same
//! connection to be served again.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use common::ceph::{Ceph, TestImage};
use common::raw::{CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_FUA, Raw};
use common::volume::{
    ADMIN, Drained, Fixture, KEY_ALIAS, MIB, Vol, run_ok, spawn_drained, tagged_slot,
};

/// One slot is one 4 KiB cipher sector: a write of it is one RADOS write.
const SLOT: usize = 4096;
const SLOTS: usize = 256;
const DATA: usize = SLOT * SLOTS;
const VOLUME_SIZE: u64 = 4 * MIB;
/// Writes in flight at once while the server is healthy.
const QUEUE_DEPTH: usize = 16;
/// Acknowledged writes per cycle before the server is stopped or killed.
const WRITES_PER_CYCLE: usize = 96;
/// Writes left unanswered when the server is stopped or killed.
const IN_FLIGHT_AT_BREAK: usize = 8;
/// Writes sent to a stopped server: it can act on them only after the break.
const FENCED_WRITES: usize = 8;
/// Marks the tag of a fenced write (never acknowledged, never on the image).
const FENCED: u64 = 1 << 63;

/// How long a server may take to come up, or a refused one to exit.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long plain `--take-over` may wait for a stopped or killed holder's
/// watch to expire (scripts/micro-ceph.sh sets 5 s).
const WATCH_EXPIRY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a resumed, fenced server may take to give up and exit.
const FENCED_EXIT_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- volume

/// The `--ceph-conf` argument for `ceph`'s cluster.
fn conf(ceph: &Ceph) -> &str {
    ceph.conf.to_str().expect("a UTF-8 ceph.conf path")
}

/// `envol volume create rbd:POOL/IMAGE` (a fresh image of `ceph`, removed
/// when the returned guard drops) as myadmin, naming the cluster with
/// `--ceph-conf` (the outage test's cluster is not `CEPH_CONF`'s).
fn create_rbd_volume(fx: &Fixture, ceph: &Ceph, prefix: &str) -> (Vol, TestImage) {
    let (pool, image) = ceph.unique_image(prefix);
    let guard = TestImage {
        ceph: ceph.clone(),
        pool: pool.clone(),
        image: image.clone(),
    };
    let address = format!("rbd:{pool}/{image}");
    let mut cmd = fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            &address,
            "--size",
            &VOLUME_SIZE.to_string(),
            "--key",
            KEY_ALIAS,
            "--ceph-conf",
            conf(ceph),
        ],
    );
    let out = run_ok(&mut cmd);
    let vol = Vol {
        uuid: common::volume::parse_uuid(&out),
        path: PathBuf::from(address),
        size: VOLUME_SIZE,
        sector_size: SLOT as u32,
    };
    (vol, guard)
}

// ----------------------------------------------------------------- server

/// A running `envol serve` of one `rbd:` volume as export `vol`. Its own
/// type rather than `common::volume::VolumeServer` because these tests need
/// what that one hides: a refused start as a value, and the exit status of a
/// server that was stopped, fenced and resumed.
struct Server {
    child: Child,
    socket: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread draining stderr: done once the process has exited, so
    /// joining it gives everything the process said, its last line included.
    stderr_drain: Option<std::thread::JoinHandle<()>>,
    /// When it printed its export URI (ready to serve).
    ready_at: Instant,
}

impl Server {
    /// Starts `envol serve rbd:...=vol --socket S EXTRA...`; `Err(stderr)`
    /// if it exits before announcing its export.
    fn start(fx: &Fixture, ceph: &Ceph, vol: &Vol, extra: &[&str]) -> Result<Server, String> {
        let socket = fx.fresh_socket_path();
        let mut args = vec!["--ceph-conf", conf(ceph)];
        args.extend_from_slice(extra);
        let mut cmd = fx.serve_command(ADMIN, &[(vol, Some("vol"))], &socket, &args);
        let Drained {
            mut child,
            stderr,
            stderr_drain,
            lines: rx,
        } = spawn_drained(&mut cmd);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("nbd+unix://") => {
                    return Ok(Server {
                        child,
                        socket,
                        stderr,
                        stderr_drain: Some(stderr_drain),
                        ready_at: Instant::now(),
                    });
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: it exited (or is about to).
                    let status = wait_exit(&mut child, START_TIMEOUT);
                    let _ = stderr_drain.join();
                    let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
                    assert!(
                        !status.success(),
                        "serve exited 0 without serving; stderr:\n{err}"
                    );
                    return Err(err);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{cmd:?} neither served nor exited within {START_TIMEOUT:?}; stderr:\n{}",
                        String::from_utf8_lossy(&stderr.lock().unwrap())
                    );
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits for the server to exit on its own; its status and everything
    /// it wrote on stderr.
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_exit(&mut self.child, timeout);
        if let Some(drain) = self.stderr_drain.take() {
            let _ = drain.join();
        }
        (status, self.stderr())
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }

    /// SIGTERM: must finish, flush and exit 0.
    fn stop(mut self) {
        self.signal("-TERM");
        let (status, err) = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "serve exited with {status} after SIGTERM; stderr:\n{err}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every thread of `pid` is in the stopped state (`T`).
fn wait_all_threads_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
        let all_stopped = tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
            })
        });
        if all_stopped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop within 10 s of SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The last non-empty line of `stderr`, after checking it holds no panic or
/// backtrace.
fn last_line(stderr: &str) -> &str {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(bad), "stderr has {bad:?}:\n{stderr}");
    }
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

// ----------------------------------------------------------------- client

/// The bytes a write of `tag` puts in a slot; tag 0 is a new volume's zeros.
fn slot_bytes(tag: u64) -> Vec<u8> {
    tagged_slot(tag, SLOT)
}

/// What the client knows about the image.
#[derive(Default)]
struct Ledger {
    /// Per slot: the last acknowledged tag.
    acked: Vec<u64>,
    /// Per slot: a write sent and not (yet) acknowledged.
    in_flight: Vec<Option<u64>>,
    acked_writes: u64,
    fua_writes: u64,
    flushes: u64,
    fenced_sent: u64,
    /// Writes in flight at a break that landed (found on the image) anyway.
    landed_unacked: u64,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            acked: vec![0; SLOTS],
            in_flight: vec![None; SLOTS],
            ..Ledger::default()
        }
    }

    /// Checks an image read (`data`) against what was acknowledged: each
    /// slot holds its acknowledged bytes or those of its write in flight,
    /// never a fenced write's.
    fn check(&self, data: &[u8], when: &str) {
        assert_eq!(data.len(), DATA);
        for slot in 0..SLOTS {
            let got = &data[slot * SLOT..(slot + 1) * SLOT];
            if got == slot_bytes(self.acked[slot]).as_slice() {
                continue;
            }
            match self.in_flight[slot] {
                Some(tag) if tag & FENCED != 0 && got == slot_bytes(tag).as_slice() => panic!(
                    "{when}: slot {slot} holds fenced write {tag:#x}, sent to the old server \
                     after it was stopped: it reached the image after the break"
                ),
                Some(tag) if got == slot_bytes(tag).as_slice() => {}
                other => panic!(
                    "{when}: slot {slot} lost acknowledged write {:#x} (in flight: {other:x?}); \
                     first bytes {:02x?}",
                    self.acked[slot],
                    &got[..16]
                ),
            }
        }
    }

    /// After a check: writes in flight at the break that are on the image
    /// count from now on; the others (and every fenced one) are gone.
    fn settle(&mut self, data: &[u8]) {
        for slot in 0..SLOTS {
            if let Some(tag) = self.in_flight[slot].take()
                && data[slot * SLOT..(slot + 1) * SLOT] == slot_bytes(tag)[..]
            {
                assert_eq!(tag & FENCED, 0);
                self.acked[slot] = tag;
                self.landed_unacked += 1;
            }
        }
    }
}

/// One NBD connection speaking the raw protocol, so the test sees exactly
/// which request was answered how (and none of a library's retries).
struct Client {
    s: UnixStream,
    cookie: u64,
    /// cookie → the (slot, tag) of a write, or None for a FLUSH.
    pending: HashMap<u64, Option<(usize, u64)>>,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let mut raw = Raw::connect(UnixStream::connect(socket).expect("connect"), 0b11);
        raw.go("vol", &[]);
        raw.s
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client {
            s: raw.s,
            cookie: 0,
            pending: HashMap::new(),
        }
    }

    fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&0x25609513u32.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&self.cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        // A stopped server's socket buffer takes a few fenced writes; a dead
        // one's refuses them, which is fine: they were never acknowledged.
        let _ = self.s.write_all(&m);
        self.cookie
    }

    /// One simple reply (cookie, error), or None once the server is gone
    /// (EOF, or ECONNRESET when it closed with requests unread).
    fn reply(&mut self) -> Option<(u64, u32)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x67446698);
        Some((
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
        ))
    }

    /// Sends one write of a fresh tag to a slot with nothing in flight.
    fn send_write(&mut self, ledger: &mut Ledger, rng: &mut StdRng, fenced: bool) {
        let slot = loop {
            let s = rng.gen_range(0..SLOTS);
            if ledger.in_flight[s].is_none() {
                break s;
            }
        };
        let fua = rng.gen_bool(0.3);
        // Never 0 (a new volume's zeros), bit 0 = FUA, bit 63 = fenced.
        let random = rng.r#gen::<u64>() >> 3 | 1 << 60;
        let tag = random << 1 | u64::from(fua) | if fenced { FENCED } else { 0 };
        ledger.in_flight[slot] = Some(tag);
        let flags = if fua { FLAG_FUA } else { 0 };
        let cookie = self.send_slot_write(slot, tag, flags);
        self.pending.insert(cookie, Some((slot, tag)));
    }

    /// Records one reply from a server that may have been fenced.
    fn record(&mut self, ledger: &mut Ledger, cookie: u64, error: u32) {
        let what = self
            .pending
            .remove(&cookie)
            .expect("reply to an unknown cookie");
        match what {
            Some((slot, tag)) if error == 0 => {
                assert_eq!(
                    tag & FENCED,
                    0,
                    "fenced write {tag:#x} (sent after the server was stopped and taken over) \
                     was acknowledged"
                );
                ledger.acked[slot] = tag;
                ledger.in_flight[slot] = None;
                ledger.acked_writes += 1;
                ledger.fua_writes += tag & 1;
            }
            Some(_) => {} // refused: stays "in flight" (landed or not)
            None if error == 0 => ledger.flushes += 1,
            None => {}
        }
    }

    /// `n` acknowledged writes (QD16, some FUA, a FLUSH every ~12) to a
    /// healthy server: every reply must be a success.
    fn write_acknowledged(&mut self, ledger: &mut Ledger, rng: &mut StdRng, n: usize) {
        let mut sent = 0;
        while sent < n || !self.pending.is_empty() {
            while sent < n && self.pending.len() < QUEUE_DEPTH {
                if rng.gen_ratio(1, 12) {
                    let cookie = self.send(CMD_FLUSH, 0, 0, 0, &[]);
                    self.pending.insert(cookie, None);
                } else {
                    self.send_write(ledger, rng, false);
                    sent += 1;
                }
            }
            let (cookie, error) = self.reply().expect("server closed the connection");
            assert_eq!(error, 0, "request {cookie} failed with errno {error}");
            self.record(ledger, cookie, error);
        }
    }

    /// Reads replies until the server is gone (EOF or reset), within
    /// `deadline`; returns how many arrived.
    fn drain(&mut self, ledger: &mut Ledger, deadline: Duration) -> usize {
        self.s.set_read_timeout(Some(deadline)).unwrap();
        let mut n = 0;
        while let Some((cookie, error)) = self.reply() {
            self.record(ledger, cookie, error);
            n += 1;
        }
        n
    }

    /// Reads the whole data area.
    fn read_all(&mut self) -> Vec<u8> {
        let cookie = self.send(CMD_READ, 0, 0, DATA as u32, &[]);
        let (c, error) = self.reply().expect("read reply");
        assert_eq!((c, error), (cookie, 0), "READ of the whole volume failed");
        let mut data = vec![0; DATA];
        self.s.read_exact(&mut data).expect("read data");
        data
    }
}

// --------------------------------------------------------------- failover

#[derive(Debug, Clone, Copy, PartialEq)]
enum Break {
    /// SIGSTOP; B `--take-over --force`; then SIGCONT A.
    StopForce,
    /// SIGKILL; B `--take-over --force`.
    KillForce,
    /// SIGSTOP; B plain `--take-over` (refused while A's watch lives).
    StopExpired,
    /// SIGKILL; B plain `--take-over` once A's watch expired.
    KillExpired,
}

#[test]
fn failover_keeps_every_acknowledged_write_and_fences_the_old_server() {
    use Break::*;
    let cycles = [
        StopForce,
        KillForce,
        StopForce,
        StopExpired,
        KillForce,
        StopForce,
        KillExpired,
        KillForce,
        StopForce,
        KillForce,
    ];
    let cluster = Ceph::from_env();
    let fx = Fixture::new();
    let (vol, _image) = create_rbd_volume(&fx, &cluster, "failover");
    let mut rng = StdRng::seed_from_u64(13);
    let mut ledger = Ledger::new();

    let mut holder = Server::start(&fx, &cluster, &vol, &[]).expect("first serve");
    // A second writable serve is refused while the holder lives.
    let refused = Server::start(&fx, &cluster, &vol, &[])
        .err()
        .expect("second serve refused");
    let line = last_line(&refused);
    eprintln!("second serve: {line}");
    assert!(
        line.contains("Ceph client"),
        "a second serve's refusal does not name the holder: {line:?}"
    );
    let mut client = Client::connect(&holder.socket);
    let mut takeover_times = Vec::new();

    for (cycle, how) in cycles.iter().enumerate() {
        client.write_acknowledged(&mut ledger, &mut rng, WRITES_PER_CYCLE);
        for _ in 0..IN_FLIGHT_AT_BREAK {
            client.send_write(&mut ledger, &mut rng, false);
        }
        let stopped = matches!(how, StopForce | StopExpired);
        holder.signal(if stopped { "-STOP" } else { "-KILL" });
        let paused_at = Instant::now();
        if stopped {
            // kill(1) returns before every thread has stopped: a thread on
            // the other core may still take a request for a moment.
            wait_all_threads_stopped(holder.pid());
            // Sent to a stopped server: it can only act on these after B broke its lock.
            for _ in 0..FENCED_WRITES {
                client.send_write(&mut ledger, &mut rng, true);
                ledger.fenced_sent += 1;
            }
        }

        let next = match how {
            StopForce | KillForce => {
                Server::start(&fx, &cluster, &vol, &["--take-over", "--force"])
                    .unwrap_or_else(|e| panic!("cycle {cycle}: --take-over --force refused: {e}"))
            }
            StopExpired | KillExpired => {
                let mut attempts = 0;
                let server = loop {
                    attempts += 1;
                    match Server::start(&fx, &cluster, &vol, &["--take-over"]) {
                        Ok(s) => break s,
                        Err(e) => {
                            let line = last_line(&e).to_string();
                            assert!(
                                line.contains("alive"),
                                "cycle {cycle}: plain --take-over refused for another reason: \
                                 {line:?}"
                            );
                            if attempts == 1 {
                                eprintln!(
                                    "cycle {cycle}: plain --take-over of a live watch: {line}"
                                );
                            }
                            assert!(
                                paused_at.elapsed() < WATCH_EXPIRY_DEADLINE,
                                "cycle {cycle}: plain --take-over still refused {:?} after the \
                                 holder stopped: {line}",
                                paused_at.elapsed()
                            );
                            std::thread::sleep(Duration::from_millis(250));
                        }
                    }
                };
                if how == &StopExpired {
                    // A stopped holder's watch lives on for the watch
                    // timeout: the first attempt must not have fenced it.
                    assert!(
                        attempts > 1,
                        "cycle {cycle}: plain --take-over broke the lock of a holder whose \
                         watch had not expired ({:?} after SIGSTOP)",
                        server.ready_at - paused_at
                    );
                }
                server
            }
        };
        let took = next.ready_at - paused_at;
        takeover_times.push(took);
        eprintln!(
            "cycle {cycle} ({how:?}): B serving {took:?} after A's {}",
            if stopped { "SIGSTOP" } else { "SIGKILL" }
        );

        let mut reader = Client::connect(&next.socket);
        let before = reader.read_all();
        ledger.check(&before, &format!("cycle {cycle}: through B"));

        let mut old = holder;
        if stopped {
            old.signal("-CONT");
            let resumed = Instant::now();
            // Late replies: acknowledgements A sent before it stopped, and
            // whatever it answers the fenced writes (never success).
            client.drain(&mut ledger, FENCED_EXIT_DEADLINE);
            let (status, err) = old.wait_exit(FENCED_EXIT_DEADLINE);
            let line = last_line(&err);
            eprintln!(
                "cycle {cycle}: fenced A exited ({status}) {:?} after SIGCONT: {line}",
                resumed.elapsed()
            );
            assert!(!status.success(), "fenced A exited 0; stderr:\n{err}");
            assert!(
                line.contains("fenced") && line.contains(vol.path.to_str().unwrap()),
                "fenced A's last line does not say it was fenced off the volume: \
                 {line:?}\nstderr:\n{err}"
            );
        } else {
            client.drain(&mut ledger, Duration::from_secs(5));
            let (status, _) = old.wait_exit(Duration::from_secs(5));
            assert!(!status.success());
        }
        drop(old);

        let after = reader.read_all();
        assert!(
            before == after,
            "cycle {cycle}: the image changed after the old server resumed"
        );
        ledger.check(&after, &format!("cycle {cycle}: after A was gone"));
        ledger.settle(&after);
        client = reader;
        holder = next;
    }

    // The last holder still serves, and shuts down cleanly.
    client.write_acknowledged(&mut ledger, &mut rng, QUEUE_DEPTH);
    let last = client.read_all();
    ledger.check(&last, "at the end");
    drop(client);
    holder.stop();

    takeover_times.sort();
    eprintln!(
        "failover: {} cycles, {} acknowledged writes ({} FUA, {} FLUSHes), {} in flight at a \
         break found landed, {} fenced writes none of which landed; A's pause/kill to B serving: \
         min {:?} median {:?} max {:?}",
        cycles.len(),
        ledger.acked_writes,
        ledger.fua_writes,
        ledger.flushes,
        ledger.landed_unacked,
        ledger.fenced_sent,
        takeover_times[0],
        takeover_times[takeover_times.len() / 2],
        takeover_times[takeover_times.len() - 1],
    );
    assert!(ledger.acked_writes >= (cycles.len() * WRITES_PER_CYCLE) as u64);
    assert!(ledger.fenced_sent > 0);
}

// ------------------------------------------------------------ Ceph outage

/// The operation deadline the outage test gives the server: a stalled Ceph
/// operation fails after it (EIO to the client) instead of waiting.
const OP_TIMEOUT_SECS: u64 = 3;
/// What the client may wait beyond it for the error reply (the timeout
/// ticks in whole seconds in librados; scheduling on a busy machine).
const OP_TIMEOUT_SLACK: Duration = Duration::from_secs(7);
/// How long a restarted OSD may take until the server's I/O succeeds again.
const RESUME_DEADLINE: Duration = Duration::from_secs(90);
const EIO: u32 = 5;

/// A cluster of this test's own (`scripts/micro-ceph.sh up` on free ports
/// in a temporary directory), torn down on drop: its OSD is killed, which
/// must not disturb the other tests sharing the run's cluster.
struct PrivateCluster {
    dir: tempfile::TempDir,
    cluster: Ceph,
}

impl PrivateCluster {
    fn up() -> PrivateCluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/micro-ceph.sh");
        assert!(script.is_file(), "{} is missing", script.display());
        let dir = tempfile::tempdir().unwrap();
        let ceph_dir = dir.path().join("ceph");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (mon, mon_v1) = (free_port(), free_port());
        let out = common::volume::output_with_timeout(
            Command::new(&script)
                .arg("up")
                .arg(&ceph_dir)
                // Not the run's cluster: its CEPH_ARGS (`--conf ...`) would
                // point every daemon of this one at that one's conf.
                .env_remove("CEPH_ARGS")
                .env_remove("CEPH_CONF")
                .env("MON_PORT", mon.to_string())
                .env("MON_V1_PORT", mon_v1.to_string()),
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "micro-ceph.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = ceph_dir.join("ceph.conf");
        PrivateCluster {
            cluster: Ceph {
                conf,
                pool: "rbd".into(),
            },
            dir,
        }
    }

    fn ceph_dir(&self) -> PathBuf {
        self.dir.path().join("ceph")
    }

    fn osd_pid(&self) -> u32 {
        let file = self.ceph_dir().join("run/osd.0.pid");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a pid in osd.0.pid")
    }

    /// Starts the OSD again with the cluster's configuration (it daemonizes).
    fn start_osd(&self) {
        let status = Command::new("ceph-osd")
            .args(["--id", "0", "--conf", conf(&self.cluster)])
            .env_remove("CEPH_ARGS")
            .status()
            .expect("run ceph-osd");
        assert!(status.success(), "ceph-osd --id 0 failed: {status}");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/micro-ceph.sh");
        let _ = Command::new(script)
            .env_remove("CEPH_ARGS")
            .env_remove("CEPH_CONF")
            .arg("down")
            .arg(self.ceph_dir())
            .stdout(Stdio::null())
            .status();
    }
}

/// Whether process `pid` is gone (or a zombie).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

impl Client {
    /// One READ of `slot`: Ok(bytes) or Err(errno).
    fn read_slot(&mut self, slot: usize) -> Result<Vec<u8>, u32> {
        let cookie = self.send(CMD_READ, 0, (slot * SLOT) as u64, SLOT as u32, &[]);
        let (c, error) = self.reply().expect("the server closed the connection");
        assert_eq!(c, cookie);
        if error != 0 {
            return Err(error);
        }
        let mut data = vec![0; SLOT];
        self.s.read_exact(&mut data).expect("read data");
        Ok(data)
    }

    /// Sends a WRITE of `tag`'s bytes over all of `slot`; its cookie.
    fn send_slot_write(&mut self, slot: usize, tag: u64, flags: u16) -> u64 {
        self.send(
            CMD_WRITE,
            flags,
            (slot * SLOT) as u64,
            SLOT as u32,
            &slot_bytes(tag),
        )
    }

    /// One WRITE of `tag` to `slot` with FUA: the reply's errno.
    fn write_slot_fua(&mut self, slot: usize, tag: u64) -> u32 {
        let cookie = self.send_slot_write(slot, tag, FLAG_FUA);
        let (c, error) = self.reply().expect("the server closed the connection");
        assert_eq!(c, cookie);
        error
    }
}

#[test]
fn osd_down_fails_requests_with_eio_in_time_and_serving_resumes_when_it_returns() {
    let private = PrivateCluster::up();
    let cluster = &private.cluster;
    let fx = Fixture::new();
    let (vol, _image) = create_rbd_volume(&fx, cluster, "outage");
    let timeout = format!("{OP_TIMEOUT_SECS}s");
    let server = Server::start(&fx, cluster, &vol, &["--ceph-op-timeout", &timeout])
        .unwrap_or_else(|e| panic!("serve: {e}"));
    let mut client = Client::connect(&server.socket);
    client
        .s
        .set_read_timeout(Some(
            Duration::from_secs(OP_TIMEOUT_SECS) * 4 + OP_TIMEOUT_SLACK,
        ))
        .unwrap();
    assert_eq!(client.write_slot_fua(0, 0xa11ce), 0);
    assert_eq!(client.read_slot(0), Ok(slot_bytes(0xa11ce)));

    let osd = private.osd_pid();
    let status = Command::new("kill")
        .args(["-KILL", &osd.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(osd) {
        assert!(Instant::now() < deadline, "the OSD {osd} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A read and a write with the OSD gone: each an error, in time.
    let started = Instant::now();
    let read = client.read_slot(1);
    let read_took = started.elapsed();
    let started = Instant::now();
    let write = client.write_slot_fua(2, 0xb0b);
    let write_took = started.elapsed();
    eprintln!(
        "OSD down: read {read:?} after {read_took:?}, write errno {write} after {write_took:?}"
    );
    assert_eq!(read.err(), Some(EIO), "a READ with the OSD down");
    assert_eq!(write, EIO, "a WRITE with the OSD down");
    let limit = Duration::from_secs(OP_TIMEOUT_SECS) + OP_TIMEOUT_SLACK;
    assert!(
        read_took <= limit && write_took <= limit,
        "errors took {read_took:?} / {write_took:?}: beyond the {OP_TIMEOUT_SECS} s operation \
         timeout + {OP_TIMEOUT_SLACK:?}"
    );
    assert!(
        !process_gone(server.pid()),
        "the server exited with the OSD down:\n{}",
        server.stderr()
    );

    // The OSD returns: the same connection is served again.
    private.start_osd();
    let restarted = Instant::now();
    let data = loop {
        match client.read_slot(0) {
            Ok(data) => break data,
            Err(errno) => {
                assert_eq!(errno, EIO);
                assert!(
                    restarted.elapsed() < RESUME_DEADLINE,
                    "still EIO {:?} after the OSD restarted",
                    restarted.elapsed()
                );
            }
        }
    };
    eprintln!(
        "OSD back: served again {:?} after ceph-osd started",
        restarted.elapsed()
    );
    assert_eq!(
        data,
        slot_bytes(0xa11ce),
        "the write acknowledged before the outage"
    );
    assert_eq!(client.write_slot_fua(2, 0xc0ffee), 0);
    assert_eq!(client.read_slot(2), Ok(slot_bytes(0xc0ffee)));
    drop(client);
    server.stop();
}
