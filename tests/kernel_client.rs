//! The Linux kernel's NBD client against `envol serve`: the harness
//! `tests/e2e/vm-nbd-check.sh` boots a throw-away QEMU guest whose
//! `nbd-client` + `nbd.ko` attach the export, mkfs.ext4, mount, write,
//! unmount, re-attach on a new connection, fsck and verify checksums.
//!
//! Run twice on a volume with 4096-byte sectors: with nbd-client's default
//! 512-byte blocks (every 512-byte write is a read-modify-write of a 4 KiB
//! cipher sector) and with `-b 4096`. The harness needs python3, dpkg-deb
//! and fresh apt lists (`apt-get update`); it downloads its guest assets
//! into `VM_CACHE` (default under /var/tmp) once. A harness failure,
//! including a setup failure, fails this test: skipping would hide exactly
//! what it exists to prove.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::volume::*;

fn harness() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/vm-nbd-check.sh");
    assert!(
        script.is_file(),
        "{} is missing: the kernel-client harness is part of the repository",
        script.display()
    );
    script
}

#[test]
fn kernel_nbd_client_mkfs_mount_verify_512_and_4096_byte_blocks() {
    let script = harness();
    let fx = Fixture::new();
    let vol = fx.create_volume("kernel.envol", 256 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);

    let mut failures = Vec::new();
    for opts in ["", "-b 4096"] {
        let started = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(&server.socket)
            .arg(vol.export())
            // Nested KVM does not boot the guest kernel on these machines;
            // skip the 25-second probe.
            .env(
                "VM_ACCEL",
                std::env::var("VM_ACCEL").unwrap_or("tcg".into()),
            )
            .env("NBD_CLIENT_OPTS", opts);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "vm-nbd-check (NBD_CLIENT_OPTS={opts:?}): {} in {:.1}s",
            out.status,
            started.elapsed().as_secs_f64()
        );
        if !out.status.success() || !text.contains("RESULT: PASS") {
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            failures.push(format!(
                "NBD_CLIENT_OPTS={opts:?}: {} (exit 2 = setup error: python3, dpkg-deb, \
                 `apt-get update` needed)\n{}",
                out.status,
                tail.join("\n")
            ));
        }
    }
    let stderr = server.stderr();
    server.stop();
    assert!(
        failures.is_empty(),
        "kernel client check failed:\n{}\n--- envol serve stderr ---\n{stderr}",
        failures.join("\n\n")
    );
}
