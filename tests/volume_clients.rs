//! More real clients against `envol serve`: fio's nbd engine checking data
//! integrity under concurrency (including 512-byte writes into 4 KiB
//! sectors), `qemu-img convert` both ways, and libnbd's `nbdsh` for
//! structured replies, block status, fast zero, CACHE and read-only EPERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::volume::{ADMIN, Fixture, MIB, VolumeServer, fio_write_then_verify, require_tool};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn fio_verifies_concurrent_random_writes() {
    require_tool("fio", "fio");
    let fx = Fixture::new();
    let vol = fx.create_volume("fio.vol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.first_uri().to_string();
    // 4 jobs x QD32, each in its own 16 MiB region: two write 512-byte
    // blocks (read-modify-write inside 4 KiB sectors, several in flight on
    // the same sector), two write 4-64 KiB blocks. crc32c headers in every
    // block; fio verifies after writing...
    // ...then a second pass, on new connections, only reads and verifies.
    fio_write_then_verify(
        fx.dir.path(),
        &uri,
        &[
            "--rw=randwrite",
            "--iodepth=32",
            "--size=16M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--randseed=42",
            "--group_reporting",
            "--name=small",
            "--bs=512",
            "--numjobs=2",
            "--offset_increment=16M",
            "--offset=0",
            "--name=large",
            "--bsrange=4k-64k",
            "--numjobs=2",
            "--offset_increment=16M",
            "--offset=32M",
        ],
        Duration::from_secs(300),
    );
    server.stop();
}

#[test]
fn qemu_img_convert_to_and_from_the_export() {
    let fx = Fixture::new();
    let vol = fx.create_volume("conv.vol", 16 * MIB, 512);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.first_uri().to_string();
    let src = fx.path("src.raw");
    let mut data = vec![0u8; 16 * MIB as usize];
    for (i, b) in data.iter_mut().enumerate() {
        // Some zero runs (converted as zeroes/holes) and some patterned data.
        *b = if (i / 65536) % 3 == 0 {
            0
        } else {
            (i * 31 % 251) as u8
        };
    }
    std::fs::write(&src, &data).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    let back = fx.path("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "round trip through qemu-img convert"
    );
    server.stop();
}

fn nbdsh(uri: &str, mode: &str) -> String {
    require_tool("nbdsh", "python3-libnbd");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/nbdsh_checks.py");
    // nbdsh runs `python3 -m nbd`: Debian's python3 has the module, a
    // python3 earlier on PATH (pyenv) may not.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("nbdsh")
        .env("PATH", path)
        .env("NBDSH_MODE", mode)
        .args(["--base-allocation", "-u", uri, "-c"])
        .arg(format!("exec(open({script:?}).read())")))
}

#[test]
fn nbdsh_structured_replies_block_status_fast_zero_cache_read_only() {
    let fx = Fixture::new();
    let vol = fx.create_volume("sh.vol", 8 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let out = nbdsh(server.first_uri(), "read-write");
    assert!(out.contains("read-write checks: ok"), "{out}");
    server.stop();

    let vol2 = fx.create_volume("ro.vol", 8 * MIB, 4096);
    let server = fx.serve_many(ADMIN, &[(&vol2, None)], &["--read-only"]);
    let out = nbdsh(server.first_uri(), "read-only");
    assert!(out.contains("read-only checks: ok"), "{out}");
    server.stop();

    // Per export: `PATH=NAME:ro` next to a writable export in one server.
    let vol3 = fx.create_volume("rw.vol", 8 * MIB, 4096);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(
        ADMIN,
        &[(&vol3, Some("rw")), (&vol2, Some("ro:ro"))],
        &socket,
        &[],
    );
    let server = VolumeServer::spawn(&mut cmd, socket, &["rw".to_string(), "ro".to_string()]);
    let out = nbdsh(server.uri("ro"), "read-only");
    assert!(out.contains("read-only checks: ok"), "{out}");
    let out = nbdsh(server.uri("rw"), "read-write");
    assert!(out.contains("read-write checks: ok"), "{out}");
    server.stop();
}
