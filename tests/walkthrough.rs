//! The README's walkthrough stays true: `tests/walkthrough.sh` holds every
//! command of its code blocks verbatim (checked here: only checks of the
//! result may be added on the same line), and runs them in one
//! shell as a newcomer would — KMS, users, key, volume, nbdfuse + loop +
//! ext4 mount, the refused user, disable and scheduled deletion.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::volume::output_with_timeout;

fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("## Walkthrough")
        .expect("the README has a walkthrough");
    let rest = &readme[start + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The commands of the walkthrough's ```sh blocks, without comment lines and
/// without the kernel-NBD-client variant of step 5 (no nbd module in CI).
fn readme_commands() -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut kernel_variant = false;
    for line in readme_walkthrough().lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_block = t == "```sh";
            kernel_variant = false;
            continue;
        }
        if !in_block || t.is_empty() {
            continue;
        }
        if t.starts_with('#') {
            if t.contains("kernel's NBD client") {
                kernel_variant = true;
            } else if t.contains("without the nbd module") {
                kernel_variant = false;
            }
            continue;
        }
        if !kernel_variant {
            // A trailing comment ("cmd   # what it does") is not the command.
            let command = match t.find("  #") {
                Some(i) => t[..i].trim_end(),
                None => t,
            };
            out.push(command.to_string());
        }
    }
    out
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/walkthrough.sh")
}

#[test]
fn every_readme_command_is_in_the_script() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 20,
        "too few commands found: {commands:#?}"
    );
    let script = std::fs::read_to_string(script()).unwrap();
    // Verbatim, though the script may check the result on the same line
    // (`CMD || fail ...`, `CMD 2>err`, `count=$(CMD)`).
    let lines: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let missing: Vec<&String> = commands
        .iter()
        .filter(|c| !lines.iter().any(|l| l.contains(c.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "README walkthrough commands not run verbatim by tests/walkthrough.sh: {missing:#?}"
    );
}

#[test]
fn the_walkthrough_works_as_written() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the walkthrough mounts a file system: run the tests as root (scripts/test.sh does in CI)"
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_envol")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .env("PATH", path)
        .env("WALKTHROUGH_DIR", dir.path())
        .env_remove("ENVOL_LOG");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(600));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("WALKTHROUGH: PASS"), "{text}");
}
