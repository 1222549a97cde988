//! Test support for volumes: a KMS with an admin user and a key, `envol
//! volume create/info` as real processes with AWS profiles, and a running
//! `envol serve` ([`VolumeServer`]) whose NBD URIs are read from its stdout.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kms::{Creds, KmsServer, envol, parse_creds};

pub const MIB: u64 = 1024 * 1024;
/// Where the data area starts in a volume file (both superblock copies and
/// padding come before it).
pub const DATA_OFFSET: u64 = MIB;
pub const KEY_ALIAS: &str = "alias/DemoKey";
/// The user who creates the key (and so is allowed to use it).
pub const ADMIN: &str = "myadmin";

/// How long a server may take to come up, or a refused `serve` to exit.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A KMS (`envol kms serve`), an AWS config directory holding a profile for
/// `myadmin`, a key `alias/DemoKey` created by `myadmin` (so the default key
/// policy lets `myadmin` use it), and a directory for volumes and sockets.
pub struct Fixture {
    pub kms: KmsServer,
    /// Shared credentials and config files (`credentials`, `config`).
    pub aws_home: tempfile::TempDir,
    /// Volumes, sockets, scratch files.
    pub dir: tempfile::TempDir,
    pub admin: Creds,
    pub key_arn: String,
    pub rt: tokio::runtime::Runtime,
}

/// A volume file made by `envol volume create`.
#[derive(Debug, Clone)]
pub struct Vol {
    pub path: PathBuf,
    pub uuid: String,
    pub size: u64,
    pub sector_size: u32,
}

impl Vol {
    /// The default export name: the file name without its extension.
    pub fn export(&self) -> String {
        self.path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn read_raw(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::on(KmsServer::start())
    }

    /// A fixture on a KMS started by the caller (with more `kms serve`
    /// arguments, say).
    pub fn on(kms: KmsServer) -> Fixture {
        let aws_home = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut fx = Fixture {
            kms,
            aws_home,
            dir,
            admin: Creds {
                access_key_id: String::new(),
                secret: String::new(),
            },
            key_arn: String::new(),
            rt,
        };
        fx.admin = fx.add_user(ADMIN);
        let admin = fx.kms.client(&fx.admin);
        fx.key_arn = fx.rt.block_on(async {
            let key = admin
                .create_key()
                .description("envol volume test key")
                .send()
                .await
                .expect("CreateKey as myadmin");
            let meta = key.key_metadata().expect("key metadata");
            admin
                .create_alias()
                .alias_name(KEY_ALIAS)
                .target_key_id(meta.key_id())
                .send()
                .await
                .expect("CreateAlias");
            meta.arn().expect("key ARN").to_string()
        });
        fx
    }

    /// `envol kms user add NAME --profile NAME`, writing the profile into
    /// this fixture's AWS config directory. Returns the user's keys.
    pub fn add_user(&self, name: &str) -> Creds {
        let out = run_ok(
            self.aws_env(envol().args(["kms", "user", "add", name, "--profile", name, "--data"]))
                .arg(self.kms.data()),
        );
        assert!(out.contains(&format!("Wrote profile {name}")), "{out}");
        parse_creds(&out)
    }

    /// The key's id (the last part of its ARN).
    pub fn key_id(&self) -> &str {
        self.key_arn.rsplit('/').next().unwrap()
    }

    /// Points a command at this fixture's AWS config files and removes every
    /// ambient AWS setting, so only what a test passes is used.
    pub fn aws_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_KMS",
            "AWS_CA_BUNDLE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env(
            "AWS_SHARED_CREDENTIALS_FILE",
            self.aws_home.path().join("credentials"),
        )
        .env("AWS_CONFIG_FILE", self.aws_home.path().join("config"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // The default log level: what a user sees.
        .env_remove("ENVOL_LOG")
        .env_remove("RUST_BACKTRACE")
    }

    /// `envol ARGS...` with the fixture's AWS files (no profile, no endpoint).
    pub fn envol(&self, args: &[&str]) -> Command {
        let mut cmd = envol();
        self.aws_env(&mut cmd);
        cmd.args(args);
        cmd
    }

    /// `envol ARGS... --endpoint URL --profile PROFILE`.
    pub fn envol_as(&self, profile: &str, args: &[&str]) -> Command {
        let mut cmd = self.envol(args);
        cmd.args(["--endpoint", &self.kms.endpoint, "--profile", profile]);
        cmd
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `envol volume create DIR/FILE --size SIZE --sector-size N --key
    /// alias/DemoKey` as myadmin; returns the volume with the uuid printed.
    pub fn create_volume(&self, file: &str, size: u64, sector_size: u32) -> Vol {
        self.create_volume_at(self.path(file).to_str().unwrap(), size, sector_size)
    }

    /// [`Self::create_volume`] of a volume address as the user writes it
    /// (a path, or `rbd:POOL/IMAGE` in the cluster `CEPH_CONF` names).
    pub fn create_volume_at(&self, volume: &str, size: u64, sector_size: u32) -> Vol {
        let mut cmd = self.envol_as(
            ADMIN,
            &[
                "volume",
                "create",
                volume,
                "--size",
                &size.to_string(),
                "--key",
                KEY_ALIAS,
                "--sector-size",
                &sector_size.to_string(),
            ],
        );
        let out = run_ok(&mut cmd);
        Vol {
            uuid: parse_uuid(&out),
            path: PathBuf::from(volume),
            size,
            sector_size,
        }
    }

    /// `envol volume info PATH --json`, parsed.
    pub fn info_json(&self, path: &Path) -> serde_json::Value {
        let out = run_ok(&mut self.envol(&["volume", "info", path.to_str().unwrap(), "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("info --json: {e}:\n{out}"))
    }

    /// The volume's data key, unwrapped by the KMS (as myadmin) from the
    /// superblock's wrapped key and the volume's encryption context.
    pub fn unwrap_data_key(&self, vol: &Vol) -> Vec<u8> {
        use base64::Engine;
        let info = self.info_json(&vol.path);
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(info["wrapped_key"].as_str().expect("wrapped_key"))
            .expect("wrapped_key is base64");
        let client = self.kms.client(&self.admin);
        let uuid = vol.uuid.clone();
        self.rt.block_on(async move {
            let out = client
                .decrypt()
                .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
                .encryption_context("envol:volume", uuid)
                .send()
                .await
                .expect("KMS Decrypt of the volume's wrapped key");
            out.plaintext().expect("plaintext").as_ref().to_vec()
        })
    }

    /// `envol serve` of `vol` (default export name) as `profile`.
    pub fn serve(&self, profile: &str, vol: &Vol) -> VolumeServer {
        self.serve_many(profile, &[(vol, None)], &[])
    }

    /// `envol serve` of `vol` on a given socket path (e.g. the one a stopped
    /// server used).
    pub fn serve_on(&self, profile: &str, vol: &Vol, socket: &Path) -> VolumeServer {
        let mut cmd = self.serve_command(profile, &[(vol, None)], socket, &[]);
        VolumeServer::spawn(&mut cmd, socket.to_path_buf(), &[vol.export()])
    }

    /// `envol serve PATH[=NAME]... --socket DIR/sN.sock EXTRA... --endpoint
    /// URL --profile P`; waits for the `nbd+unix://` URI of every export.
    pub fn serve_many(
        &self,
        profile: &str,
        vols: &[(&Vol, Option<&str>)],
        extra: &[&str],
    ) -> VolumeServer {
        let socket = self.fresh_socket_path();
        let mut cmd = self.serve_command(profile, vols, &socket, extra);
        let names: Vec<String> = vols
            .iter()
            .map(|(v, n)| n.map(str::to_string).unwrap_or_else(|| v.export()))
            .collect();
        VolumeServer::spawn(&mut cmd, socket, &names)
    }

    /// A socket path under the fixture's directory that does not exist yet.
    pub fn fresh_socket_path(&self) -> PathBuf {
        for i in 0.. {
            let p = self.path(&format!("s{i}.sock"));
            if !p.exists() {
                return p;
            }
        }
        unreachable!()
    }

    pub fn serve_command(
        &self,
        profile: &str,
        vols: &[(&Vol, Option<&str>)],
        socket: &Path,
        extra: &[&str],
    ) -> Command {
        let mut args: Vec<String> = vec!["serve".into()];
        for (v, name) in vols {
            let p = v.path.to_str().unwrap();
            args.push(match name {
                Some(n) => format!("{p}={n}"),
                None => p.to_string(),
            });
        }
        args.push("--socket".into());
        args.push(socket.to_str().unwrap().into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.envol_as(profile, &args)
    }

    /// Runs a `serve` that must be refused: it must exit (non-zero) on its
    /// own within the start timeout, and must not leave its socket behind.
    pub fn serve_refused(&self, profile: &str, vol: &Vol) -> Output {
        let socket = self.fresh_socket_path();
        let mut cmd = self.serve_command(profile, &[(vol, None)], &socket, &[]);
        let out = output_with_timeout(&mut cmd, START_TIMEOUT);
        eprintln!(
            "refused serve ({}) said: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        assert!(
            !out.status.success(),
            "{cmd:?} should have failed but exited 0\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !socket.exists(),
            "a refused serve left its socket {} behind",
            socket.display()
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("nbd+unix://"),
            "a refused serve printed an export URI:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out
    }
}

/// The uuid from `volume create`'s "  uuid: <uuid>" line.
pub fn parse_uuid(stdout: &str) -> String {
    let uuid = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("uuid:").map(|u| u.trim().to_string()))
        .unwrap_or_else(|| panic!("no `uuid:` line in volume create output:\n{stdout}"));
    assert!(
        uuid::Uuid::parse_str(&uuid).is_ok(),
        "not a uuid: {uuid:?} in:\n{stdout}"
    );
    uuid
}

/// Runs a command that must succeed; returns stdout. Fails with both streams.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns (stdout, stderr).
pub fn run_fails(cmd: &mut Command) -> (String, String) {
    let out = output_with_timeout(cmd, Duration::from_secs(120));
    eprintln!(
        "failing command ({}) said: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    assert!(
        !out.status.success(),
        "{:?} should have failed but succeeded:\nstdout:\n{}\nstderr:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An error report must be one line, and never a panic or a backtrace.
pub fn assert_one_clean_line(what: &str, stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got:\n{stderr}"
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr has {bad:?}:\n{stderr}"
        );
    }
}

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr piped; a
/// command that cannot start fails the test.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `Command::output` with a deadline: a process still running after
/// `timeout` is killed and the test fails.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = spawn_piped(cmd);
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; killed it\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// The bytes a write of `tag` puts in a slot of `len` bytes (the slot
/// workloads of the kill and failover tests); a tag of 0 is the zeros of a
/// new volume. Every byte depends on the tag and its offset, so a slot
/// holding another write's bytes, or a mix, never matches.
pub fn tagged_slot(tag: u64, len: usize) -> Vec<u8> {
    if tag == 0 {
        return vec![0; len];
    }
    let t = tag.to_le_bytes();
    (0..len).map(|i| t[i % 8] ^ (i / 8) as u8).collect()
}

/// A spawned process whose stderr and stdout are drained by threads of
/// their own, so it never blocks on a full pipe.
pub struct Drained {
    pub child: Child,
    /// Everything it wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread draining stderr: done once the process has exited.
    pub stderr_drain: std::thread::JoinHandle<()>,
    /// Its stdout, line by line; disconnected once stdout is closed.
    pub lines: mpsc::Receiver<String>,
}

/// Spawns `cmd` (stdin from /dev/null) with stdout and stderr drained.
pub fn spawn_drained(cmd: &mut Command) -> Drained {
    let mut child = spawn_piped(cmd);
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stderr_drain = {
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens (after readiness), keep draining regardless.
            let _ = tx.send(line);
        }
    });
    Drained {
        child,
        stderr,
        stderr_drain,
        lines: rx,
    }
}

/// A running `envol serve` process.
pub struct VolumeServer {
    child: Option<Child>,
    pub socket: PathBuf,
    /// (export name, `nbd+unix://` URI) as printed on stdout.
    pub uris: Vec<(String, String)>,
    /// Everything printed on stdout up to readiness.
    pub banner: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread draining stderr: done once the process has exited.
    stderr_drain: Option<std::thread::JoinHandle<()>>,
}

impl VolumeServer {
    /// Spawns `cmd`, reads stdout until a `nbd+unix://` URI for each of
    /// `names` was printed, then keeps draining stdout and stderr.
    pub fn spawn(cmd: &mut Command, socket: PathBuf, names: &[String]) -> VolumeServer {
        let Drained {
            child,
            stderr,
            stderr_drain,
            lines: rx,
        } = spawn_drained(cmd);
        let mut server = VolumeServer {
            child: Some(child),
            socket,
            uris: Vec::new(),
            banner: String::new(),
            stderr,
            stderr_drain: Some(stderr_drain),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !names
            .iter()
            .all(|n| server.uris.iter().any(|(name, _)| name == n))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    server.banner.push_str(&line);
                    server.banner.push('\n');
                    // nbds+unix:// when the server requires TLS.
                    if let Some(uri) = line
                        .split_whitespace()
                        .find(|w| w.starts_with("nbd+unix://") || w.starts_with("nbds+unix://"))
                    {
                        let name = uri
                            .trim_start_matches("nbd+unix:///")
                            .trim_start_matches("nbds+unix:///")
                            .split('?')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        server.uris.push((name, uri.to_string()));
                    }
                }
                Err(e) => {
                    let status = server.child.as_mut().unwrap().try_wait().ok().flatten();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "{cmd:?} did not print nbd+unix URIs for {names:?} ({e}; exit status {status:?})\nstdout:\n{}\nstderr:\n{}",
                        server.banner,
                        server.stderr()
                    );
                }
            }
        }
        assert!(
            server.socket.exists(),
            "serve announced its exports but {} does not exist",
            server.socket.display()
        );
        server
    }

    /// The printed `nbd+unix://` URI of export `name`.
    pub fn uri(&self, name: &str) -> &str {
        self.uris
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_else(|| panic!("no URI for export {name:?}; stdout:\n{}", self.banner))
    }

    /// The only (or first) export's URI.
    pub fn first_uri(&self) -> &str {
        &self.uris[0].1
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A synchronous connection to `export` with the `nbd` crate
    /// (NBD_OPT_EXPORT_NAME).
    pub fn connect_nbd_crate(&self) -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::connect(&self.socket).unwrap()
    }

    /// Waits up to `timeout` for the server to exit on its own; `None` if
    /// it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server already stopped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Everything it said, up to its last line.
                if let Some(drain) = self.stderr_drain.take() {
                    let _ = drain.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits: the server must finish, flush and exit 0.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "envol serve exited with {status} after SIGTERM (expected 0)\nstderr:\n{}",
            self.stderr()
        );
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "envol serve did not exit within 20 s of SIGTERM\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VolumeServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where `tool` is on PATH (plus the sbin directories), if anywhere.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Fails the test (never skips) when `tool` is missing, naming the Debian
/// package that provides it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed; this test needs it. \
             Install it with: apt-get install -y {package}"
        )
    })
}

/// fio's nbd engine against `uri`: `jobs` (the workload, with
/// `--verify=crc32c`) writes and verifies, then the same jobs on new
/// connections only read and verify (`--verify_only`). Each pass must
/// succeed within `timeout` and report no bad block. fio keeps its
/// verify state in `dir`.
pub fn fio_write_then_verify(dir: &Path, uri: &str, jobs: &[&str], timeout: Duration) {
    for verify_only in [false, true] {
        let mut c = Command::new("fio");
        c.current_dir(dir)
            .args(["--ioengine=nbd", &format!("--uri={uri}")])
            .args(jobs);
        if verify_only {
            c.arg("--verify_only");
        }
        let out = output_with_timeout(&mut c, timeout);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{c:?} failed:\n{text}");
        assert!(!text.contains("verify: bad"), "{text}");
    }
}
