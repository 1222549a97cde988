//! The test Ceph cluster: one per test run, started by scripts/test.sh
//! (scripts/micro-ceph.sh), named by `CEPH_CONF` and `ENVOL_TEST_RBD_POOL`.
//! Each test works on its own image. Without a cluster the tests fail with
//! an instruction: they never skip.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The cluster the tests use.
#[derive(Debug, Clone)]
pub struct Ceph {
    /// Its ceph.conf.
    pub conf: PathBuf,
    /// The pool test images are made in (`rbd`, initialised for RBD).
    pub pool: String,
}

impl Ceph {
    /// The cluster of this test run; panics with what to do when there is none.
    pub fn from_env() -> Ceph {
        let conf = std::env::var_os("CEPH_CONF");
        let pool = std::env::var("ENVOL_TEST_RBD_POOL").ok();
        match (conf, pool) {
            (Some(conf), Some(pool)) if !pool.is_empty() => Ceph {
                conf: PathBuf::from(conf),
                pool,
            },
            _ => panic!(
                "no test Ceph cluster: start one with scripts/micro-ceph.sh up DIR and export CEPH_CONF and ENVOL_TEST_RBD_POOL, or run scripts/test.sh"
            ),
        }
    }

    /// `(pool, image)`: an image name no other test (of this or another
    /// run against the same cluster) uses.
    pub fn unique_image(&self, prefix: &str) -> (String, String) {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (
            self.pool.clone(),
            format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()),
        )
    }

    /// The `rbd` command with this cluster's configuration.
    pub fn rbd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("rbd");
        cmd.arg("--conf").arg(&self.conf).args(args);
        cmd
    }

    /// The `rados` command with this cluster's configuration.
    pub fn rados(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("rados");
        cmd.arg("--conf").arg(&self.conf).args(args);
        cmd
    }

    /// The `ceph` command with this cluster's configuration.
    pub fn ceph(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ceph");
        cmd.arg("--conf").arg(&self.conf).args(args);
        cmd
    }

    /// Runs `cmd`, panicking with its stderr unless it succeeds.
    pub fn run(mut cmd: Command) -> Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Removes `pool/image` if it exists (a test's cleanup; the lock of a
    /// fenced or killed holder may need breaking first, which `rbd rm`
    /// does not do, so watchers are waited out by Ceph itself).
    pub fn remove_image(&self, pool: &str, image: &str) {
        let spec = format!("{pool}/{image}");
        let _ = self
            .rbd(&["rm", "--no-progress", &spec])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// The OSD's process id (scripts/micro-ceph.sh keeps pid files in
    /// `run/` beside the ceph.conf), for tests that stop it.
    pub fn osd_pid(&self) -> u32 {
        let dir = self.conf.parent().expect("ceph.conf has a directory");
        let pid = std::fs::read_to_string(dir.join("run/osd.0.pid"))
            .unwrap_or_else(|e| panic!("no OSD pid file beside {}: {e}", self.conf.display()));
        pid.trim().parse().expect("a pid")
    }

    /// The client addresses on the cluster's blocklist.
    pub fn blocklist(&self) -> String {
        let out = Self::run(self.ceph(&["osd", "blocklist", "ls"]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// An image that is removed when the test is done with it.
pub struct TestImage {
    pub ceph: Ceph,
    pub pool: String,
    pub image: String,
}

impl TestImage {
    /// A fresh name (the image is not created).
    pub fn new(prefix: &str) -> TestImage {
        let ceph = Ceph::from_env();
        let (pool, image) = ceph.unique_image(prefix);
        TestImage { ceph, pool, image }
    }

    /// `POOL/IMAGE`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        self.ceph.remove_image(&self.pool, &self.image);
    }
}
