//! The FUSE end-to-end harness (`tests/e2e/fuse-mount-check.sh`) can fail.
//!
//! `tests/volume_serve.rs` trusts that harness's PASS as proof that a real
//! filesystem survives on an envol volume; that proof is only worth something
//! if the harness says FAIL when the data is wrong. Here it runs against
//! `tests/e2e/faulty-nbd-server.py`, a small NBD server that is correct
//! until told otherwise: it must pass against the correct server (so the
//! failure below is not a setup problem) and fail — exit 1, during the
//! verification phase — against one that flips a bit in every read from its
//! second connection on (the harness's re-attach). Small sizes: ~10 s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tools::{e2e_file, require_fuse_harness_tools};
use common::volume::{output_with_timeout, require_tool};

/// A running `faulty-nbd-server.py`, killed on drop.
struct FaultyServer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl FaultyServer {
    /// Serves a 64 MiB image as export `e2e`, with `faults` (the script's
    /// flags) applied.
    fn start(dir: &Path, name: &str, faults: &[&str]) -> FaultyServer {
        require_tool("python3", "python3");
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("python3")
            .arg(e2e_file("faulty-nbd-server.py"))
            .arg(&socket)
            .arg(dir.join(format!("{name}.img")))
            .args(["64", "--export", "e2e"])
            .args(faults)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create server log"))
            .spawn()
            .expect("spawn python3 faulty-nbd-server.py");
        let mut server = FaultyServer { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.socket.exists() {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!("faulty-nbd-server.py exited ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "faulty-nbd-server.py did not create its socket in 20 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fuse-mount-check.sh` against `server` with a small payload.
fn fuse_mount_check(server: &FaultyServer, work_base: &Path) -> (Output, String) {
    require_fuse_harness_tools();
    let mut cmd = Command::new("bash");
    cmd.arg(e2e_file("fuse-mount-check.sh"))
        .arg(&server.socket)
        .arg("e2e")
        .env("BIG_MB", "8")
        .env("STEP_TIMEOUT", "60")
        .env("WORK_BASE", work_base)
        .env("KEEP_WORKDIR", "0")
        .env_remove("NBDFUSE_CONNECTIONS")
        .env_remove("MKFS_OPTS");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(300));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

#[test]
fn fuse_harness_passes_a_correct_server_and_fails_a_corrupting_one() {
    let dir = tempfile::tempdir().expect("tempdir");

    let good = FaultyServer::start(dir.path(), "good", &[]);
    let (out, text) = fuse_mount_check(&good, &dir.path().join("good-run"));
    assert!(
        out.status.success() && text.contains("RESULT: PASS"),
        "fuse-mount-check.sh must pass against a correct server ({}):\n{text}\n--- server ---\n{}",
        out.status,
        good.log()
    );
    drop(good);

    let bad = FaultyServer::start(dir.path(), "bad", &["--corrupt-from-conn", "2"]);
    let (out, text) = fuse_mount_check(&bad, &dir.path().join("bad-run"));
    let server_log = bad.log();
    drop(bad);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fuse-mount-check.sh must fail (exit 1, not a setup error) against a server \
         that corrupts reads:\n{text}\n--- server ---\n{server_log}"
    );
    assert!(text.contains("RESULT: FAIL"), "{text}");
    // Phase 1 (writing, on the first connection) is untouched by the fault;
    // the harness must notice during phase 2, when it reads the data back.
    let phase2 = text
        .find("=== phase 2")
        .unwrap_or_else(|| panic!("the harness failed before re-attaching:\n{text}"));
    assert!(
        text[phase2..].contains("FAIL: "),
        "no failure reported while verifying:\n{text}"
    );
    assert!(
        server_log.contains("conn 2: transmission phase"),
        "the corrupting connection never reached transmission:\n{server_log}"
    );
}
