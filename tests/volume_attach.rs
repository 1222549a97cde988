//! One writer per volume, with real `envol serve` processes: a second
//! writable attach, a read-only attach beside a writer, `volume rewrap` and
//! `volume create --force` of an attached volume are refused in one line
//! naming the holder's pid; read-only attachments share; `kill -9` of the
//! holder frees the volume at once. And superblock self-repair: a corrupt
//! copy is rewritten by the next read-write attach, and only reported by a
//! read-only one.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tools::{qemu_io, qemu_io_with};
use common::volume::{
    ADMIN, Fixture, MIB, Vol, VolumeServer, assert_one_clean_line, output_with_timeout, run_fails,
    run_ok,
};
use envol::volume::attachment::{AttachMode, lock_attachment};

/// `qemu-io -r`: a read-only export refuses a read-write open.
fn qemu_io_read_only(uri: &str, cmd: &str) {
    qemu_io_with(&["-r"], uri, &[cmd]);
}

/// `envol serve PATH:ro` on a fresh socket.
fn serve_read_only(fx: &Fixture, vol: &Vol) -> VolumeServer {
    let socket = fx.fresh_socket_path();
    let spec = format!("{}:ro", vol.path.display());
    let mut cmd = fx.envol_as(
        ADMIN,
        &["serve", &spec, "--socket", socket.to_str().unwrap()],
    );
    VolumeServer::spawn(&mut cmd, socket, &[vol.export()])
}

/// `envol serve PATH:ro` that must be refused; returns its stderr.
fn serve_read_only_refused(fx: &Fixture, vol: &Vol) -> String {
    let socket = fx.fresh_socket_path();
    let spec = format!("{}:ro", vol.path.display());
    let mut cmd = fx.envol_as(
        ADMIN,
        &["serve", &spec, "--socket", socket.to_str().unwrap()],
    );
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "read-only serve attached: {stderr}");
    assert!(!socket.exists(), "a refused serve left its socket behind");
    stderr
}

/// A refusal names the holder: one line, the volume, the pid, and (from
/// /proc/PID/cmdline) that it is an `envol serve` of this volume.
fn assert_names_holder(what: &str, stderr: &str, vol: &Vol, mode: &str, pids: &[u32]) {
    assert_one_clean_line(what, stderr);
    assert!(
        stderr.contains(&vol.path.display().to_string()),
        "{what}: {stderr}"
    );
    assert!(
        stderr.contains(&format!("already attached {mode} by pid ")),
        "{what}: {stderr}"
    );
    assert!(
        pids.iter().any(|p| stderr.contains(&format!("pid {p} ("))),
        "{what}: none of {pids:?} named: {stderr}"
    );
    assert!(stderr.contains(" serve "), "{what}: {stderr}");
}

/// `kill -9 PID`.
fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls (bounded) until a read-write attachment lock on `path` is free.
fn wait_lock_free(path: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let file = std::fs::File::open(path).unwrap();
        if lock_attachment(&file, AttachMode::ReadWrite).is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} still locked {limit:?} after kill -9 of its holder",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until the server's stderr contains `needle`.
fn wait_stderr(server: &VolumeServer, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = server.stderr();
        if err.contains(needle) {
            return err;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on serve's stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn second_writer_refused_until_the_first_is_killed() {
    let fx = Fixture::new();
    let vol = fx.create_volume("busy.envol", 16 * MIB, 4096);
    let first = fx.serve(ADMIN, &vol);
    qemu_io(first.first_uri(), &["write -P 0x5e 0 64k"]);
    let holder = first.pid();

    let out = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_names_holder("second serve", &stderr, &vol, "read-write", &[holder]);
    assert!(stderr.contains("one writer at a time"), "{stderr}");

    // The key policy decides first: a caller it refuses is told so, and
    // not who has the volume attached.
    fx.add_user("stranger");
    let out = fx.serve_refused("stranger", &vol);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_clean_line("serve by a stranger", &stderr);
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    assert!(!stderr.contains("attached"), "{stderr}");

    let stderr = serve_read_only_refused(&fx, &vol);
    assert_names_holder("read-only serve", &stderr, &vol, "read-write", &[holder]);

    let (_, stderr) =
        run_fails(&mut fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]));
    assert_names_holder("rewrap", &stderr, &vol, "read-write", &[holder]);
    assert!(stderr.contains("cannot re-wrap"), "{stderr}");

    let before = vol.read_raw();
    let (_, stderr) = run_fails(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "create",
            vol.path.to_str().unwrap(),
            "--size",
            "4M",
            "--key",
            "alias/DemoKey",
            "--force",
        ],
    ));
    assert_names_holder("create --force", &stderr, &vol, "read-write", &[holder]);
    assert!(stderr.contains("refusing to overwrite it"), "{stderr}");
    assert!(vol.read_raw() == before, "create --force changed the file");

    // `volume info` takes no lock: it works on an attached volume, and
    // says who has it.
    let info = fx.info_json(&vol.path);
    assert_eq!(info["uuid"], vol.uuid.as_str());
    assert_eq!(info["attached_by"][0]["pid"], holder, "{info}");
    assert_eq!(info["attached_by"][0]["read_only"], false, "{info}");
    let text = run_ok(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]));
    assert!(
        text.contains(&format!("attached:    read-write by pid {holder} (")),
        "{text}"
    );

    // kill -9: the kernel drops the lock with the process.
    let killed = Instant::now();
    kill_9(holder);
    let freed = wait_lock_free(&vol.path, Duration::from_secs(1));
    let second = fx.serve(ADMIN, &vol);
    let attached = killed.elapsed();
    eprintln!(
        "lock free {freed:?} after kill -9; second serve attached and ready {attached:?} after it"
    );
    qemu_io(second.first_uri(), &["read -P 0x5e 0 64k"]);
    drop(first);
    second.stop();
    let info = fx.info_json(&vol.path);
    assert_eq!(info["attached_by"], serde_json::json!([]), "{info}");
}

#[test]
fn readers_share_and_keep_writers_out() {
    let fx = Fixture::new();
    let vol = fx.create_volume("shared.envol", 16 * MIB, 4096);
    let a = serve_read_only(&fx, &vol);
    let b = serve_read_only(&fx, &vol);
    qemu_io_read_only(a.first_uri(), "read -P 0 0 64k");
    qemu_io_read_only(b.first_uri(), "read -P 0 0 64k");
    let readers = [a.pid(), b.pid()];
    let info = fx.info_json(&vol.path);
    let mut listed: Vec<u64> = info["attached_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["read_only"], true, "{info}");
            h["pid"].as_u64().unwrap()
        })
        .collect();
    listed.sort();
    let mut expected: Vec<u64> = readers.iter().map(|&p| u64::from(p)).collect();
    expected.sort();
    assert_eq!(listed, expected, "{info}");

    let out = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_names_holder(
        "writer beside readers",
        &stderr,
        &vol,
        "read-only",
        &readers,
    );
    let (_, stderr) =
        run_fails(&mut fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]));
    assert_names_holder(
        "rewrap beside readers",
        &stderr,
        &vol,
        "read-only",
        &readers,
    );

    // Both readers must go before a writer may come.
    a.stop();
    fx.serve_refused(ADMIN, &vol);
    b.stop();
    let writer = fx.serve(ADMIN, &vol);
    qemu_io(writer.first_uri(), &["write -P 0x11 0 4k"]);
    writer.stop();
    run_ok(&mut fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]));
}

/// Flips `len` bytes at `at` in the volume file.
fn corrupt(vol: &Vol, at: u64, len: usize) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol.path)
        .unwrap();
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 0xa5;
    }
    file.write_all_at(&b, at).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn corrupt_superblock_copy_is_repaired_by_the_next_writable_attach() {
    let fx = Fixture::new();
    let vol = fx.create_volume("repair.envol", 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x77 8k 12k"]);
    server.stop();

    let mut sequence = 1;
    for (key, offset, name) in [
        ("primary", 0u64, "primary copy (offset 0)"),
        ("secondary", 64 * 1024, "secondary copy (offset 64 KiB)"),
    ] {
        corrupt(&vol, offset + 40, 200);
        let info = fx.info_json(&vol.path);
        assert_eq!(info["superblocks"][key]["valid"], false, "{info}");
        assert_eq!(info["superblocks"][key]["offset"], offset, "{info}");
        assert_eq!(info["superblocks"][key]["error"], "bad checksum", "{info}");
        let text = run_ok(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]));
        assert!(
            text.contains(&format!("the {name} is invalid")),
            "volume info:\n{text}"
        );

        // Read-only: a warning, and not one byte written.
        let before = vol.read_raw();
        let reader = serve_read_only(&fx, &vol);
        let err = wait_stderr(&reader, "not repaired");
        assert!(err.contains(name) && err.contains("bad checksum"), "{err}");
        qemu_io_read_only(reader.first_uri(), "read -P 0x77 8k 12k");
        reader.stop();
        assert!(vol.read_raw() == before, "a read-only attach wrote");

        // Read-write: the warning names the copy and why, and repairs it.
        let writer = fx.serve(ADMIN, &vol);
        let err = wait_stderr(&writer, "rewriting it from the other copy");
        assert!(
            err.contains(&format!("superblock {name} is invalid (bad checksum)")),
            "{err}"
        );
        qemu_io(writer.first_uri(), &["read -P 0x77 8k 12k"]);
        writer.stop();
        sequence += 1;
        let info = fx.info_json(&vol.path);
        for copy in ["primary", "secondary"] {
            assert_eq!(info["superblocks"][copy]["valid"], true, "{info}");
            assert_eq!(info["superblocks"][copy]["sequence"], sequence, "{info}");
        }
        assert_eq!(info["uuid"], vol.uuid.as_str());
        let text = run_ok(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]));
        assert!(!text.contains("INVALID"), "{text}");
        for copy in ["primary copy (offset 0)", "secondary copy (offset 64 KiB)"] {
            assert!(
                text.contains(&format!("{copy} valid (sequence {sequence})")),
                "volume info names each copy as the repair warnings do:\n{text}"
            );
        }

        // Healthy now: the next attach writes nothing and warns of nothing.
        let before = vol.read_raw();
        let again = fx.serve(ADMIN, &vol);
        again.stop();
        assert!(
            vol.read_raw() == before,
            "a healthy attach rewrote the superblock"
        );
    }
}
