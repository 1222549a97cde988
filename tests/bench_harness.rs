//! The benchmark harness (`scripts/bench/`) keeps working.
//!
//! Runs `compare.sh` for one round of one second per workload against a
//! small throw-away `envol up` (as `scripts/bench.sh` does, without the
//! release build and the peers) over its Unix socket, plain TCP and TLS
//! (`up --tls-cert`, with the certificate compare.sh makes with `openssl`;
//! fio, nbdinfo and nbdcopy verify it through libnbd), then
//! `scripts/bench_report.py` on its log, and checks that every piece ran
//! and that every output parses: the fio lines of `bench-nbd.sh` (one and
//! four connections), the nbdcopy copies (one and the default
//! connections), the negotiated cipher suite, `summarize.py`'s table, the
//! README's markdown tables and SVG charts. It never judges speed — speed
//! is measured only by `scripts/bench.sh` — only that I/O happened.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::volume::{output_with_timeout, require_tool};

const WORKLOADS: [&str; 4] = ["seqwrite", "seqread", "randread", "randwrite"];

fn repo_file(path: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// Runs `compare.sh ARGS -o OUT_DIR SERVERS` against a small throw-away
/// `envol up` (the same server command as scripts/bench.sh; `ownb` is the
/// same binary as `own`) with its bench directory and home in `dir`, and
/// fails the test unless it succeeds.
fn run_compare(dir: &Path, out_dir: &Path, args: &[&str], servers: &[&str]) {
    for (tool, package) in [
        ("fio", "fio"),
        ("jq", "jq"),
        ("nbdinfo", "libnbd-bin"),
        ("nbdcopy", "libnbd-bin"),
        ("python3", "python3"),
    ] {
        require_tool(tool, package);
    }
    let mut cmd = Command::new("bash");
    cmd.arg(repo_file("scripts/bench/compare.sh"))
        .args(args)
        .arg("-o")
        .arg(out_dir)
        .args(servers)
        .env("BENCH_DIR", dir.join("bench"))
        .env("ENVOL", env!("CARGO_BIN_EXE_envol"))
        .env("ENVOL_B", env!("CARGO_BIN_EXE_envol"))
        .env("ENVOL_BENCH_DATA", dir.join("envol-up"))
        .env(
            "OWN_CMD",
            r#"exec "$ENVOL" up --data "$ENVOL_BENCH_DATA" --size "${SIZE_MIB}M" --socket "$SOCK" --listen "127.0.0.1:${PORT:-0}" --kms-listen none ${TLS_DIR:+--tls-cert "$TLS_DIR/server-cert.pem" --tls-key "$TLS_DIR/server-key.pem"}"#,
        )
        .env("EXPORT", "default")
        // Nothing `envol up` writes for its user lands in the real home.
        .env("HOME", dir)
        .env_remove("AWS_PROFILE");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(180));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compare.sh failed ({}):\n{text}",
        out.status
    );
}

fn number(field: &str, line: &str) -> f64 {
    field
        .parse()
        .unwrap_or_else(|_| panic!("{field:?} is not a number in {line:?}"))
}

#[test]
fn compare_sh_runs_against_envol_up_and_its_output_parses() {
    require_tool("openssl", "openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    run_compare(
        dir.path(),
        &out_dir,
        &["-r", "1", "-t", "1", "-s", "16"],
        &["own", "own-tcp", "own-tls"],
    );

    // compare.log: one FIO line per workload (bench-nbd.sh's columns with a
    // server PID), and the nbdcopy round trip in both directions.
    let log_path = out_dir.join("compare.log");
    let log = std::fs::read_to_string(&log_path).expect("compare.sh wrote compare.log");
    assert!(
        log.lines()
            .any(|l| l.starts_with("## round 1 server own pid ")),
        "{log}"
    );
    for server in ["own", "own-tcp", "own-tls"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("## round 1 server {server} pid "))),
            "{log}"
        );
        // Several connections are measured on the network path only.
        let four = if server == "own" {
            &[""][..]
        } else {
            &["", "-4c"][..]
        };
        for w in WORKLOADS {
            for suffix in four {
                check_fio_line(&log, server, &format!("{w}{suffix}"));
            }
        }
        for direction in ["in", "out", "in-1c", "out-1c"] {
            check_copy_line(&log, server, direction);
        }
    }
    // The client's view of the TLS session: an AEAD suite was negotiated.
    let tls = log
        .lines()
        .find(|l| l.starts_with("## tls own-tls "))
        .unwrap_or_else(|| panic!("no cipher-suite line:\n{log}"));
    assert!(tls.contains("GCM") || tls.contains("CHACHA20"), "{tls}");

    // summarize.py's medians: a row per workload and per copy direction.
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).expect("summary.txt");
    for w in WORKLOADS {
        assert!(
            summary
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["own", w])),
            "no summary row for {w}:\n{summary}"
        );
    }
    for direction in ["in", "out"] {
        assert!(
            summary
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["own", direction])),
            "no summary row for nbdcopy {direction}:\n{summary}"
        );
    }
    assert!(
        summary
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["own-tls", "seqwrite-4c"])),
        "no summary row for 4 connections over TLS:\n{summary}"
    );

    // bench_report.py turns the log into the README's table and chart.
    let markdown = dir.path().join("results.md");
    let svg = dir.path().join("chart.svg");
    let net_markdown = dir.path().join("net-results.md");
    let net_svg = dir.path().join("net-chart.svg");
    let mut report = Command::new("python3");
    report
        .arg(repo_file("scripts/bench_report.py"))
        .arg(&log_path)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--svg")
        .arg(&svg)
        .arg("--net-markdown")
        .arg(&net_markdown)
        .arg("--net-svg")
        .arg(&net_svg)
        .args(["--note", "bench harness test"]);
    let out = output_with_timeout(&mut report, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "bench_report.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(&markdown).expect("results.md");
    let row = table
        .lines()
        .find(|l| l.starts_with("| **envol (AES-256-XTS)** |"))
        .unwrap_or_else(|| panic!("no envol row in the table:\n{table}"));
    // server + 7 columns, no empty cell.
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 8, "{row}");
    assert!(!cells.contains(&"–"), "a column has no value: {row}");
    let chart = std::fs::read_to_string(&svg).expect("chart.svg");
    assert!(
        chart.starts_with("<svg ") && chart.trim_end().ends_with("</svg>"),
        "{chart}"
    );
    assert!(chart.contains("envol (AES-256-XTS)"), "{chart}");

    // The network table: envol's own rows are there (without nbdkit peers
    // in this run there are no ratios), and the negotiated suite is named.
    let net = std::fs::read_to_string(&net_markdown).expect("net-results.md");
    assert!(net.contains("| target | measurement |"), "{net}");
    assert!(
        net.contains("Negotiated") && net.contains("own-tls: cipher "),
        "{net}"
    );
    let chart = std::fs::read_to_string(&net_svg).expect("net-chart.svg");
    assert!(
        chart.starts_with("<svg ") && chart.trim_end().ends_with("</svg>"),
        "{chart}"
    );
}

/// `FIO r1 SERVER WORKLOAD ...`: bench-nbd.sh's columns with a server PID,
/// and data moved.
fn check_fio_line(log: &str, server: &str, workload: &str) {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("FIO r1 {server} {workload} ")))
        .unwrap_or_else(|| panic!("no FIO line for {server} {workload}:\n{log}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    // FIO r1 label workload MiB/s IOPS p99_us fio_cpu% busy% srv_cpu% srv_ms/GiB
    assert_eq!(fields.len(), 11, "{line}");
    let values: Vec<f64> = fields[4..].iter().map(|f| number(f, line)).collect();
    assert!(
        values[0] > 0.0 && values[1] > 0.0,
        "{workload} moved no data: {line}"
    );
    assert!(values.iter().all(|v| *v >= 0.0), "{line}");
}

fn check_copy_line(log: &str, server: &str, direction: &str) {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("COPY r1 {server} {direction} ")))
        .unwrap_or_else(|| panic!("no COPY {server} {direction} line:\n{log}"));
    for key in ["wall_s", "MiB/s", "srv_cpu_s"] {
        let value = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"));
        assert!(number(value, line) >= 0.0, "{line}");
    }
}

/// `compare.sh -w LIST -c LIST` runs only those fio workloads and copies,
/// and `ownb` (ENVOL_B: another build, here the same binary) is raced as
/// the second half of an A/B whose per-round ratios summarize.py prints.
#[test]
fn compare_sh_picks_workloads_and_copies_and_races_another_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    run_compare(
        dir.path(),
        &out_dir,
        &[
            "-r",
            "1",
            "-t",
            "1",
            "-s",
            "16",
            "-w",
            "randread",
            "-c",
            "in,out-1c",
        ],
        &["own", "ownb"],
    );
    let log = std::fs::read_to_string(out_dir.join("compare.log")).expect("compare.log");
    for server in ["own", "ownb"] {
        check_fio_line(&log, server, "randread");
        check_copy_line(&log, server, "in");
        check_copy_line(&log, server, "out-1c");
    }
    let fio: Vec<&str> = log.lines().filter(|l| l.starts_with("FIO ")).collect();
    assert_eq!(fio.len(), 2, "only randread, on each server:\n{log}");
    let copies: Vec<&str> = log.lines().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(
        copies.len(),
        4,
        "only in and out-1c, on each server:\n{log}"
    );
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).expect("summary.txt");
    for (what, field) in [
        ("randread", "mib"),
        ("in", "MiB/s"),
        ("out-1c", "srv_cpu_s"),
    ] {
        assert!(
            summary.lines().any(|l| l
                .split_whitespace()
                .take(4)
                .eq(["own", what, field, "median"])),
            "no A/B row for {what} {field}:\n{summary}"
        );
    }

    // A copy that compare.sh does not know is refused before anything runs.
    let out = output_with_timeout(
        Command::new("bash")
            .arg(repo_file("scripts/bench/compare.sh"))
            .args(["-c", "sideways", "own"])
            .env("BENCH_DIR", dir.path().join("bench")),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown copy 'sideways'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
