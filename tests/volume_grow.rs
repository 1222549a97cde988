//! `envol volume grow` (issue 16.3): a volume grown while a running
//! `envol serve` has it attached (through its control socket) and while
//! nobody has (under its own exclusive attachment), for a file and an
//! `rbd:` image, checked with real NBD clients: a connection held across
//! the grow (libnbd), `nbdinfo --size` of a new one, and an ext4 file
//! system grown by `resize2fs` through `nbdfuse`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ceph::TestImage;
use common::control::{Holder, control_of, envol_control, export, nbdinfo_size, status};
use common::volume::{
    ADMIN, Fixture, MIB, Vol, assert_one_clean_line, require_tool, run_fails, run_ok,
};

/// `envol volume grow VOLUME --size SIZE --control CONTROL`.
fn grow_via(fx: &Fixture, control: &Path, volume: &str, size: &str) -> Command {
    envol_control(fx, control, &["volume", "grow", volume, "--size", size])
}

/// `envol volume grow VOLUME --size SIZE` (no server involved).
fn grow(fx: &Fixture, volume: &str, size: &str) -> Command {
    fx.envol(&["volume", "grow", volume, "--size", size])
}

/// The size the superblock on disk records (`volume info`, no KMS).
fn recorded_size(fx: &Fixture, vol: &Vol) -> u64 {
    fx.info_json(&vol.path)["size"].as_u64().expect("size")
}

fn refused(cmd: &mut Command, what: &str, expect: &str) {
    let (_, stderr) = run_fails(cmd);
    assert_one_clean_line(what, &stderr);
    assert!(stderr.contains(expect), "{what}: {stderr}");
}

/// `qemu-io -f raw URI` driven through its stdin: one qemu NBD block
/// node held open across a grow.
struct QemuIo {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl QemuIo {
    /// Opens the node, and waits until it is (its `length` answered).
    fn open(uri: &str) -> (QemuIo, String) {
        require_tool("qemu-io", "qemu-utils");
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut q = QemuIo {
            child,
            stdin,
            stdout,
        };
        let length = q.ask("length");
        (q, length)
    }

    /// One command and the line it printed.
    fn ask(&mut self, command: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_start_matches("qemu-io> ").trim_end().to_string()
    }

    /// Runs `commands`, quits, and returns everything qemu-io printed
    /// since (stdout and stderr).
    fn finish(mut self, commands: &[&str]) -> String {
        use std::io::{Read, Write};
        for c in commands {
            writeln!(self.stdin, "{c}").unwrap();
        }
        writeln!(self.stdin, "quit").unwrap();
        drop(self.stdin);
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        let _ = self.child.wait();
        out + &err
    }
}

/// A volume file grown while served, a client connected throughout: the
/// held connection keeps the size it negotiated and its data (libnbd; and
/// qemu, whose NBD driver refuses to grow an open node), a new connection
/// (nbdinfo, libnbd, qemu-io) sees the new size, and the new space reads
/// as zeros and takes writes. Shrinking, a size that is not a multiple of
/// the sector size, and asking a server that does not have the volume are
/// refused in one line; the same size is a no-op; `+N` adds.
#[test]
fn grow_an_attached_volume_file_while_a_client_is_connected() {
    let fx = Fixture::new();
    let vol = fx.create_volume("grow.envol", 16 * MIB, 4096);
    let path = vol.path.to_str().unwrap();
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let uri = server.uri("grow").to_string();

    let mut held = Holder::connect(&uri);
    held.ok("write 0 1048576 0x11");
    held.ok(&format!("write {} 1048576 0x12", 15 * MIB));
    held.ok("flush");
    let (qemu, length) = QemuIo::open(&uri);
    assert_eq!(length, "16 MiB");

    let out = run_ok(&mut grow_via(&fx, &control, path, "48M"));
    assert!(
        out.contains(&format!("Grew {path} from 16 MiB to 48 MiB")),
        "{out}"
    );
    assert!(out.contains("through the server at"), "{out}");
    assert_eq!(recorded_size(&fx, &vol), 48 * MIB);
    assert_eq!(nbdinfo_size(&uri).unwrap(), 48 * MIB);
    assert_eq!(export(&status(&fx, &control), "grow")["size"], 48 * MIB);

    // The held connection: its negotiated size, its data, still served.
    assert_eq!(held.ask("size"), format!("size {}", 16 * MIB));
    held.ok("read 0 1048576 0x11");
    held.ok(&format!("read {} 1048576 0x12", 15 * MIB));
    held.ok("write 1048576 65536 0x13");

    // qemu's NBD driver: a node opened before the grow keeps its size,
    // and cannot be grown in place; a new one has the new size.
    let held_qemu = qemu.finish(&["length", "truncate 48M", "length"]);
    assert_eq!(held_qemu.matches("16 MiB").count(), 2, "{held_qemu}");
    assert!(!held_qemu.contains("48 MiB"), "{held_qemu}");
    assert!(held_qemu.contains("Cannot grow NBD nodes"), "{held_qemu}");
    let (fresh_qemu, length) = QemuIo::open(&uri);
    assert_eq!(length, "48 MiB");
    fresh_qemu.finish(&[]);

    // A new connection: the new space is zeros, and writable to its end.
    let mut fresh = Holder::connect(&uri);
    assert_eq!(fresh.ask("size"), format!("size {}", 48 * MIB));
    fresh.ok(&format!("read {} {} 0", 16 * MIB, 32 * MIB));
    fresh.ok(&format!("write {} 1048576 0x14", 47 * MIB));
    fresh.ok(&format!("read {} 1048576 0x14", 47 * MIB));
    fresh.ok(&format!("read {} 1048576 0x12", 15 * MIB));
    fresh.ok("read 1048576 65536 0x13");
    fresh.quit();

    // Refusals, each one line; nothing changes.
    refused(
        &mut grow_via(&fx, &control, path, "32M"),
        "shrink",
        "refusing to shrink the volume from 50331648 to 33554432 bytes",
    );
    refused(
        &mut grow_via(&fx, &control, path, "50331649"),
        "unaligned",
        "not a multiple of the volume's sector size (4096 bytes)",
    );
    let elsewhere = fx.path("no-server.control");
    refused(
        &mut grow_via(&fx, &elsewhere, path, "64M"),
        "no server at --control",
        "no envol server answers at",
    );
    assert_eq!(recorded_size(&fx, &vol), 48 * MIB);

    let out = run_ok(&mut grow_via(&fx, &control, path, "48M"));
    assert!(
        out.contains("is already 48 MiB") && out.contains("nothing to do"),
        "{out}"
    );
    // Relative to where we are: the server matches the file, not the text.
    let relative = Path::new(path).strip_prefix(fx.dir.path()).unwrap();
    let out = run_ok(
        grow_via(&fx, &control, relative.to_str().unwrap(), "+16M").current_dir(fx.dir.path()),
    );
    assert!(out.contains("from 48 MiB to 64 MiB"), "{out}");
    assert_eq!(nbdinfo_size(&uri).unwrap(), 64 * MIB);
    assert_eq!(held.ask("size"), format!("size {}", 16 * MIB));
    held.ok("read 1048576 65536 0x13");
    held.quit();
    server.stop();

    // Served again: the size on disk, the data of both clients.
    let again = fx.serve(ADMIN, &vol);
    assert_eq!(nbdinfo_size(again.uri("grow")).unwrap(), 64 * MIB);
    let mut check = Holder::connect(again.uri("grow"));
    check.ok("read 0 1048576 0x11");
    check.ok(&format!("read {} 1048576 0x14", 47 * MIB));
    check.ok(&format!("read {} {} 0", 48 * MIB, 16 * MIB));
    check.quit();
    again.stop();
}

/// Nobody has the volume attached: the grow takes the volume's exclusive
/// attachment itself, needs no KMS (the fixture's credentials are not
/// even offered), and the next `serve` exports the new size. A store
/// larger than its superblock (a grow cut off between its two steps)
/// serves the recorded size, and the next grow completes. A volume
/// attached elsewhere without a server behind `--control` is refused
/// naming the holder.
#[test]
fn a_detached_grow_then_serve_shows_the_new_size() {
    let fx = Fixture::new();
    let vol = fx.create_volume("offline.envol", 16 * MIB, 512);
    let path = vol.path.to_str().unwrap();
    let server = fx.serve(ADMIN, &vol);
    let mut held = Holder::connect(server.uri("offline"));
    held.ok("write 0 65536 0x21");
    held.quit();
    server.stop();

    let mut no_kms = Command::new(env!("CARGO_BIN_EXE_envol"));
    no_kms
        .args(["volume", "grow", path, "--size", "+1M"])
        .env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
        .env("ENVOL_CONTROL", fx.path("nobody.control"));
    let out = run_ok(&mut no_kms);
    assert!(out.contains("from 16 MiB to 17 MiB"), "{out}");
    assert!(!out.contains("through the server"), "{out}");
    let out = run_ok(&mut grow(&fx, path, "17M"));
    assert!(out.contains("nothing to do"), "{out}");
    refused(
        &mut grow(&fx, path, "8M"),
        "detached shrink",
        "refusing to shrink",
    );
    refused(
        &mut grow(&fx, path, "18000000"),
        "detached unaligned",
        "not a multiple of the volume's sector size (512 bytes)",
    );
    assert_eq!(recorded_size(&fx, &vol), 17 * MIB);
    assert_eq!(
        std::fs::metadata(&vol.path).unwrap().len(),
        MIB + 17 * MIB,
        "the file grew by a hole"
    );
    // A grow cut off after its first step (the store grown, the
    // superblock not yet written): the volume opens at its recorded size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vol.path)
        .unwrap()
        .set_len(MIB + 20 * MIB)
        .unwrap();

    let server = fx.serve(ADMIN, &vol);
    assert_eq!(nbdinfo_size(server.uri("offline")).unwrap(), 17 * MIB);
    let mut check = Holder::connect(server.uri("offline"));
    check.ok("read 0 65536 0x21");
    check.ok(&format!("read {} 1048576 0", 16 * MIB));
    check.quit();

    // Attached, and the control socket named is nobody's.
    refused(
        grow(&fx, path, "32M").env("ENVOL_CONTROL", fx.path("nobody.control")),
        "attached, no server at the control path",
        "already attached",
    );
    server.stop();
    // The grow run again finishes the job: the store is large enough.
    let out = run_ok(&mut grow(&fx, path, "20M"));
    assert!(out.contains("from 17 MiB to 20 MiB"), "{out}");
    assert_eq!(recorded_size(&fx, &vol), 20 * MIB);
    assert_eq!(std::fs::metadata(&vol.path).unwrap().len(), MIB + 20 * MIB);

    // Served read-only: its server cannot grow it, and says why.
    let ro = fx.serve_many(ADMIN, &[(&vol, None)], &["--read-only"]);
    refused(
        &mut grow_via(&fx, &control_of(&ro.socket), path, "24M"),
        "grow of a read-only attachment",
        "attached read-only: growing needs a read-write attachment",
    );
    assert_eq!(nbdinfo_size(ro.uri("offline")).unwrap(), 20 * MIB);
    ro.stop();
    assert_eq!(recorded_size(&fx, &vol), 20 * MIB);
}

/// `nbdfuse DIR URI` (read-write): the export as the file DIR/nbd, for
/// tools that want a file (resize2fs, e2fsck, debugfs). Unmounted on drop.
struct FuseFile {
    dir: PathBuf,
    child: Option<Child>,
}

impl FuseFile {
    fn mount(uri: &str, dir: PathBuf) -> FuseFile {
        std::fs::create_dir_all(&dir).unwrap();
        let nbdfuse = require_tool("nbdfuse", "libnbd-bin");
        require_tool("fusermount3", "fuse3");
        let child = Command::new(nbdfuse)
            .arg(&dir)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nbdfuse");
        let mut fuse = FuseFile {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fuse.mounted() {
            if let Some(status) = fuse.child.as_mut().unwrap().try_wait().unwrap() {
                fuse.child = None;
                panic!("nbdfuse exited ({status}) before its file appeared");
            }
            assert!(Instant::now() < deadline, "nbdfuse not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        fuse
    }

    fn mounted(&self) -> bool {
        let want = self.dir.to_string_lossy();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*want))
            && self.file().exists()
    }

    fn file(&self) -> PathBuf {
        self.dir.join("nbd")
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .status();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn e2fs(tool: &str, args: &[&str]) -> String {
    require_tool(tool, "e2fsprogs");
    let out = Command::new(tool).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} {args:?}: {text}");
    text
}

/// Blocks of the ext4 file system in `image`, as its superblock says.
fn block_count(image: &Path) -> u64 {
    let text = e2fs("dumpe2fs", &["-h", image.to_str().unwrap()]);
    text.lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block count in {text}"))
}

/// ext4 made with mkfs (a file inside) on a plain image, copied onto the
/// served volume with nbdcopy; the volume grown while served; then
/// through a NEW connection (nbdfuse) `resize2fs` grows the file system to
/// the new size, `e2fsck -f` finds it clean, and the file written before
/// the grow reads back intact (debugfs).
#[test]
fn ext4_grows_with_resize2fs_through_nbdfuse() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let vol = fx.create_volume("fs.envol", 32 * MIB, 4096);
    let content: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let src = fx.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), &content).unwrap();
    let image = fx.path("fs.img");
    e2fs(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-d",
            src.to_str().unwrap(),
            image.to_str().unwrap(),
            "32M",
        ],
    );
    assert_eq!(block_count(&image), 32 * MIB / 4096);

    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let uri = server.uri("fs").to_string();
    run_ok(Command::new("nbdcopy").arg(&image).arg(&uri));
    let mut held = Holder::connect(&uri);

    run_ok(&mut grow_via(
        &fx,
        &control,
        vol.path.to_str().unwrap(),
        "96M",
    ));
    assert_eq!(held.ask("size"), format!("size {}", 32 * MIB));
    held.quit();

    let fuse = FuseFile::mount(&uri, fx.path("fuse"));
    let file = fuse.file();
    let file_str = file.to_str().unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 96 * MIB);
    e2fs("e2fsck", &["-f", "-y", file_str]);
    e2fs("resize2fs", &[file_str]);
    assert_eq!(block_count(&file), 96 * MIB / 4096);
    let fsck = e2fs("e2fsck", &["-f", "-n", file_str]);
    assert!(fsck.contains("clean") || fsck.contains("files"), "{fsck}");
    let read_back = e2fs("debugfs", &["-R", "cat /hello.txt", file_str]);
    assert!(
        read_back.contains(&content),
        "the file written before the grow differs"
    );
    drop(fuse);
    server.stop();
}

/// The same on an `rbd:` volume: grown through the server that has it
/// attached (the image resized, a new connection sees it, a held one keeps
/// its size and data), then grown with nobody attached (under the image's
/// exclusive lock), then served again at the new size.
#[test]
fn grow_an_rbd_volume_attached_and_not() {
    let fx = Fixture::new();
    let image = TestImage::new("grow");
    let spec = format!("rbd:{}", image.spec());
    let vol = fx.create_volume_at(&spec, 16 * MIB, 4096);
    let name = vol.export();
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let uri = server.uri(&name).to_string();
    let mut held = Holder::connect(&uri);
    held.ok(&format!("write {} 1048576 0x31", 15 * MIB));
    held.ok("flush");

    let out = run_ok(&mut grow_via(&fx, &control, &spec, "40M"));
    assert!(
        out.contains(&format!("Grew {spec} from 16 MiB to 40 MiB")),
        "{out}"
    );
    assert_eq!(nbdinfo_size(&uri).unwrap(), 40 * MIB);
    assert_eq!(export(&status(&fx, &control), &name)["size"], 40 * MIB);
    assert_eq!(held.ask("size"), format!("size {}", 16 * MIB));
    held.ok(&format!("read {} 1048576 0x31", 15 * MIB));
    let mut fresh = Holder::connect(&uri);
    fresh.ok(&format!("read {} {} 0", 16 * MIB, 24 * MIB));
    fresh.ok(&format!("write {} 1048576 0x32", 39 * MIB));
    fresh.quit();
    held.quit();
    refused(
        &mut grow_via(&fx, &control, &spec, "20M"),
        "rbd shrink",
        "refusing to shrink",
    );
    let rbd_size = |ceph: &common::ceph::Ceph| -> u64 {
        let out = common::ceph::Ceph::run(ceph.rbd(&["info", "--format", "json", &image.spec()]));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        info["size"].as_u64().unwrap()
    };
    assert_eq!(rbd_size(&image.ceph), MIB + 40 * MIB);
    server.stop();

    let out = run_ok(&mut grow(&fx, &spec, "+8M"));
    assert!(out.contains("from 40 MiB to 48 MiB"), "{out}");
    assert!(!out.contains("through the server"), "{out}");
    assert_eq!(rbd_size(&image.ceph), MIB + 48 * MIB);

    let again = fx.serve(ADMIN, &vol);
    assert_eq!(nbdinfo_size(again.uri(&name)).unwrap(), 48 * MIB);
    let mut check = Holder::connect(again.uri(&name));
    check.ok(&format!("read {} 1048576 0x31", 15 * MIB));
    check.ok(&format!("read {} 1048576 0x32", 39 * MIB));
    check.ok(&format!("read {} {} 0", 40 * MIB, 8 * MIB));
    check.quit();
    again.stop();
}
