//! End to end: `envol volume create` / `volume info` / `serve` as real
//! processes against a real `envol kms serve`, driven by real NBD clients
//! (libnbd's nbdinfo, nbdcopy and nbdfuse, qemu-io, the `nbd` crate, the
//! kernel's loop device and ext4), and the data area checked with an
//! independent XTS implementation (OpenSSL via Python's `cryptography`).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nbd::run_tool;
use common::tools::{e2e_file, require_fuse_harness_tools};
use common::volume::*;
use rand::RngCore;

// ------------------------------------------------------------------ helpers

/// Runs qemu-io on `uri` (format raw) with `cmds`; fails on any error or
/// pattern mismatch (qemu-io reports those on its output but exits 0).
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(uri);
    let out = run_tool("qemu-io", &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for bad in ["failed", "error", "Error", "Pattern"] {
        assert!(
            !text.contains(bad),
            "qemu-io {cmds:?} on {uri} reported a problem:\n{text}"
        );
    }
    text
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|c| c.to_string()).collect()
}

/// A byte-level model of what the volume should hold, for writes made with
/// `write -P`, and `read -P` commands that verify every run of it.
struct Model {
    bytes: Vec<u8>,
}

impl Model {
    fn new(len: usize) -> Self {
        Model {
            bytes: vec![0; len],
        }
    }

    /// Applies `write -P pattern offset len` and returns that command.
    fn write(&mut self, pattern: u8, offset: usize, len: usize) -> String {
        self.bytes[offset..offset + len].fill(pattern);
        format!("write -P {pattern:#04x} {offset} {len}")
    }

    /// One `read -P` per run of equal bytes: verifies the whole model.
    fn verify_cmds(&self) -> Vec<String> {
        let mut cmds = Vec::new();
        let mut start = 0;
        for i in 1..=self.bytes.len() {
            if i == self.bytes.len() || self.bytes[i] != self.bytes[start] {
                cmds.push(format!(
                    "read -P {:#04x} {start} {}",
                    self.bytes[start],
                    i - start
                ));
                start = i;
            }
        }
        cmds
    }
}

/// The unaligned writes every sector size must get right: inside a sector,
/// across a 512-byte and a 4096-byte boundary, two bytes straddling a
/// 4 KiB boundary, a whole sector plus one byte either side.
fn unaligned_writes(model: &mut Model) -> Vec<String> {
    vec![
        model.write(0xab, 1000, 5000),
        model.write(0xcd, 4095, 2),
        model.write(0x5a, 511, 514),
        model.write(0x17, 8191, 4098),
        model.write(0xe1, 20000, 1),
        model.write(0x3c, 12287, 8193),
    ]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decrypts whole sectors of a data area with OpenSSL's AES-256-XTS (Python
/// `cryptography`), tweak = sector number as 16 bytes little endian. The key
/// goes through stdin, never the command line.
fn openssl_xts_decrypt(key: &[u8], sector_size: u32, first_sector: u64, data: &[u8]) -> Vec<u8> {
    assert_eq!(key.len(), 64, "aes-xts-plain64 uses a 512-bit key");
    let script = "import sys\n\
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        ss = int(sys.argv[1]); first = int(sys.argv[2])\n\
        raw = sys.stdin.buffer.read(); key = raw[:64]; data = raw[64:]\n\
        out = bytearray()\n\
        for i in range(0, len(data), ss):\n\
        \x20   tweak = (first + i // ss).to_bytes(16, 'little')\n\
        \x20   d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()\n\
        \x20   out += d.update(data[i:i + ss]) + d.finalize()\n\
        sys.stdout.buffer.write(bytes(out))\n";
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &sector_size.to_string(),
            &first_sector.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (with pip's `cryptography`)");
    let mut stdin = child.stdin.take().unwrap();
    let mut input = key.to_vec();
    input.extend_from_slice(data);
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "the OpenSSL XTS oracle failed (is `cryptography` installed? pip install cryptography):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `fuse-mount-check.sh SOCKET EXPORT`; fails the test unless it
/// passes. Returns its output.
fn fuse_mount_check(socket: &Path, export: &str, work_base: &Path, keep: bool) -> String {
    require_fuse_harness_tools();
    let mut cmd = Command::new("bash");
    cmd.arg(e2e_file("fuse-mount-check.sh"))
        .arg(socket)
        .arg(export)
        // The script's own defaults (BIG_MB=50): the volumes are 128 MiB.
        .env_remove("BIG_MB")
        .env_remove("NBDFUSE_CONNECTIONS")
        .env_remove("MKFS_OPTS")
        .env("STEP_TIMEOUT", "90")
        .env("WORK_BASE", work_base)
        .env("KEEP_WORKDIR", if keep { "1" } else { "0" });
    let out = output_with_timeout(&mut cmd, Duration::from_secs(600));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fuse-mount-check.sh {} {export} failed ({}):\n{text}",
        socket.display(),
        out.status
    );
    assert!(text.contains("RESULT: PASS"), "{text}");
    text
}

/// Runs a command (with a timeout) for a mount helper; returns success.
fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "60", program]).args(args);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(90));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {args:?}: {}: {text}", out.status))
    }
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*want))
}

/// nbdfuse (read-only) → loop device (read-only) → ext4 mounted read-only.
/// Torn down in reverse order on drop, whatever happened.
struct RoMount {
    fusedir: PathBuf,
    mnt: PathBuf,
    nbdfuse: Option<Child>,
    loopdev: Option<String>,
}

impl RoMount {
    fn attach(uri: &str, dir: &Path) -> RoMount {
        let fusedir = dir.join("fuse");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&fusedir).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let mut m = RoMount {
            fusedir,
            mnt,
            nbdfuse: None,
            loopdev: None,
        };
        let nbdfuse = require_tool("nbdfuse", "libnbd-bin");
        m.nbdfuse = Some(
            Command::new(nbdfuse)
                .arg("-r")
                .arg(&m.fusedir)
                .arg(uri)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn nbdfuse"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(is_mounted(&m.fusedir) && m.fusedir.join("nbd").exists()) {
            if let Some(status) = m.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
                m.nbdfuse = None;
                panic!("nbdfuse exited ({status}) before its file appeared");
            }
            assert!(Instant::now() < deadline, "nbdfuse not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let image = m.fusedir.join("nbd");
        let dev = sh(
            "losetup",
            &["--find", "--show", "-r", image.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dev = dev.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        m.loopdev = Some(dev.clone());
        sh(
            "mount",
            &["-t", "ext4", "-o", "ro", &dev, m.mnt.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        m
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        if is_mounted(&self.mnt) && sh("umount", &[&mnt]).is_err() {
            let _ = sh("umount", &["-l", &mnt]);
        }
        if let Some(dev) = self.loopdev.take() {
            let _ = sh("losetup", &["-d", &dev]);
        }
        let fuse = self.fusedir.to_str().unwrap().to_string();
        if is_mounted(&self.fusedir) && sh("fusermount3", &["-u", &fuse]).is_err() {
            let _ = sh("umount", &["-l", &fuse]);
        }
        if let Some(mut c) = self.nbdfuse.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// -------------------------------------------------------------------- tests

/// (1) nbdinfo sees each export's size and block sizes (minimum 1 or the
/// sector size, preferred the sector size, maximum 32 MiB), for a 4096- and
/// a 512-sector volume served together, one by its default name (the file
/// name without extension) and one by `PATH=NAME`. KMS endpoint and profile
/// come from AWS_ENDPOINT_URL_KMS and AWS_PROFILE here. `--read-only` is
/// reported as such.
#[test]
fn nbdinfo_reports_size_and_block_sizes() {
    let fx = Fixture::new();
    let big = fx.create_volume("big4k.envol", 64 * MIB, 4096);
    let small = fx.create_volume("small512.img", 3 * MIB + 512, 512);

    let socket = fx.fresh_socket_path();
    let mut cmd = fx.envol(&[
        "serve",
        big.path.to_str().unwrap(),
        &format!("{}=five12", small.path.display()),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    cmd.env("AWS_ENDPOINT_URL_KMS", &fx.kms.endpoint)
        .env("AWS_PROFILE", ADMIN);
    let server = VolumeServer::spawn(&mut cmd, socket, &["big4k".into(), "five12".into()]);

    for (export, vol) in [("big4k", &big), ("five12", &small)] {
        let out = run_tool("nbdinfo", &["--json", server.uri(export)]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let e = &json["exports"][0];
        let ss = u64::from(vol.sector_size);
        assert_eq!(e["export-name"], export, "{json}");
        assert_eq!(e["export-size"], vol.size, "{export}: {json}");
        let min = e["block_size_minimum"]
            .as_u64()
            .expect("minimum block size");
        assert!(min == 1 || min == ss, "{export}: minimum {min}: {json}");
        assert_eq!(e["block_size_preferred"], ss, "{export}: {json}");
        assert_eq!(e["block_size_maximum"], 32 * MIB, "{export}: {json}");
        assert_eq!(e["is_read_only"], false, "{export}: {json}");
        for cap in ["can_flush", "can_fua", "can_trim", "can_zero"] {
            assert_eq!(e[cap], true, "{export}: {cap}: {json}");
        }
    }
    server.stop();

    let ro = fx.serve_many(ADMIN, &[(&big, None)], &["--read-only"]);
    let out = run_tool("nbdinfo", &["--json", ro.uri("big4k")]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exports"][0]["is_read_only"], true, "{json}");
    assert_eq!(json["exports"][0]["export-size"], 64 * MIB, "{json}");
    ro.stop();
}

/// (2) nbdcopy: 64 MiB of random data in through the export and back out,
/// byte-identical; the raw file does not hold the plaintext.
#[test]
fn nbdcopy_round_trip_64_mib() {
    let fx = Fixture::new();
    let vol = fx.create_volume("copy.envol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.uri("copy").to_string();

    let mut data = vec![0u8; 64 * MIB as usize];
    rand::thread_rng().fill_bytes(&mut data);
    let src = fx.path("in.bin");
    let dst = fx.path("out.bin");
    std::fs::write(&src, &data).unwrap();
    run_tool("nbdcopy", &[src.to_str().unwrap(), &uri]);
    std::fs::File::create(&dst).unwrap();
    run_tool("nbdcopy", &[&uri, dst.to_str().unwrap()]);
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "nbdcopy read back different bytes");
    server.stop();

    // At rest it is ciphertext: a 64-byte slice of the plaintext is nowhere.
    let raw = vol.read_raw();
    assert_eq!(raw.len() as u64, DATA_OFFSET + vol.size);
    for at in [0usize, 4096 * 1000 + 17, data.len() - 64] {
        assert!(
            find(&raw, &data[at..at + 64]).is_none(),
            "plaintext at {at} found in the volume file"
        );
    }
}

fn qemu_io_unaligned(sector_size: u32) {
    let fx = Fixture::new();
    let vol = fx.create_volume("qio.envol", 64 * MIB, sector_size);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.uri("qio").to_string();

    let mut model = Model::new(40 * 1024);
    // The brief's case first, on its own, then the rest.
    qemu_io(
        &uri,
        &s(&["write -P 0xab 1000 5000", "read -P 0xab 1000 5000"]),
    );
    let writes = unaligned_writes(&mut model);
    qemu_io(&uri, &writes);
    // A fresh connection verifies every byte of the model, zeros included.
    qemu_io(&uri, &model.verify_cmds());
    // The last bytes of the device, unaligned.
    let end = vol.size;
    qemu_io(
        &uri,
        &[
            format!("write -P 0x99 {} 3", end - 3),
            format!("read -P 0x99 {} 3", end - 3),
            format!("read -P 0 {} {}", end - 8192, 8192 - 3),
        ],
    );
    server.stop();
}

/// (3a) qemu-io unaligned writes and pattern reads, 4096-byte sectors.
#[test]
fn qemu_io_unaligned_patterns_4096() {
    qemu_io_unaligned(4096);
}

/// (3b) The same on a volume with 512-byte sectors.
#[test]
fn qemu_io_unaligned_patterns_512() {
    qemu_io_unaligned(512);
}

/// (4) The `nbd` crate (NBD_OPT_EXPORT_NAME, a second independent client)
/// reads back exactly what qemu-io wrote, after the server was stopped with
/// SIGTERM and started again; and qemu-io reads what the crate wrote.
#[test]
fn nbd_crate_reads_what_qemu_io_wrote() {
    let fx = Fixture::new();
    let vol = fx.create_volume("cross.envol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let mut model = Model::new(40 * 1024);
    let writes = unaligned_writes(&mut model);
    qemu_io(server.uri("cross"), &writes);
    server.stop();

    let server = fx.serve(ADMIN, &vol);
    let mut stream = server.connect_nbd_crate();
    let info = nbd::client::handshake(&mut stream, b"cross").expect("EXPORT_NAME handshake");
    assert_eq!(info.size, vol.size);
    assert!(!info.readonly);
    let mut client = nbd::client::NbdClient::new(&mut stream, &info);
    let mut back = vec![0u8; model.bytes.len()];
    client.seek(SeekFrom::Start(0)).unwrap();
    client.read_exact(&mut back).unwrap();
    if let Some(i) = (0..back.len()).find(|&i| back[i] != model.bytes[i]) {
        panic!(
            "byte {i}: nbd crate read {:#04x}, qemu-io wrote {:#04x}",
            back[i], model.bytes[i]
        );
    }

    // The other direction: the crate writes runs of distinct bytes at an
    // odd offset, qemu-io verifies every byte of every run.
    let base = 5 * MIB + 333;
    let runs: Vec<(u8, usize)> = vec![(0x11, 1), (0x22, 4095), (0x33, 10_000), (0x44, 513)];
    let mut data = Vec::new();
    for (b, n) in &runs {
        data.extend(std::iter::repeat_n(*b, *n));
    }
    client.seek(SeekFrom::Start(base)).unwrap();
    client.write_all(&data).unwrap();
    client.flush().unwrap();
    drop(stream);
    let mut cmds = vec![format!("read -P 0 {} 333", base - 333)];
    let mut off = base;
    for (b, n) in &runs {
        cmds.push(format!("read -P {b:#04x} {off} {n}"));
        off += *n as u64;
    }
    cmds.push(format!("read -P 0 {off} 4096"));
    qemu_io(server.uri("cross"), &cmds);
    server.stop();
}

/// (5a) tests/e2e/fuse-mount-check.sh (nbdfuse → loop → mkfs.ext4 → mount,
/// write, re-attach, fsck, verify) passes against `envol serve`.
#[test]
fn fuse_mount_check_passes() {
    let fx = Fixture::new();
    let vol = fx.create_volume("fuse.envol", 128 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    fuse_mount_check(&server.socket, "fuse", &fx.path("e2e"), false);
    server.stop();
}

/// (5b) The same check, then the server is stopped (SIGTERM) and started
/// again on the same volume and socket, and the filesystem written before
/// the restart is mounted again (nbdfuse → loop → ext4, read-only) and
/// every file the check wrote verified against its manifest.
#[test]
fn fuse_mount_check_survives_server_restart() {
    let fx = Fixture::new();
    let vol = fx.create_volume("fuser.envol", 128 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let work_base = fx.path("e2e");
    fuse_mount_check(&server.socket, "fuser", &work_base, true);
    let socket = server.socket.clone();
    server.stop();

    // The kept work dir has the checksums of everything it wrote.
    let run = std::fs::read_dir(&work_base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest.sha256").is_file())
        .expect("fuse-mount-check kept its work dir with manifest.sha256");
    let manifest = run.join("manifest.sha256");
    let listed = std::fs::read_to_string(&manifest).unwrap();
    assert!(listed.contains("./big.bin") && listed.contains("./hello.txt"));

    // Same volume, same socket path.
    let server = fx.serve_on(ADMIN, &vol, &socket);
    {
        let m = RoMount::attach(server.uri("fuser"), &fx.path("remount"));
        let out = Command::new("sha256sum")
            .args(["--strict", "-c"])
            .arg(&manifest)
            .current_dir(&m.mnt)
            .output()
            .expect("sha256sum");
        assert!(
            out.status.success(),
            "files written before the restart differ after it:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let checked = String::from_utf8_lossy(&out.stdout).matches(": OK").count();
        assert_eq!(checked, listed.lines().count());
        let hello = std::fs::read_to_string(m.mnt.join("hello.txt")).unwrap();
        assert!(hello.starts_with("hello from fuse-mount-check"), "{hello}");
    }
    server.stop();
}

/// (6) A user the key policy does not allow (S3DemoUser) cannot attach: serve
/// exits non-zero with one line naming the volume, the key and
/// AccessDenied, and never creates its socket. The same user can read the
/// volume file itself — and finds only ciphertext there.
#[test]
fn user_not_in_key_policy_cannot_serve_and_file_is_ciphertext() {
    let fx = Fixture::new();
    fx.add_user("S3DemoUser");
    let vol = fx.create_volume("secret.envol", 64 * MIB, 4096);
    let marker = b"TOP-SECRET payroll record, plaintext marker 0123456789; ".repeat(300);
    let server = fx.serve(ADMIN, &vol);
    {
        let mut stream = server.connect_nbd_crate();
        let info = nbd::client::handshake(&mut stream, b"secret").unwrap();
        let mut c = nbd::client::NbdClient::new(&mut stream, &info);
        c.seek(SeekFrom::Start(3 * MIB + 100)).unwrap();
        c.write_all(&marker).unwrap();
        c.flush().unwrap();
    }
    server.stop();

    let out = fx.serve_refused("S3DemoUser", &vol);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert_one_clean_line("serve as S3DemoUser", &stderr);
    assert!(
        stderr.contains("secret.envol") || stderr.contains("secret"),
        "the error does not name the volume: {stderr}"
    );
    assert!(
        stderr.contains(fx.key_id()) || stderr.contains(KEY_ALIAS),
        "the error does not name the key ({}): {stderr}",
        fx.key_arn
    );

    // The file is readable without the KMS: ciphertext only.
    let raw = std::fs::read(&vol.path).expect("the volume file is a readable file");
    assert!(find(&raw, b"TOP-SECRET").is_none(), "plaintext at rest");
    assert!(find(&raw, b"payroll").is_none(), "plaintext at rest");
    let area = &raw[(DATA_OFFSET + 3 * MIB) as usize..(DATA_OFFSET + 3 * MIB) as usize + 8192];
    assert!(
        area.iter().any(|&b| b != 0),
        "the written sectors hold no data at all"
    );
    // Nor may that user create a volume under the key; nothing is left behind.
    let denied = fx.path("denied.envol");
    let (_, stderr) = run_fails(&mut fx.envol_as(
        "S3DemoUser",
        &[
            "volume",
            "create",
            denied.to_str().unwrap(),
            "--size",
            "4M",
            "--key",
            KEY_ALIAS,
        ],
    ));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert_one_clean_line("volume create as S3DemoUser", &stderr);
    assert!(
        !denied.exists(),
        "a refused create left {} behind",
        denied.display()
    );

    // The admin still can.
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.uri("secret"),
        &s(&["read -P 0x54 3145828 1", "read -P 0 0 1048576"]),
    );
    server.stop();
}

/// (7) A marker written through NBD never appears in the raw file, and the
/// data area decrypts with the data key (unwrapped by the KMS from `volume
/// info --json`'s wrapped key and the volume's context) and OpenSSL's
/// AES-256-XTS, tweak = sector number: the no-lock-in promise, for 4096-
/// and 512-byte sectors.
#[test]
fn data_area_decrypts_independently_with_openssl() {
    let fx = Fixture::new();
    for (sector_size, file) in [(4096u32, "xts4k.envol"), (512, "xts512.envol")] {
        let vol = fx.create_volume(file, 64 * MIB, sector_size);
        let unit = b"ENVOL-MARKER/plaintext/0123456789/";
        let marker: Vec<u8> = unit.iter().copied().cycle().take(MIB as usize).collect();
        let offset = 7 * MIB + 3 * 4096 + 100; // unaligned on purpose
        let server = fx.serve(ADMIN, &vol);
        {
            let mut stream = server.connect_nbd_crate();
            let info = nbd::client::handshake(&mut stream, vol.export().as_bytes()).unwrap();
            let mut c = nbd::client::NbdClient::new(&mut stream, &info);
            c.seek(SeekFrom::Start(offset)).unwrap();
            c.write_all(&marker).unwrap();
            c.flush().unwrap();
        }
        server.stop();

        let raw = vol.read_raw();
        assert!(
            find(&raw, &unit[..16]).is_none(),
            "{file}: marker found in the raw volume file"
        );

        let key = fx.unwrap_data_key(&vol);
        assert_eq!(key.len(), 64, "{file}: data key length");
        let ss = u64::from(sector_size);
        let first = offset / ss;
        let end = (offset + marker.len() as u64).div_ceil(ss);
        let from = (DATA_OFFSET + first * ss) as usize;
        let to = (DATA_OFFSET + end * ss) as usize;
        let plain = openssl_xts_decrypt(&key, sector_size, first, &raw[from..to]);
        assert_eq!(plain.len(), to - from);
        let at = (offset - first * ss) as usize;
        assert!(
            plain[at..at + marker.len()] == marker[..],
            "{file}: OpenSSL's XTS decryption of the data area differs from what was written"
        );
        // Negative control: the oracle is sensitive to the tweak.
        let shifted = openssl_xts_decrypt(&key, sector_size, first + 1, &raw[from..to]);
        assert!(
            shifted[at..at + marker.len()] != marker[..],
            "{file}: decrypting with the wrong tweak gave the plaintext too"
        );
        assert!(
            plain[..at].iter().all(|&b| b == 0),
            "{file}: bytes before the marker in its first sector"
        );
        assert!(
            plain[at + marker.len()..].iter().all(|&b| b == 0),
            "{file}: bytes after the marker in its last sector"
        );
    }
}

/// `volume info --json` describes the volume without the KMS (the KMS is
/// stopped first).
#[test]
fn volume_info_json_describes_the_volume() {
    let mut fx = Fixture::new();
    let vol = fx.create_volume("info.envol", 64 * MIB, 512);
    fx.kms.stop();
    let info = fx.info_json(&vol.path);
    assert_eq!(info["uuid"], vol.uuid.as_str(), "{info}");
    assert_eq!(info["size"], 64 * MIB, "{info}");
    assert_eq!(info["sector_size"], 512, "{info}");
    assert_eq!(info["cipher"], "aes-xts-plain64", "{info}");
    assert_eq!(info["data_offset"], DATA_OFFSET, "{info}");
    assert_eq!(info["key_arn"], fx.key_arn.as_str(), "{info}");
    assert_eq!(
        info["encryption_context"],
        serde_json::json!({"envol:volume": vol.uuid}),
        "{info}"
    );
    assert!(info["wrapped_key"].as_str().is_some_and(|k| !k.is_empty()));
    let created = info["created"].as_str().expect("created");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "created {created:?} is not RFC 3339"
    );
    assert!(
        info["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("info.envol")),
        "{info}"
    );
    for copy in ["primary", "secondary"] {
        let c = &info["superblocks"][copy];
        assert_eq!(c["valid"], true, "{copy}: {info}");
        assert_eq!(c["sequence"], 1, "{copy}: {info}");
        assert!(c["error"].is_null(), "{copy}: {info}");
    }
    // The data area is sparse: superblocks only.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&vol.path).unwrap();
    assert_eq!(meta.len(), DATA_OFFSET + 64 * MIB);
    assert!(
        meta.blocks() * 512 <= DATA_OFFSET,
        "a new volume file should be sparse: {} bytes allocated",
        meta.blocks() * 512
    );
}

/// (8a) A corrupted primary superblock: info shows it invalid and the
/// secondary valid; serve still attaches and the data reads back.
/// (8b) Both copies corrupted: info and serve fail with one clear line
/// mentioning the superblock, no panic.
#[test]
fn corrupted_superblocks() {
    let fx = Fixture::new();
    let vol = fx.create_volume("sb.envol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.uri("sb"), &s(&["write -P 0x42 4000 10000"]));
    server.stop();

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol.path)
        .unwrap();
    let flip = |at: u64, len: usize| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, at).unwrap();
        for x in &mut b {
            *x ^= 0xa5;
        }
        file.write_all_at(&b, at).unwrap();
        file.sync_all().unwrap();
    };
    flip(40, 200); // inside the primary copy's first 4 KiB

    let info = fx.info_json(&vol.path);
    let sb = &info["superblocks"];
    assert_eq!(sb["primary"]["valid"], false, "{info}");
    assert!(
        sb["primary"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{info}"
    );
    assert_eq!(sb["secondary"]["valid"], true, "{info}");
    assert_eq!(sb["secondary"]["sequence"], 1, "{info}");
    assert_eq!(info["uuid"], vol.uuid.as_str(), "{info}");

    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.uri("sb"),
        &s(&[
            "read -P 0x42 4000 10000",
            "read -P 0 0 4000",
            "read -P 0 14000 4000",
        ]),
    );
    server.stop();
    // That read-write attach rewrote the primary from the secondary
    // (tests/volume_attach.rs tests the repair): damage it again.
    assert_eq!(
        fx.info_json(&vol.path)["superblocks"]["primary"]["valid"],
        true
    );
    flip(40, 200);

    flip(SECONDARY_COPY + 40, 200);
    let (_, stderr) = run_fails(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]));
    assert!(
        stderr.to_lowercase().contains("superblock"),
        "info: {stderr}"
    );
    assert_one_clean_line("volume info, both copies bad", &stderr);

    let out = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.to_lowercase().contains("superblock"),
        "serve: {stderr}"
    );
    assert_one_clean_line("serve, both copies bad", &stderr);

    // A volume file that does not exist: one line naming it.
    let missing = Vol {
        path: fx.path("missing.envol"),
        ..vol.clone()
    };
    let out = fx.serve_refused(ADMIN, &missing);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("missing.envol"), "{stderr}");
    assert_one_clean_line("serve of a missing file", &stderr);
}

const SECONDARY_COPY: u64 = 64 * 1024;

/// (8c) Volume B's superblock carrying B's uuid and context but A's wrapped
/// key (same master key): the KMS refuses to unwrap it under B's context
/// (InvalidCiphertextException), so B does not attach.
#[test]
fn wrapped_key_moved_to_another_volume_does_not_unwrap() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 64 * MIB, 4096);
    let b = fx.create_volume("b.envol", 64 * MIB, 4096);
    assert_ne!(a.uuid, b.uuid);

    let fa = std::fs::File::open(&a.path).unwrap();
    let a_key = envol::volume::read_superblocks(&fa)
        .best()
        .unwrap()
        .wrapped_key
        .clone();
    let fb = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&b.path)
        .unwrap();
    let mut sb = envol::volume::read_superblocks(&fb).best().unwrap().clone();
    assert_ne!(sb.wrapped_key, a_key);
    sb.wrapped_key = a_key.clone();
    envol::volume::write_superblock(&fb, &mut sb).unwrap();
    drop(fb);

    let info = fx.info_json(&b.path);
    assert_eq!(
        info["uuid"],
        b.uuid.as_str(),
        "B keeps its own uuid: {info}"
    );
    assert_eq!(info["superblocks"]["primary"]["valid"], true, "{info}");
    assert_eq!(info["superblocks"]["secondary"]["valid"], true, "{info}");

    let out = fx.serve_refused(ADMIN, &b);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("InvalidCiphertext"), "{stderr}");
    assert_one_clean_line("serve B with A's wrapped key", &stderr);

    // A itself is fine.
    fx.serve(ADMIN, &a).stop();
}

/// (9) A new volume reads zeros; TRIM and WRITE_ZEROES read back as zeros,
/// neighbours untouched, and at rest those sectors are stored as zero bytes
/// (the zero-sector rule).
#[test]
fn new_volume_trim_and_write_zeroes_read_zeros() {
    let fx = Fixture::new();
    let vol = fx.create_volume("zero.envol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.uri("zero").to_string();
    qemu_io(
        &uri,
        &[
            "read -P 0 0 1M".to_string(),
            format!("read -P 0 {} 1M", vol.size - MIB),
        ],
    );
    qemu_io(&uri, &s(&["write -P 0x77 0 256k", "read -P 0x77 0 256k"]));
    qemu_io(
        &uri,
        &s(&["discard 0 64k", "read -P 0 0 64k", "read -P 0x77 64k 192k"]),
    );
    qemu_io(
        &uri,
        &s(&[
            "write -z 64k 64k",
            "read -P 0 0 128k",
            "read -P 0x77 128k 128k",
        ]),
    );
    server.stop();

    let raw = vol.read_raw();
    let d = DATA_OFFSET as usize;
    assert!(
        raw[d..d + 128 * 1024].iter().all(|&b| b == 0),
        "trimmed / zeroed sectors are not stored as zeros"
    );
    assert!(
        raw[d + 128 * 1024..d + 256 * 1024]
            .chunks(4096)
            .all(|c| c.iter().any(|&b| b != 0)),
        "written sectors are not stored as ciphertext"
    );
    // And it persists across a restart.
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.uri("zero"),
        &s(&["read -P 0 0 128k", "read -P 0x77 128k 128k"]),
    );
    server.stop();
}

/// (10) `volume create` refuses an existing file without --force and a size
/// that is not a multiple of the sector size: non-zero exit, one line on
/// stderr, no panic, nothing clobbered or left behind.
#[test]
fn volume_create_refusals() {
    let fx = Fixture::new();
    let vol = fx.create_volume("exists.envol", 4 * MIB, 4096);
    let before = vol.read_raw();

    let mut again = fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            vol.path.to_str().unwrap(),
            "--size",
            "4M",
            "--key",
            KEY_ALIAS,
        ],
    );
    let (_, stderr) = run_fails(&mut again);
    assert_one_clean_line("create over an existing file", &stderr);
    assert!(vol.read_raw() == before, "the existing file was modified");

    let odd = fx.path("odd.envol");
    let (_, stderr) = run_fails(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            odd.to_str().unwrap(),
            "--size",
            "1000",
            "--key",
            KEY_ALIAS,
            "--sector-size",
            "4096",
        ],
    ));
    assert_one_clean_line("create --size 1000", &stderr);
    assert!(
        !odd.exists(),
        "a refused create left {} behind",
        odd.display()
    );

    let (_, stderr) = run_fails(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            odd.to_str().unwrap(),
            "--size",
            "4M",
            "--key",
            KEY_ALIAS,
            "--sector-size",
            "1024",
        ],
    ));
    // A usage error (clap's format, which adds a "try --help" line).
    assert!(
        stderr.contains("4096") && stderr.contains("512"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !odd.exists(),
        "a refused create left {} behind",
        odd.display()
    );

    // --force replaces it: a new uuid, the suffixed size parsed as MiB.
    let mut forced = fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            vol.path.to_str().unwrap(),
            "--size",
            "8M",
            "--key",
            KEY_ALIAS,
            "--sector-size",
            "512",
            "--force",
        ],
    );
    let uuid = parse_uuid(&run_ok(&mut forced));
    assert_ne!(uuid, vol.uuid);
    let info = fx.info_json(&vol.path);
    assert_eq!(info["uuid"], uuid.as_str());
    assert_eq!(info["size"], 8 * MIB);
    assert_eq!(info["sector_size"], 512);
}

/// SIGTERM is a graceful stop (exit 0) from the moment `serve` announces
/// its exports: a supervisor that stops it right after readiness must not
/// find it killed by the signal. Three servers start and stop at once, so
/// that the machine is busy, as it is under a test run or a real boot.
#[test]
fn sigterm_right_after_ready_exits_zero() {
    use std::io::BufRead;
    const ROUNDS: usize = 20;
    const THREADS: usize = 3;
    let fx = Fixture::new();
    let vols: Vec<Vol> = (0..THREADS)
        .map(|i| fx.create_volume(&format!("term{i}.envol"), 4 * MIB, 4096))
        .collect();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for vol in &vols {
            let (fx, failures) = (&fx, &failures);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let socket = fx.path(&format!("{}-{round}.sock", vol.export()));
                    let mut child = fx
                        .serve_command(ADMIN, &[(vol, None)], &socket, &[])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
                    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("nbd+unix://")));
                    Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                    drop(lines);
                    let status = child.wait().unwrap();
                    if !ready || !status.success() {
                        failures.lock().unwrap().push(format!(
                            "{} round {round}: ready {ready}, {status}",
                            vol.export()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "SIGTERM right after the export lines did not give exit 0 in {} of {} runs: {failures:?}",
        failures.len(),
        ROUNDS * THREADS
    );
}
