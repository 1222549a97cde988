//! Prometheus metrics of `envol serve` and `envol kms serve` (`--metrics`):
//! a real Prometheus scrapes both while fio writes to one export and sees
//! the write rate there (none on an idle export) and the KMS Decrypts of
//! the attach; a direct scrape counts exactly the bytes nbdcopy wrote; a
//! non-loopback address without TLS is refused in one line, before any
//! key is unwrapped; Prometheus follows an online re-encryption's progress
//! gauges to the end.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::KmsServer;
use common::prometheus::{Prometheus, free_port, http_get, sample};
use common::volume::{
    ADMIN, Fixture, assert_one_clean_line, output_with_timeout, require_tool, tagged_slot,
};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A fixture whose `kms serve` serves metrics; its metrics address.
fn fixture_with_kms_metrics() -> (Fixture, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let fx = Fixture::on(KmsServer::start_with(&["--metrics", &addr]));
    (fx, addr)
}

/// Successful Decrypts the KMS has counted, from a scrape.
fn decrypts(kms_metrics: &str) -> f64 {
    let text = http_get(&format!("http://{kms_metrics}/metrics"));
    sample(
        &text,
        "envol_kms_requests_total",
        &[("operation", "Decrypt"), ("outcome", "ok")],
    )
    .unwrap_or(0.0)
}

#[test]
fn prometheus_sees_the_write_rate_of_the_busy_export_and_the_attach_decrypts() {
    require_tool("fio", "fio");
    let (fx, kms_metrics) = fixture_with_kms_metrics();
    let busy = fx.create_volume("busy.vol", 64 * MIB, 4096);
    let idle = fx.create_volume("idle.vol", 64 * MIB, 4096);
    let decrypts_before_attach = decrypts(&kms_metrics);

    let serve_metrics = format!("127.0.0.1:{}", free_port());
    let server = fx.serve_many(
        ADMIN,
        &[(&busy, None), (&idle, None)],
        &["--metrics", &serve_metrics],
    );
    let prometheus = Prometheus::start(&[
        ("envol_serve", serve_metrics.clone()),
        ("envol_kms", kms_metrics.clone()),
    ]);

    // Both targets are scraped (Prometheus's first scrapes come a few
    // seconds after it starts) before fio writes.
    let up = prometheus.query_until("up", Duration::from_secs(20), |r| {
        r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0)
    });
    assert!(
        up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0),
        "targets not up: {up:?}"
    );

    let mut fio = Command::new("fio");
    fio.current_dir(fx.dir.path()).args([
        "--name=metrics",
        "--ioengine=nbd",
        &format!("--uri={}", server.uri("busy")),
        "--rw=randwrite",
        "--bs=64k",
        "--iodepth=8",
        "--size=32M",
        "--time_based",
        "--runtime=4",
    ]);
    let out = output_with_timeout(&mut fio, TIMEOUT);
    assert!(
        out.status.success(),
        "fio failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rate = r#"rate(envol_nbd_request_bytes_total{command="write"}[30s])"#;
    let results = prometheus.query_until(rate, Duration::from_secs(20), |r| {
        r.iter().any(|(m, v)| m["export"] == "busy" && *v > 0.0)
    });
    let rate_of = |export: &str| {
        results
            .iter()
            .find(|(m, _)| m["export"] == export)
            .map(|(_, v)| *v)
    };
    let busy_rate = rate_of("busy").unwrap_or(0.0);
    assert!(
        busy_rate > 0.0,
        "no write rate for the export fio wrote to: {results:?}"
    );
    // Present (every export has its series from the start) and zero.
    assert_eq!(rate_of("idle"), Some(0.0), "the idle export: {results:?}");

    // Serving attached two volumes: two Decrypts of their wrapped keys.
    let expected = decrypts_before_attach + 2.0;
    let decrypt_query = r#"sum(envol_kms_requests_total{operation="Decrypt",outcome="ok"})"#;
    let results = prometheus.query_until(decrypt_query, Duration::from_secs(20), |r| {
        r.first().is_some_and(|(_, v)| *v >= expected)
    });
    assert_eq!(
        results.first().map(|(_, v)| *v),
        Some(expected),
        "Decrypt count of the attach (before it: {decrypts_before_attach}): {results:?}"
    );
    assert!(
        decrypts_before_attach >= 2.0,
        "volume create unwraps once each"
    );
    server.stop();
}

#[test]
fn prometheus_follows_an_online_reencryption_to_its_end() {
    let fx = Fixture::new();
    let vol = fx.create_volume("rotated.vol", 32 * MIB, 4096);
    let serve_metrics = format!("127.0.0.1:{}", free_port());
    let server = fx.serve_many(ADMIN, &[(&vol, None)], &["--metrics", &serve_metrics]);
    let name = vol.export();
    let prometheus = Prometheus::start(&[("envol_serve", serve_metrics.clone())]);
    prometheus.query_until("up", Duration::from_secs(20), |r| {
        r.first().is_some_and(|(_, v)| *v == 1.0)
    });
    // No re-encryption yet: no series.
    assert!(
        prometheus
            .query("envol_reencryption_bytes_total")
            .is_empty()
    );

    let control = common::control::control_of(&server.socket);
    // 4 MiB/s: about eight seconds, several scrapes in between.
    let mut child = fx
        .envol_as(
            ADMIN,
            &[
                "volume",
                "reencrypt",
                vol.path.to_str().unwrap(),
                "--quiet",
                "--max-rate",
                "4M",
                "--control",
                control.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = prometheus.query_until(
        "envol_reencryption_bytes_done / envol_reencryption_bytes_total and on(export) envol_reencryption_running == 1",
        Duration::from_secs(20),
        |r| r.iter().any(|(m, v)| m["export"] == name.as_str() && *v > 0.0 && *v < 1.0),
    );
    assert!(
        running
            .iter()
            .any(|(m, v)| m["export"] == name.as_str() && *v > 0.0 && *v < 1.0),
        "no partial progress seen while it ran: {running:?}"
    );
    assert!(child.wait().unwrap().success());
    let done = prometheus.query_until(
        "envol_reencryption_bytes_done == envol_reencryption_bytes_total and on(export) envol_reencryption_running == 0",
        Duration::from_secs(20),
        |r| r.iter().any(|(m, _)| m["export"] == name.as_str()),
    );
    assert_eq!(
        done.first().map(|(_, v)| *v),
        Some((32 * MIB) as f64),
        "completion: {done:?}"
    );
    server.stop();
}

#[test]
fn a_scrape_counts_exactly_the_bytes_nbdcopy_wrote() {
    require_tool("nbdcopy", "libnbd-bin");
    let (fx, kms_metrics) = fixture_with_kms_metrics();
    let vol = fx.create_volume("copied.vol", 16 * MIB, 4096);
    let serve_metrics = format!("127.0.0.1:{}", free_port());
    let server = fx.serve_many(ADMIN, &[(&vol, None)], &["--metrics", &serve_metrics]);
    let url = format!("http://{serve_metrics}/metrics");
    let export = vol.export();
    let counter = |text: &str, name: &str, command: &str| {
        sample(
            text,
            name,
            &[("export", export.as_str()), ("command", command)],
        )
        .unwrap_or_else(|| panic!("no {name}{{command={command}}} in:\n{text}"))
    };

    let before = http_get(&url);
    let size = 3 * MIB + 12 * 1024;
    let source = fx.path("source.bin");
    std::fs::write(&source, tagged_slot(0x5eed, size as usize)).unwrap();
    let mut nbdcopy = Command::new("nbdcopy");
    nbdcopy.arg(&source).arg(server.uri(&export));
    let out = output_with_timeout(&mut nbdcopy, TIMEOUT);
    assert!(
        out.status.success(),
        "nbdcopy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client has gone once the connection gauge is back to zero.
    let mut after = http_get(&url);
    for _ in 0..50 {
        if sample(&after, "envol_nbd_connections", &[("export", &export)]) == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = http_get(&url);
    }
    let delta = |name: &str, command: &str| {
        counter(&after, name, command) - counter(&before, name, command)
    };
    assert_eq!(
        delta("envol_nbd_request_bytes_total", "write"),
        size as f64,
        "bytes written"
    );
    let writes = delta("envol_nbd_requests_total", "write");
    assert!(writes > 0.0);
    assert_eq!(
        delta("envol_nbd_request_duration_seconds_count", "write"),
        writes,
        "one latency observation per write"
    );
    assert_eq!(delta("envol_nbd_request_bytes_total", "read"), 0.0);
    assert!(
        sample(
            &after,
            "envol_nbd_connections_total",
            &[("export", &export)]
        ) >= Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "envol_nbd_connections", &[("export", &export)]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &after,
            "envol_nbd_requests_in_flight",
            &[("export", &export)]
        ),
        Some(0.0)
    );
    for errno in ["EIO", "EINVAL", "ENOSPC", "EPERM"] {
        assert_eq!(
            sample(
                &after,
                "envol_nbd_errors_total",
                &[("export", &export), ("errno", errno)]
            ),
            Some(0.0),
            "{errno}"
        );
    }

    // The KMS: its one key by state, and the latency of the Decrypts.
    let kms = http_get(&format!("http://{kms_metrics}/metrics"));
    let keys = |state: &str| sample(&kms, "envol_kms_keys", &[("state", state)]);
    assert_eq!(keys("Enabled"), Some(1.0), "{kms}");
    assert_eq!(keys("Disabled"), Some(0.0));
    assert_eq!(keys("PendingDeletion"), Some(0.0));
    assert!(
        sample(
            &kms,
            "envol_kms_request_duration_seconds_count",
            &[("operation", "Decrypt")]
        ) >= Some(2.0),
        "{kms}"
    );

    // No key material in either: not the volume's data key, in any of the
    // forms it could be printed in.
    let data_key = fx.unwrap_data_key(&vol);
    let hex_key = hex::encode(&data_key);
    use base64::Engine;
    let b64_key = base64::engine::general_purpose::STANDARD.encode(&data_key);
    for text in [&after, &kms] {
        assert!(!text.contains(&hex_key) && !text.contains(&b64_key));
    }
    server.stop();
}

#[test]
fn a_non_loopback_metrics_address_is_refused_in_one_line() {
    let (fx, kms_metrics) = fixture_with_kms_metrics();
    let vol = fx.create_volume("refused.vol", 4 * MIB, 4096);
    let decrypts_before = decrypts(&kms_metrics);
    let socket = fx.fresh_socket_path();
    let mut serve = fx.serve_command(ADMIN, &[(&vol, None)], &socket, &["--metrics", "0.0.0.0:9"]);
    let out = output_with_timeout(&mut serve, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_one_clean_line("serve --metrics 0.0.0.0:9", &stderr);
    assert!(
        stderr.contains("refusing to serve plaintext metrics on 0.0.0.0:9")
            && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
    assert_eq!(
        decrypts(&kms_metrics),
        decrypts_before,
        "a refused serve must not unwrap a key"
    );

    let mut kms_serve = common::envol();
    kms_serve
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(fx.kms.data())
        .args(["--metrics", "0.0.0.0:9"]);
    let out = output_with_timeout(&mut kms_serve, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_one_clean_line("kms serve --metrics 0.0.0.0:9", &stderr);
    assert!(
        stderr.contains("refusing to serve plaintext metrics on 0.0.0.0:9"),
        "{stderr}"
    );
}

/// `envol up --metrics`: one endpoint with the export's and the embedded
/// KMS's families (its in-process Decrypt of the attach included).
#[test]
fn up_serves_the_exports_and_the_embedded_kms_on_one_endpoint() {
    require_tool("nbdcopy", "libnbd-bin");
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut up = common::envol();
    up.args([
        "up",
        "--size",
        "16M",
        "--listen",
        "127.0.0.1:0",
        "--kms-listen",
        "none",
    ])
    .arg("--data")
    .arg(&data)
    .args(["--metrics", &metrics])
    .env("HOME", home.path())
    .env(
        "AWS_SHARED_CREDENTIALS_FILE",
        home.path().join(".aws/credentials"),
    )
    .env("AWS_CONFIG_FILE", home.path().join(".aws/config"));
    let common::volume::Drained {
        mut child, lines, ..
    } = common::volume::spawn_drained(&mut up);
    let mut uri = None;
    let mut url = None;
    while uri.is_none() || url.is_none() {
        let line = lines
            .recv_timeout(TIMEOUT)
            .expect("envol up printed its URIs and metrics URL");
        for word in line.split_whitespace() {
            if word.starts_with("nbd+unix://") && uri.is_none() {
                uri = Some(word.to_string());
            }
            if word.starts_with("http://") && word.ends_with("/metrics") {
                url = Some(word.to_string());
            }
        }
    }
    let (uri, url) = (uri.unwrap(), url.unwrap());
    assert_eq!(url, format!("http://{metrics}/metrics"));

    let size = 64 * 1024;
    let source = home.path().join("source.bin");
    std::fs::write(&source, tagged_slot(0xfeed, size)).unwrap();
    let out = output_with_timeout(Command::new("nbdcopy").arg(&source).arg(&uri), TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = http_get(&url);
    assert_eq!(
        sample(
            &text,
            "envol_nbd_request_bytes_total",
            &[("export", "default"), ("command", "write")]
        ),
        Some(size as f64),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "envol_kms_requests_total",
            &[("operation", "Decrypt"), ("outcome", "ok")]
        ) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "envol_kms_keys", &[("state", "Enabled")]),
        Some(1.0)
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "envol up exited with {status}");
}

/// Over TLS (the command's own certificate) a non-loopback metrics address
/// is allowed, and served as HTTPS only.
#[test]
fn kms_serve_with_tls_serves_metrics_over_https_on_any_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kms");
    common::run_ok(
        common::envol()
            .args(["kms", "init", "--self-signed-cert", "--data"])
            .arg(&data),
    );
    let cert = data.join("tls/cert.pem");
    let key = data.join("tls/key.pem");
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let (child, _endpoint) = common::spawn_kms_serve_with(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics",
            &any,
        ],
        std::process::Stdio::inherit(),
    );
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kms = Kill(child);
    let url = format!("https://127.0.0.1:{port}/metrics");
    // The endpoint comes up right after the KMS's own listener.
    let mut text = String::new();
    for _ in 0..50 {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .arg(&url)
            .output()
            .unwrap();
        if out.status.success() {
            text = String::from_utf8(out.stdout).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sample(&text, "envol_kms_keys", &[("state", "Enabled")]),
        Some(0.0),
        "{text}"
    );
    // Plain HTTP on the same port gets no metrics.
    let plain = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain HTTP was answered");
}
