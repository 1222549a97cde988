//! The systemd units under contrib/systemd (envol serve, its per-file
//! template, and the KMS) pass `systemd-analyze verify`
//! (no warning at all), and their hardening keeps `systemd-analyze
//! security` exposure low.
//!
//! verify checks that ExecStart's binary exists and is executable, so each
//! unit is checked as a copy whose `/usr/local/bin/envol` is this build's
//! binary; the rest of the unit is verified as shipped. The template
//! `envol@.service` is checked as an instance (`envol@example.service`),
//! which is how systemd loads it.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALLED_BINARY: &str = "/usr/local/bin/envol";

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(name)
}

/// A copy of `unit` in `dir` named `as_name`, run from this build's binary.
fn installed_copy(dir: &Path, unit: &str, as_name: &str) -> PathBuf {
    let text = std::fs::read_to_string(contrib(unit)).unwrap();
    let serve = format!("ExecStart={INSTALLED_BINARY} serve --config /etc/envol/");
    let kms = format!("ExecStart={INSTALLED_BINARY} kms serve --data /var/lib/envol-kms/");
    assert!(
        text.contains(&serve) || text.contains(&kms),
        "{unit} runs {INSTALLED_BINARY} serve --config or kms serve"
    );
    let path = dir.join(as_name);
    std::fs::write(
        &path,
        text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_envol")),
    )
    .unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(unit: &Path) -> (bool, String) {
    let (ok, _, stderr) = systemd_analyze(&["verify", "--man=no"], unit);
    (ok, stderr)
}

const UNITS: [(&str, &str); 3] = [
    ("envol.service", "envol.service"),
    ("envol@.service", "envol@example.service"),
    ("envol-kms.service", "envol-kms.service"),
];

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, as_name) in UNITS {
        let path = installed_copy(dir.path(), unit, as_name);
        let (ok, stderr) = verify(&path);
        assert!(ok && stderr.trim().is_empty(), "{unit}: {stderr}");
    }
}

#[test]
fn verify_catches_what_it_should() {
    // The check can fail: a misspelt directive and a missing binary.
    let dir = tempfile::tempdir().unwrap();
    let good = installed_copy(dir.path(), "envol.service", "envol.service");
    let text = std::fs::read_to_string(&good).unwrap();

    let typo = dir.path().join("typo.service");
    std::fs::write(&typo, text.replace("NoNewPrivileges=", "NoNewPrivilegs=")).unwrap();
    let (_, stderr) = verify(&typo);
    assert!(stderr.contains("NoNewPrivilegs"), "{stderr}");

    let missing = dir.path().join("missing.service");
    std::fs::write(
        &missing,
        text.replace(env!("CARGO_BIN_EXE_envol"), "/nonexistent/envol"),
    )
    .unwrap();
    let (ok, stderr) = verify(&missing);
    assert!(!ok && stderr.contains("/nonexistent/envol"), "{stderr}");
}

#[test]
fn units_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, as_name) in UNITS {
        let path = installed_copy(dir.path(), unit, as_name);
        let (_, stdout, stderr) =
            systemd_analyze(&["security", "--offline=yes", "--no-pager"], &path);
        let all = format!("{stdout}{stderr}");
        let level: f64 = all
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in:\n{all}"));
        // 0 is fully locked down, 10 is unprotected; "OK" is below 4.
        assert!(level <= 2.0, "{unit}: exposure {level}:\n{all}");
        let text = std::fs::read_to_string(contrib(unit)).unwrap();
        for directive in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/envol",
            "LimitMEMLOCK=",
        ] {
            assert!(text.contains(directive), "{unit} has {directive}");
        }
        if unit != "envol-kms.service" {
            assert!(
                text.contains("RuntimeDirectory=envol"),
                "{unit}: /run/envol"
            );
        }
    }
}

#[test]
fn the_reference_configuration_puts_its_sockets_in_the_runtime_directory() {
    // contrib/envol.toml is what envol.service reads: its sockets must be
    // under /run/envol (RuntimeDirectory=envol), the one place the unit may
    // write besides the volumes.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/envol.toml"))
            .unwrap();
    for key in ["socket", "control"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("contrib/envol.toml sets {key}"));
        assert!(line.contains("\"/run/envol/"), "{line}");
    }
}
