//! The read-ahead of the threaded loop (`src/nbd/read_ahead.rs`): while a
//! client reads a volume in order with one request in flight, workers
//! read and decrypt the next ranges. Real encrypted volumes served by
//! `envol serve`, filled with `nbdcopy` and read back by such clients —
//! `nbdcopy` to a pipe (a BLOCK_STATUS and then a READ at a time), libnbd
//! through `nbdsh` with and without structured replies — over the Unix
//! socket and over TLS, must get exactly the bytes written, also right
//! after a write (on the same connection or another) to ranges read
//! ahead; and READs pipelined behind a worker's reply are all answered.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::nbd::run_tool;
use common::tls::Pki;
use common::volume::{ADMIN, Fixture, MIB, VolumeServer, output_with_timeout, require_tool};

const SIZE: u64 = 16 * MIB;

/// Not compressible, not all-zero sectors: every sector is decrypted.
fn data() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fill_and_read_back(fx: &Fixture, uri: &str) {
    require_tool("nbdsh", "python3-libnbd");
    let src = fx.path("src.img");
    let data = data();
    std::fs::write(&src, &data).unwrap();
    run_tool("nbdcopy", &[src.to_str().unwrap(), uri]);
    // To a pipe nbdcopy copies synchronously: one request at a time.
    let out = output_with_timeout(
        Command::new("nbdcopy").args([uri, "-"]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "nbdcopy to a pipe read other bytes");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/nbd_read_ahead.py");
    let out = output_with_timeout(
        Command::new("nbdsh")
            // nbdsh runs `python3 -m nbd`: Debian's python3 has the module,
            // a python3 earlier on PATH (pyenv) may not.
            .env(
                "PATH",
                format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .arg("-c")
            .arg(format!("exec(open({:?}).read())", script.to_str().unwrap()))
            .env("URI", uri)
            .env("SRC", &src),
        Duration::from_secs(120),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("read-ahead checks: ok"),
        "{text}"
    );
}

#[test]
fn reads_in_order_one_at_a_time_return_what_was_last_written() {
    let fx = Fixture::new();
    let vol = fx.create_volume("ahead.envol", SIZE, 4096);
    let server = fx.serve(ADMIN, &vol);
    fill_and_read_back(&fx, server.first_uri());
    server.stop();
}

#[test]
fn reads_in_order_one_at_a_time_over_tls_return_what_was_last_written() {
    let pki = Pki::new();
    let fx = Fixture::new();
    let vol = fx.create_volume("ahead.envol", SIZE, 512);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(ADMIN, &[(&vol, None)], &socket, &pki.serve_args());
    let server = VolumeServer::spawn(&mut cmd, socket, &[vol.export()]);
    let uri = format!(
        "{}&tls-certificates={}",
        server.first_uri(),
        pki.client_anon.display()
    );
    fill_and_read_back(&fx, &uri);
    server.stop();
}
