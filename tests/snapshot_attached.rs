//! Snapshots of attached volumes (issue 14, item 1): `envol snapshot
//! create` of a volume a running `envol serve` has attached goes through
//! that server's control socket and is one point in time while writes go
//! on. Real processes throughout: `envol serve`, the real KMS, the test
//! run's radosgw (`tests/common/s3.rs`) and Ceph cluster, qemu-io and fio
//! as NBD clients, nbdcopy to read volumes back, `rbd snap ls` to see what
//! is left in the image.
//!
//! What they show: every write acknowledged before the freeze line is in
//! the snapshot and none written after it (pattern A restored, pattern B
//! live), with the B writes finished while the upload still ran; the next
//! snapshots of the attached volume are incremental; a CLI killed mid-
//! upload leaves no session (status) and the next snapshot still holds
//! every change; fio verify writers run clean through a snapshot; an
//! `rbd:` volume does the same through an RBD snapshot that is removed
//! afterwards; an attached volume whose server cannot be reached is one
//! line naming `--control`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ceph::{Ceph, TestImage};
use common::nbd::run_tool;
use common::s3::{S3, fixture_with_bucket};
use common::tools::qemu_io;
use common::volume::{
    ADMIN, Fixture, MIB, Vol, VolumeServer, assert_one_clean_line, fio_write_then_verify,
    output_with_timeout, require_tool, run_fails, run_ok,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A KMS with a key, radosgw with a bucket of this test's.
struct Env {
    fx: Fixture,
    s3: S3,
    bucket: String,
}

impl Env {
    fn new() -> Env {
        let (fx, s3, bucket) = fixture_with_bucket("envol-snapatt");
        Env { fx, s3, bucket }
    }

    fn place(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// `envol snapshot create VOLUME --to PLACE --control CONTROL EXTRA...`.
    fn create_cmd(&self, vol: &Vol, place: &str, control: &Path, extra: &[&str]) -> Command {
        let mut args = vec![
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            place,
            "--control",
            control.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.fx.envol_as(ADMIN, &args);
        cmd.args(self.s3.envol_args());
        cmd
    }

    /// A snapshot through the server, `--json`: its JSON.
    fn snapshot(&self, vol: &Vol, place: &str, control: &Path) -> Value {
        let mut cmd = self.create_cmd(vol, place, control, &["--json"]);
        let out = output_with_timeout(&mut cmd, TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "snapshot create failed:\n{stderr}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("snapshot create --json: {e}\n{stderr}"))
    }

    /// Restores `url` into a new file volume and reads it whole.
    fn restore_and_read(&self, url: &str, name: &str, like: &Vol) -> Vec<u8> {
        let target = self.fx.path(&format!("{name}.vol"));
        let mut cmd = self.fx.envol_as(
            ADMIN,
            &["volume", "restore", url, "--to", target.to_str().unwrap()],
        );
        cmd.args(self.s3.envol_args());
        run_ok(&mut cmd);
        let restored = Vol {
            path: target,
            uuid: String::new(),
            size: like.size,
            sector_size: like.sector_size,
        };
        let server = self.fx.serve(ADMIN, &restored);
        let bytes = read_all(&self.fx, server.first_uri(), name);
        server.stop();
        bytes
    }
}

/// The whole device at `uri` (nbdcopy).
fn read_all(fx: &Fixture, uri: &str, name: &str) -> Vec<u8> {
    let dst = fx.path(&format!("{name}.img"));
    std::fs::File::create(&dst).unwrap();
    run_tool("nbdcopy", &[uri, dst.to_str().unwrap()]);
    std::fs::read(&dst).unwrap()
}

fn control_of(server: &VolumeServer) -> PathBuf {
    let mut p = server.socket.as_os_str().to_owned();
    p.push(".control");
    PathBuf::from(p)
}

/// The server's one export as `envol status --json` shows it.
fn export_status(fx: &Fixture, control: &Path) -> Value {
    let mut cmd = fx.envol(&["status", "--json", "--control", control.to_str().unwrap()]);
    let out = run_ok(&mut cmd);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["exports"][0].clone()
}

/// Fills every byte of the device at `uri` with `pattern` (qemu-io; a
/// flush after, so the writes are acknowledged and durable).
fn fill(uri: &str, size: u64, pattern: u8) {
    qemu_io(uri, &[&format!("write -P {pattern} 0 {size}"), "flush"]);
}

/// A `snapshot create` running in the background, its stderr read line by
/// line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: String,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Waits for the freeze line: the point in time has passed.
    fn wait_frozen(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("no freeze line ({e}); stderr so far:\n{}", self.stderr)
            });
            self.stderr.push_str(&line);
            self.stderr.push('\n');
            if line.contains("frozen by its server") {
                return;
            }
        }
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for success; the snapshot URL it printed.
    fn finish(mut self) -> String {
        let out = self.child.wait_with_output().unwrap();
        self.stderr.extend(self.lines.iter().map(|l| l + "\n"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "snapshot create failed:\n{}",
            self.stderr
        );
        stdout
            .lines()
            .next()
            .filter(|l| l.starts_with("s3://"))
            .unwrap_or_else(|| panic!("no URL printed: {stdout}"))
            .to_string()
    }
}

/// The chunks of the device at `uri` that are not all `pattern`.
fn chunks_not(bytes: &[u8], pattern: u8) -> Vec<usize> {
    bytes
        .chunks(MIB as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != pattern))
        .map(|(i, _)| i)
        .collect()
}

/// Point in time on a file volume, then incremental snapshots of the
/// attached volume, then a CLI killed mid-upload.
#[test]
fn attached_file_volume_snapshot_is_one_point_in_time() {
    require_tool("qemu-io", "qemu-utils");
    require_tool("nbdcopy", "libnbd-bin");
    let env = Env::new();
    let size = 48 * MIB;
    let vol = env.fx.create_volume("a.vol", size, 4096);
    let place = env.place("att");
    let server = env.fx.serve(ADMIN, &vol);
    let control = control_of(&server);
    let uri = server.first_uri().to_string();

    // A acknowledged and flushed, then the snapshot; B written as soon as
    // the freeze is reported, while the upload runs (one PUT at a time).
    fill(&uri, size, 0x41);
    let mut running =
        Running::spawn(&mut env.create_cmd(&vol, &place, &control, &["--concurrency", "1"]));
    running.wait_frozen();
    fill(&uri, size, 0x42);
    let b_done = Instant::now();
    assert!(
        running.still_running(),
        "the upload ended before the B writes did: no overlap shown\n{}",
        running.stderr
    );
    let during = export_status(&env.fx, &control);
    assert!(
        during["snapshot"]["copied_bytes"].as_u64().unwrap_or(0) > 0,
        "writes during the upload were copied aside: {during}"
    );
    let url1 = running.finish();
    eprintln!(
        "snapshot 1: {url1}; upload ended {:?} after the B writes",
        b_done.elapsed()
    );
    let after = export_status(&env.fx, &control);
    assert!(after.get("snapshot").is_none(), "session gone: {after}");

    let restored = env.restore_and_read(&url1, "r1", &vol);
    assert_eq!(restored.len() as u64, size);
    assert_eq!(
        chunks_not(&restored, 0x41),
        Vec::<usize>::new(),
        "snapshot 1 holds A"
    );
    let live = read_all(&env.fx, &uri, "live1");
    assert_eq!(
        chunks_not(&live, 0x42),
        Vec::<usize>::new(),
        "the volume holds B"
    );

    // Incremental: B rewrote every chunk after the freeze, so snapshot 2
    // reads them all; then two chunks change, and snapshot 3 reads two.
    let s2 = env.snapshot(&vol, &place, &control);
    assert_eq!(s2["method"], "change-tracking", "{s2}");
    assert_eq!(s2["chunks_read"], 48, "{s2}");
    qemu_io(
        &uri,
        &["write -P 0x43 5M 1M", "write -P 0x43 30M 4k", "flush"],
    );
    let s3 = env.snapshot(&vol, &place, &control);
    assert_eq!(s3["method"], "change-tracking", "{s3}");
    assert_eq!(s3["parent"], s2["id"], "{s3}");
    assert_eq!(s3["chunks_read"], 2, "only the changed chunks: {s3}");
    assert_eq!(s3["objects_added"], 2, "{s3}");
    assert_eq!(s3["bytes_added"], 2 * MIB, "{s3}");

    // Killed mid-upload: three chunks changed before, one while frozen.
    qemu_io(
        &uri,
        &[
            "write -P 0x44 0 1M",
            "write -P 0x44 10M 1M",
            "write -P 0x44 20M 1M",
            "flush",
        ],
    );
    let mut running =
        Running::spawn(&mut env.create_cmd(&vol, &place, &control, &["--concurrency", "1"]));
    running.wait_frozen();
    qemu_io(&uri, &["write -P 0x45 40M 1M", "flush"]);
    let during = export_status(&env.fx, &control);
    assert!(during.get("snapshot").is_some(), "a session: {during}");
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = export_status(&env.fx, &control);
        if now.get("snapshot").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server kept the killed CLI's session: {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s5 = env.snapshot(&vol, &place, &control);
    assert_eq!(s5["method"], "change-tracking", "{s5}");
    assert_eq!(s5["parent"], s3["id"], "{s5}");
    assert_eq!(
        s5["chunks_read"], 4,
        "the killed snapshot's changes and the write during it: {s5}"
    );
    let live = read_all(&env.fx, &uri, "live5");
    let url5 = s5["url"].as_str().unwrap();
    assert!(
        env.restore_and_read(url5, "r5", &vol) == live,
        "snapshot 5 differs from the volume"
    );

    // Writes during the upload that need more copies than --copy-limit
    // (1 MiB): the snapshot fails in one line, the writes all succeed, and
    // the next snapshot holds every change.
    qemu_io(&uri, &["write -P 0x46 0 16M", "flush"]);
    let mut running = Running::spawn(&mut env.create_cmd(
        &vol,
        &place,
        &control,
        &["--concurrency", "1", "--copy-limit", "1"],
    ));
    running.wait_frozen();
    qemu_io(&uri, &["write -P 0x47 0 16M", "flush"]);
    let status = running.child.wait().unwrap();
    // The reader thread ends at the end of stderr.
    let stderr = running.stderr + &running.lines.iter().collect::<Vec<_>>().join("\n");
    assert!(
        !status.success(),
        "the snapshot went over its bound:\n{stderr}"
    );
    assert!(stderr.contains("copy-aside limit"), "{stderr}");
    let s6 = env.snapshot(&vol, &place, &control);
    assert_eq!(s6["parent"], s5["id"], "{s6}");
    assert_eq!(s6["chunks_read"], 16, "{s6}");
    let live = read_all(&env.fx, &uri, "live6");
    assert!(
        env.restore_and_read(s6["url"].as_str().unwrap(), "r6", &vol) == live,
        "snapshot 6 differs from the volume"
    );
    // What each freeze took, as the server logs it (the README's figure).
    let log = server.stderr();
    let freezes: Vec<&str> = log.lines().filter(|l| l.contains("freeze_us")).collect();
    assert_eq!(freezes.len(), 7, "seven sessions, each frozen once:\n{log}");
    eprintln!("{}", freezes.join("\n"));
    server.stop();
}

/// fio writers with verify keep running, without an error, through a
/// snapshot of their volume.
#[test]
fn fio_verify_writers_run_through_a_snapshot() {
    require_tool("fio", "fio");
    let env = Env::new();
    let vol = env.fx.create_volume("f.vol", 64 * MIB, 4096);
    let place = env.place("fio");
    let server = env.fx.serve(ADMIN, &vol);
    let control = control_of(&server);
    let uri = server.first_uri().to_string();
    let dir = env.fx.path("fio");
    std::fs::create_dir_all(&dir).unwrap();
    let writers = {
        let (dir, uri) = (dir.clone(), uri.clone());
        std::thread::spawn(move || {
            fio_write_then_verify(
                &dir,
                &uri,
                &[
                    "--name=writers",
                    "--rw=randwrite",
                    "--bs=16k",
                    "--size=48M",
                    "--iodepth=8",
                    "--numjobs=1",
                    "--verify=crc32c",
                ],
                TIMEOUT,
            )
        })
    };
    // Taken while the writers write: once they have written 2 MiB (of
    // 48: they run several seconds here).
    let written = || {
        export_status(&env.fx, &control)["bytes_written"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + TIMEOUT;
    while written() < 2 * MIB {
        assert!(Instant::now() < deadline, "fio never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = written();
    let s = env.snapshot(&vol, &place, &control);
    let after = written();
    assert!(s["chunks"].as_u64().unwrap() > 0, "{s}");
    assert!(
        before < 48 * MIB && after > before,
        "the writers were writing when the snapshot began and went on during it ({before} then {after} bytes)"
    );
    if writers.join().is_err() {
        panic!(
            "fio writers failed during the snapshot; server:\n{}",
            server.stderr()
        );
    }
    server.stop();
}

/// An `rbd:` volume: the same point in time, through an RBD snapshot the
/// server takes and removes; none is left behind.
#[test]
fn attached_rbd_volume_snapshot_is_one_point_in_time() {
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    let image = TestImage::new("snapatt");
    let size = 16 * MIB;
    let vol = env
        .fx
        .create_volume_at(&format!("rbd:{}", image.spec()), size, 4096);
    let place = env.place("rbd");
    let server = env.fx.serve(ADMIN, &vol);
    let control = control_of(&server);
    let uri = server.first_uri().to_string();

    fill(&uri, size, 0x41);
    let mut running =
        Running::spawn(&mut env.create_cmd(&vol, &place, &control, &["--concurrency", "1"]));
    running.wait_frozen();
    fill(&uri, size, 0x42);
    let url = running.finish();

    assert_eq!(
        chunks_not(&env.restore_and_read(&url, "rr", &vol), 0x41),
        Vec::<usize>::new(),
        "the snapshot holds A"
    );
    let live = read_all(&env.fx, &uri, "rlive");
    assert_eq!(
        chunks_not(&live, 0x42),
        Vec::<usize>::new(),
        "the volume holds B"
    );
    let snaps = Ceph::run(image.ceph.rbd(&["snap", "ls", &image.spec()]));
    let listed = String::from_utf8_lossy(&snaps.stdout);
    assert!(
        !listed.contains("envol-attached-"),
        "an RBD snapshot was left behind:\n{listed}"
    );
    server.stop();
}

/// An attached volume whose server's control socket is not where the
/// command looks: one line, naming --control.
#[test]
fn an_unreachable_server_is_one_line() {
    let env = Env::new();
    let vol = env.fx.create_volume("u.vol", 8 * MIB, 4096);
    let server = env.fx.serve(ADMIN, &vol);
    let (_, stderr) =
        run_fails(&mut env.create_cmd(&vol, &env.place("u"), &env.fx.path("nowhere.control"), &[]));
    assert_one_clean_line("an unreachable server", &stderr);
    assert!(stderr.contains("attached by pid"), "{stderr}");
    assert!(stderr.contains("--control"), "{stderr}");
    server.stop();
}
