//! Running real client tools from tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::volume::require_tool;

/// `qemu-io -f raw -c CMD... URI`; fails the test on any error or a pattern
/// mismatch (qemu-io exits 0 even then, so its output is checked too).
pub fn qemu_io(uri: &str, cmds: &[&str]) {
    qemu_io_with(&[], uri, cmds);
}

/// [`qemu_io`] with more qemu-io options (`-r`: open read-only).
pub fn qemu_io_with(options: &[&str], uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(options).args(["-f", "raw"]);
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
        "qemu-io {options:?} {cmds:?} on {uri}:\n{text}"
    );
}

/// A file of the end-to-end harness in `tests/e2e/` (part of the repository).
pub fn e2e_file(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: the e2e harness is part of the repository",
        p.display()
    );
    p
}

/// Fails the test, naming the package, unless every tool that
/// `tests/e2e/fuse-mount-check.sh` runs is installed.
pub fn require_fuse_harness_tools() {
    for (tool, package) in [
        ("nbdfuse", "libnbd-bin"),
        ("fusermount3", "fuse3"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("losetup", "mount"),
    ] {
        require_tool(tool, package);
    }
}

/// `cmd` (program, arguments, environment, directory) run under
/// `prlimit --nofile=SOFT:HARD`. prlimit execs the command, so the child's
/// pid is the command's.
pub fn with_open_file_limit(cmd: &Command, soft: u64, hard: u64) -> Command {
    let prlimit = require_tool("prlimit", "util-linux");
    let mut wrapped = Command::new(prlimit);
    wrapped
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// The soft open-file limit of process `pid`, from `/proc/PID/limits`.
pub fn soft_open_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in /proc/{pid}/limits:\n{limits}"));
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|soft| soft.parse().ok())
        .unwrap_or_else(|| panic!("unreadable: {line}"))
}
