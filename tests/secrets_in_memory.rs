//! Secrets stay in memory: real `envol up` and `envol kms serve` processes
//! are non-dumpable, keep their keys in pages the kernel reports as locked
//! and excluded from core dumps, and when locking is refused they warn once
//! and keep serving.
//!
//! What is observed, from outside the process, in /proc:
//! - **non-dumpable**: the kernel makes `/proc/PID/environ` (and `mem`, …)
//!   root's own instead of the process owner's. That is visible only for a
//!   process that is not root, so when the tests run as root the server runs
//!   as `nobody` (`setpriv`); otherwise as the test's own user.
//! - **locked**: `VmLck` in `/proc/PID/status`; mappings with `lo` in their
//!   `VmFlags` in `/proc/PID/smaps`.
//! - **excluded from dumps** (`MADV_DONTDUMP`): `dd` in `VmFlags`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::kms::{create_key_arn, parse_creds, sdk_client};
use common::tools::qemu_io;
use common::volume::{ADMIN, Fixture, MIB, VolumeServer, require_tool};

const NOBODY: u32 = 65534;
/// How long a server may take to start or to stop.
const DEADLINE: Duration = Duration::from_secs(60);
/// The one warning a process gives when the kernel refuses to lock key memory.
const MLOCK_WARNING: &str = "cannot lock key memory";

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A directory the unprivileged server can use: a temporary directory that
/// it may enter, with `home/` its own.
struct Sandbox {
    tmp: tempfile::TempDir,
    binary: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        require_tool("setpriv", "util-linux");
        require_tool("prlimit", "util-linux");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let mut sandbox = Sandbox {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_envol")),
            tmp,
        };
        // The build directory may sit where `nobody` cannot reach it (under
        // /root, say); then the server runs from a copy.
        let reachable = sandbox
            .command(None, &[])
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !reachable {
            let copy = sandbox.tmp.path().join("envol");
            std::fs::copy(&sandbox.binary, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            sandbox.binary = copy;
        }
        sandbox
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    /// `envol ARGS` as the unprivileged user, with `RLIMIT_MEMLOCK` set to
    /// `memlock` bytes if given.
    fn command(&self, memlock: Option<u64>, args: &[&str]) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(limit) = memlock {
            argv.extend([
                "prlimit".into(),
                format!("--memlock={limit}:{limit}"),
                "--".into(),
            ]);
        }
        if running_as_root() {
            argv.extend(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--",
                ]
                .map(String::from),
            );
        }
        argv.push(self.binary.to_string_lossy().into_owned());
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let home = self.home();
        cmd.env("HOME", &home)
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join(".aws/credentials"))
            .env("AWS_CONFIG_FILE", home.join(".aws/config"))
            .env("ENVOL_LOG", "warn")
            .current_dir(&home);
        cmd
    }
}

/// A server process whose stdout lines and stderr are collected by threads.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Taken by `stop`.
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// A test that fails half-way leaves no server behind.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Server {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Reads stdout until a line satisfies `done`; returns all lines read.
    fn wait_for(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let last = done(&line);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
                    panic!(
                        "server not ready in {DEADLINE:?}; stdout: {seen:?}; stderr: {}",
                        stderr.unwrap_or_default()
                    );
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, a clean exit within the deadline; returns its stderr.
    fn stop(mut self) -> String {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                panic!("server did not stop within {DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().unwrap().join().unwrap();
        assert!(status.success(), "server exited with {status}: {stderr}");
        stderr
    }
}

/// What /proc shows of a process's memory protection.
#[derive(Debug)]
struct Observed {
    /// Real uid of the process.
    uid: u32,
    /// Owner of /proc/PID/environ: root iff the process is non-dumpable
    /// (for a process not running as root).
    environ_owner: u32,
    /// `VmLck` in kB.
    locked_kb: u64,
    /// Page flags from /proc/PID/smaps, or `None` where the kernel refuses
    /// them: a test running as an ordinary user may not read the smaps of a
    /// non-dumpable process, even one of its own user's (that refusal is the
    /// protection at work; `observe` accepts nothing else). The flags are then
    /// checked by the unit tests (`src/secret_memory_tests.rs`) only;
    /// `scripts/test.sh` runs the tests as root, which checks them here.
    pages: Option<PageFlags>,
}

#[derive(Debug)]
struct PageFlags {
    /// kB of anonymous memory marked MADV_DONTDUMP (`dd`). Counted in kB,
    /// not mappings: the kernel merges neighbouring mappings with the same
    /// flags. Named mappings (`[vvar]`, which the kernel marks `dd` itself)
    /// are left out.
    dump_excluded_kb: u64,
    /// kB of those that are also locked (`lo`).
    dump_excluded_and_locked_kb: u64,
}

fn observe(pid: u32) -> Observed {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let smaps = match std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !running_as_root() => None,
        Err(e) => panic!("read /proc/{pid}/smaps: {e}"),
    };
    Observed {
        uid: field("Uid:").parse().unwrap(),
        environ_owner: std::fs::metadata(format!("/proc/{pid}/environ"))
            .unwrap()
            .uid(),
        locked_kb: field("VmLck:").parse().unwrap(),
        pages: smaps.as_deref().map(page_flags),
    }
}

fn page_flags(smaps: &str) -> PageFlags {
    // (anonymous?, size in kB, flags) of each mapping. A header is
    // "start-end perms offset dev inode [name]"; fields follow it.
    let mut mappings: Vec<(bool, u64, Vec<&str>)> = Vec::new();
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().is_some_and(|w| {
            w.contains('-') && w.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            mappings.push((words.len() == 5, 0, Vec::new()));
        } else if let (Some(m), Some(size)) = (mappings.last_mut(), line.strip_prefix("Size:")) {
            m.1 = size.trim().trim_end_matches("kB").trim().parse().unwrap();
        } else if let (Some(m), Some(flags)) = (mappings.last_mut(), line.strip_prefix("VmFlags:"))
        {
            m.2 = flags.split_whitespace().collect();
        }
    }
    let dump_excluded = || {
        mappings
            .iter()
            .filter(|(anonymous, _, flags)| *anonymous && flags.contains(&"dd"))
    };
    PageFlags {
        dump_excluded_kb: dump_excluded().map(|m| m.1).sum(),
        dump_excluded_and_locked_kb: dump_excluded()
            .filter(|m| m.2.contains(&"lo"))
            .map(|m| m.1)
            .sum(),
    }
}

/// `envol up` (embedded KMS with its root key, a volume's XTS key schedules,
/// the NBD server) as an unprivileged user.
fn start_up(sandbox: &Sandbox, memlock: Option<u64>) -> (Server, String) {
    let data = sandbox.home().join("envol");
    let cmd = sandbox.command(
        memlock,
        &[
            "up",
            "--size",
            "16M",
            "--listen",
            "127.0.0.1:0",
            "--kms-listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let mut server = Server::spawn(cmd);
    let lines = server.wait_for(|l| l.starts_with("Stop with Ctrl-C"));
    let uri = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("nbd+unix://"))
        .unwrap_or_else(|| panic!("no nbd+unix URI in {lines:?}"))
        .to_string();
    (server, uri)
}

#[test]
fn up_is_non_dumpable_and_keeps_its_keys_locked_out_of_dumps() {
    let sandbox = Sandbox::new();
    let (server, uri) = start_up(&sandbox, None);
    let seen = observe(server.pid());
    eprintln!("observed: {seen:?}");
    assert_ne!(
        seen.uid, 0,
        "the server must run unprivileged here: {seen:?}"
    );
    assert_eq!(
        seen.environ_owner, 0,
        "/proc/PID/environ belongs to the process's user: it is dumpable: {seen:?}"
    );
    // The KMS root key, its AES-GCM key schedule and the volume's XTS key
    // schedules: three pages at least, each locked and dump-excluded.
    let page_kb = rustix::param::page_size() as u64 / 1024;
    if let Some(pages) = &seen.pages {
        assert!(
            pages.dump_excluded_and_locked_kb >= 3 * page_kb,
            "key pages not locked and dump-excluded: {seen:?}"
        );
    }
    assert!(seen.locked_kb >= 3 * page_kb, "{seen:?}");
    // The ownership is what keeps the server's own user out (no ptrace, no
    // /proc/PID/mem or environ for another process of that user).
    let environ = format!("/proc/{}/environ", server.pid());
    let read = sandbox_reader(&sandbox, &environ);
    assert!(
        !read.status.success(),
        "the server's own user read {environ}: {}",
        String::from_utf8_lossy(&read.stdout)
    );
    // And it serves: a write and a read-back through the cipher.
    qemu_io(
        &uri,
        &["write -P 0x3c 4096 65536", "read -P 0x3c 4096 65536"],
    );
    let stderr = server.stop();
    assert!(!stderr.contains(MLOCK_WARNING), "{stderr}");
}

#[test]
fn up_with_no_lockable_memory_warns_once_and_serves() {
    let sandbox = Sandbox::new();
    let (server, uri) = start_up(&sandbox, Some(0));
    let seen = observe(server.pid());
    eprintln!("observed: {seen:?}");
    assert_eq!(seen.locked_kb, 0, "{seen:?}");
    assert_eq!(seen.environ_owner, 0, "still non-dumpable: {seen:?}");
    let page_kb = rustix::param::page_size() as u64 / 1024;
    if let Some(pages) = &seen.pages {
        assert!(
            pages.dump_excluded_kb >= 3 * page_kb,
            "still dump-excluded: {seen:?}"
        );
    }
    qemu_io(&uri, &["write -P 0xa5 0 1M", "read -P 0xa5 0 1M"]);
    let stderr = server.stop();
    let warnings = stderr.lines().filter(|l| l.contains(MLOCK_WARNING)).count();
    assert_eq!(warnings, 1, "one mlock warning per process:\n{stderr}");
    assert!(stderr.contains("ulimit -l"), "says what to do:\n{stderr}");
}

#[test]
fn kms_serve_with_no_lockable_memory_warns_once_and_answers() {
    let sandbox = Sandbox::new();
    let data = sandbox.home().join("kms");
    let init = sandbox
        .command(None, &["kms", "init", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let init_out = String::from_utf8_lossy(&init.stdout);
    assert!(
        init.status.success(),
        "kms init: {init_out}{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let root = parse_creds(&init_out);
    let mut server = Server::spawn(sandbox.command(
        Some(0),
        &[
            "kms",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
    ));
    let first = server.wait_for(|_| true).remove(0);
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    let seen = observe(server.pid());
    eprintln!("observed: {seen:?}");
    assert_eq!(seen.environ_owner, 0, "non-dumpable: {seen:?}");
    assert_eq!(seen.locked_kb, 0, "{seen:?}");
    // The root key and its key schedule: dump-excluded though not locked.
    let page_kb = rustix::param::page_size() as u64 / 1024;
    if let Some(pages) = &seen.pages {
        assert!(pages.dump_excluded_kb >= 2 * page_kb, "{seen:?}");
    }
    // Every request unseals master-key material into a fresh page whose lock
    // fails too: still one warning.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = sdk_client(&endpoint, &root, None);
        let key = create_key_arn(&client).await;
        for _ in 0..5 {
            let made = client
                .generate_data_key()
                .key_id(&key)
                .number_of_bytes(64)
                .send()
                .await
                .expect("GenerateDataKey");
            let back = client
                .decrypt()
                .ciphertext_blob(made.ciphertext_blob().unwrap().clone())
                .send()
                .await
                .expect("Decrypt");
            assert_eq!(back.plaintext(), made.plaintext());
        }
    });
    let stderr = server.stop();
    let warnings = stderr.lines().filter(|l| l.contains(MLOCK_WARNING)).count();
    assert_eq!(warnings, 1, "one mlock warning per process:\n{stderr}");
}

/// `cat PATH` as the sandbox's unprivileged user, without envol.
fn sandbox_reader(sandbox: &Sandbox, path: &str) -> std::process::Output {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "cat",
        ]);
        c
    } else {
        Command::new("cat")
    };
    cmd.arg(path)
        .current_dir(sandbox.home())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `envol serve` (data keys from a separate KMS through the AWS SDK) holds
/// each attached volume's XTS key schedules in a locked, dump-excluded page.
/// It runs as the test's user: the non-dumpable check is the `up` test's.
#[test]
fn serve_keeps_each_volumes_key_schedules_locked_out_of_dumps() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.img", 4 * MIB, 4096);
    let b = fx.create_volume("b.img", 4 * MIB, 512);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.envol(&[
        "serve",
        a.path.to_str().unwrap(),
        b.path.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    cmd.env("AWS_ENDPOINT_URL_KMS", &fx.kms.endpoint)
        .env("AWS_PROFILE", ADMIN);
    let server = VolumeServer::spawn(&mut cmd, socket, &["a".into(), "b".into()]);
    let seen = observe(server.pid());
    eprintln!("observed: {seen:?}");
    let page_kb = rustix::param::page_size() as u64 / 1024;
    assert!(seen.locked_kb >= 2 * page_kb, "{seen:?}");
    if let Some(pages) = &seen.pages {
        assert!(
            pages.dump_excluded_and_locked_kb >= 2 * page_kb,
            "two volumes, two locked dump-excluded key pages: {seen:?}"
        );
    }
    qemu_io(
        server.uri("b"),
        &["write -P 0x11 512 4096", "read -P 0x11 512 4096"],
    );
    assert!(
        !server.stderr().contains(MLOCK_WARNING),
        "{}",
        server.stderr()
    );
    server.stop();
}
