//! Running real client tools from tests.

use std::process::Command;

/// `qemu-io -f raw -c CMD... URI`; fails the test on any error or a pattern
/// mismatch (qemu-io exits 0 even then, so its output is checked too).
pub fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c
        .arg(uri)
        .output()
        .expect("qemu-io must be installed (Debian package qemu-utils)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "qemu-io {cmds:?} on {uri}:\n{text}"
    );
}
