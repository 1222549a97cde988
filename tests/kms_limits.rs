//! What a stranger may hold of the KMS (issue 12, parts 3 and 6): half-sent
//! requests are closed at their deadlines over HTTP and HTTPS, connections
//! beyond the cap are closed at accept, the audit log rotates by size, and
//! unauthenticated failures are counted into a summary line instead of each
//! written. Raw sockets play the stranger; the AWS SDK and the AWS CLI play
//! the clean client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Creds, envol, parse_creds, run_ok, sdk_client, spawn_kms_serve_with};

/// The deadlines the tests run with (the defaults are 10/10/60 s), as bare
/// seconds (the form these flags took before they took units: still valid).
const HEADER: &str = "2";
const BODY: &str = "2";
const IDLE: &str = "4";
/// Longest a test waits for a close that is due after about one deadline.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);

struct Server {
    child: Child,
    url: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
    root: Creds,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str], tls: bool, stderr: Stdio) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kms");
        let mut init = envol();
        init.args(["kms", "init", "--data"]).arg(&data);
        if tls {
            init.arg("--self-signed-cert");
        }
        let root = parse_creds(&run_ok(&mut init));
        let cert = data.join("tls/cert.pem");
        let key = data.join("tls/key.pem");
        let mut args: Vec<&str> = extra.to_vec();
        let (cert_s, key_s) = (cert.to_string_lossy(), key.to_string_lossy());
        if tls {
            args.extend(["--tls-cert", &cert_s, "--tls-key", &key_s]);
        }
        let (child, url) = spawn_kms_serve_with(&data, &args, stderr);
        Server {
            child,
            url,
            data,
            _dir: dir,
            root,
        }
    }

    fn addr(&self) -> String {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string()
    }

    /// SIGTERM and wait for a clean exit (the audit summary is written then).
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "kms serve exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kms serve did not stop within 10 s of SIGTERM");
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN + Duration::from_secs(2)))
        .unwrap();
    s
}

/// Reads until the peer closes; returns what arrived and how long after
/// `since` the close came. A read timeout fails the test: the server never
/// closed.
fn read_until_closed(s: &mut impl Read, since: Instant) -> (String, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // rustls reports a close without close_notify this way.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!(
                "still open after {:?} ({e}); got {:?}",
                since.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), since.elapsed())
}

const HALF_HEADER: &[u8] =
    b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Le";
const HEADER_OF_100_BYTES_BODY: &[u8] = b"POST / HTTP/1.1\r\nHost: kms\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 100\r\n\r\n{\"Limit\":";
/// A whole request with no signature: answered (MissingAuthenticationToken)
/// and the connection kept alive.
const UNSIGNED: &[u8] = b"POST / HTTP/1.1\r\nHost: kms\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 2\r\n\r\n{}";

fn list_keys_ok(url: &str, creds: &Creds) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = sdk_client(url, creds, None);
    rt.block_on(client.list_keys().send())
        .expect("a clean client's ListKeys succeeds");
}

fn assert_closed_near(what: &str, took: Duration, deadline: Duration) {
    assert!(
        took >= deadline.mul_f64(0.8) && took < deadline + CLOSE_WITHIN,
        "{what}: closed after {took:?}, expected about {deadline:?}"
    );
}

#[test]
fn half_sent_requests_are_closed_at_their_deadlines_and_clean_clients_are_served() {
    let server = Server::start(
        &[
            "--header-timeout",
            HEADER,
            "--body-timeout",
            BODY,
            "--idle-timeout",
            IDLE,
        ],
        false,
        Stdio::inherit(),
    );
    let addr = server.addr();
    let start = Instant::now();
    // 200 connections that sent half a header (the attack, scaled
    // down), one that sent nothing, one with a whole header and half a body.
    let mut halves: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(HALF_HEADER).unwrap();
            s
        })
        .collect();
    let mut silent = connect(&addr);
    let mut half_body = connect(&addr);
    half_body.write_all(HEADER_OF_100_BYTES_BODY).unwrap();
    // An idle keep-alive connection: one unsigned request answered, then nothing.
    let mut idle = connect(&addr);
    idle.write_all(UNSIGNED).unwrap();

    // Meanwhile a real client is served.
    list_keys_ok(&server.url, &server.root);
    let header = Duration::from_secs_f64(HEADER.parse().unwrap());
    assert!(
        start.elapsed() < header,
        "served while the half-sent requests were still open: {:?}",
        start.elapsed()
    );

    for s in halves.iter_mut() {
        let (_, took) = read_until_closed(s, start);
        assert_closed_near("half a header", took, header);
    }
    let (_, took) = read_until_closed(&mut silent, start);
    assert_closed_near("nothing sent", took, header);

    let (answer, took) = read_until_closed(&mut half_body, start);
    assert_closed_near(
        "half a body",
        took,
        Duration::from_secs_f64(BODY.parse().unwrap()),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeoutException"), "{answer}");

    // The idle connection outlives the header deadline: it is closed at the
    // idle deadline, after its answer.
    let (answer, took) = read_until_closed(&mut idle, start);
    assert!(answer.contains("MissingAuthenticationToken"), "{answer}");
    assert_closed_near(
        "idle keep-alive",
        took,
        Duration::from_secs_f64(IDLE.parse().unwrap()),
    );

    // And the server still serves.
    list_keys_ok(&server.url, &server.root);
}

/// A rustls client trusting the KMS's self-signed certificate.
fn tls_client(cert: &Path) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake.
fn tls_connect(addr: &str, config: &Arc<tokio_rustls::rustls::ClientConfig>) -> Tls {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = tokio_rustls::rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = tokio_rustls::rustls::StreamOwned::new(conn, connect(addr));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

#[test]
fn over_tls_handshakes_and_half_sent_requests_are_closed_at_their_deadlines() {
    let server = Server::start(
        &[
            "--header-timeout",
            HEADER,
            "--body-timeout",
            BODY,
            "--idle-timeout",
            IDLE,
            "--tls-handshake-timeout",
            "1",
        ],
        true,
        Stdio::inherit(),
    );
    let addr = server.addr();
    let config = tls_client(&server.data.join("tls/cert.pem"));
    let start = Instant::now();
    // A TCP connection that never starts the handshake.
    let mut no_handshake = connect(&addr);
    // After the handshake: half a header, and a header with half a body.
    let mut halves: Vec<Tls> = (0..20)
        .map(|_| {
            let mut t = tls_connect(&addr, &config);
            t.write_all(HALF_HEADER).unwrap();
            t.flush().unwrap();
            t
        })
        .collect();
    let mut half_body = tls_connect(&addr, &config);
    half_body.write_all(HEADER_OF_100_BYTES_BODY).unwrap();
    half_body.flush().unwrap();

    // Meanwhile the AWS CLI, trusting the certificate, is served.
    let out = Command::new("aws")
        .args([
            "kms",
            "list-keys",
            "--region",
            "us-east-1",
            "--endpoint-url",
        ])
        .arg(&server.url)
        .env("AWS_ACCESS_KEY_ID", &server.root.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.root.secret)
        .env("AWS_CA_BUNDLE", server.data.join("tls/cert.pem"))
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("the AWS CLI (`aws`) must be installed: pip install awscli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let secs = |s: &str| Duration::from_secs_f64(s.parse().unwrap());
    let (_, took) = read_until_closed(&mut no_handshake, start);
    assert_closed_near("no TLS handshake", took, Duration::from_secs(1));
    for t in halves.iter_mut() {
        let (_, took) = read_until_closed(t, start);
        assert_closed_near("half a header over TLS", took, secs(HEADER));
    }
    let (answer, took) = read_until_closed(&mut half_body, start);
    assert_closed_near("half a body over TLS", took, secs(BODY));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Waits (bounded) until the server holds `n` more descriptors than `base`.
fn await_fds(server: &Server, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.open_fds() < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.open_fds() >= at_least, "connections accepted");
}

fn cap_log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("--max-connections"))
        .map(str::to_string)
        .collect()
}

#[test]
fn at_the_cap_the_oldest_half_sent_connection_makes_room_and_clean_clients_get_in() {
    const CAP: usize = 8;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start(
        // A long header deadline: only eviction frees a slot here.
        &[
            "--max-connections",
            &CAP.to_string(),
            "--header-timeout",
            "60",
        ],
        false,
        Stdio::from(log.reopen().unwrap()),
    );
    let addr = server.addr();
    let base = server.open_fds();
    let start = Instant::now();
    // 208 half-sent requests, one after another: the cap's worth is held
    // at any moment, each newcomer closing the oldest.
    let mut peak = 0;
    let mut conns: Vec<TcpStream> = Vec::new();
    for i in 0..CAP + 200 {
        let mut s = connect(&addr);
        s.write_all(HALF_HEADER).unwrap();
        conns.push(s);
        if i + 1 == CAP {
            await_fds(&server, base + CAP);
        }
        peak = peak.max(server.open_fds());
    }
    assert!(
        peak <= base + CAP + 2,
        "descriptors held: {peak}, expected at most {} + 2",
        base + CAP
    );
    // All but the newest CAP were closed, long before the header deadline.
    let newest = conns.split_off(200);
    for s in conns.iter_mut() {
        let (got, took) = read_until_closed(s, start);
        assert!(got.is_empty(), "closed without an answer: {got}");
        assert!(took < Duration::from_secs(20), "evicted promptly: {took:?}");
    }
    for s in &newest {
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let still_open =
            matches!((&*s).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open, "the newest {CAP} keep their slots");
    }
    // A clean client is served at once, the flood notwithstanding.
    list_keys_ok(&server.url, &server.root);

    // Logged once per interval with counts, not once per connection.
    let lines = cap_log_lines(log.path());
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "1-2 lines, got {lines:?}"
    );
    assert!(
        lines[0].contains("closed 1 idle or half-sent connection(s)"),
        "{}",
        lines[0]
    );
}

#[test]
fn when_every_slot_is_handling_a_request_newcomers_are_refused_at_accept() {
    const CAP: usize = 4;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start(
        &[
            "--max-connections",
            &CAP.to_string(),
            "--body-timeout",
            "60",
        ],
        false,
        Stdio::from(log.reopen().unwrap()),
    );
    let addr = server.addr();
    let base = server.open_fds();
    // CAP requests whose header is in and whose body is half sent: the
    // server is handling each (it asked for the body: 100 Continue).
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(
                b"POST / HTTP/1.1\r\nHost: kms\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
            )
            .unwrap();
            let mut got = [0u8; 25];
            s.read_exact(&mut got).unwrap();
            assert!(got.starts_with(b"HTTP/1.1 100 Continue"), "{got:?}");
            s.write_all(b"{\"Limit\":").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let mut peak = 0;
    for _ in 0..50 {
        let mut extra = connect(&addr);
        let (got, _) = read_until_closed(&mut extra, start);
        assert!(got.is_empty(), "refused without an answer: {got}");
        peak = peak.max(server.open_fds());
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "refusals are immediate: {:?}",
        start.elapsed()
    );
    assert!(peak <= base + CAP + 2, "descriptors held: {peak}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = sdk_client(&server.url, &server.root, None);
    assert!(
        rt.block_on(client.list_keys().send()).is_err(),
        "a client beyond the cap is refused"
    );
    // A slot frees when one of them goes; the clean client gets in.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rt.block_on(client.list_keys().send()) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("still refused after a slot freed: {e:?}"),
        }
    }
    let lines = cap_log_lines(log.path());
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "1-2 lines, got {lines:?}"
    );
    assert!(lines[0].contains("refused 1 connection(s)"), "{}", lines[0]);
}

/// Sends `request` on a keep-alive connection and reads one response;
/// returns its status code.
fn exchange(s: &mut TcpStream, request: &[u8]) -> u16 {
    s.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn unauthenticated_floods_are_counted_in_a_summary_and_authenticated_requests_each_audited() {
    let mut server = Server::start(&[], false, Stdio::inherit());
    let addr = server.addr();
    let audit = server.data.join("audit.log");
    let size_before = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);

    // 2,000 requests signed with an access key the KMS does not know.
    let now = chrono::Utc::now();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: TrentService.ListKeys\r\nX-Amz-Date: {}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIAUNKNOWNKEY000000/{}/us-east-1/kms/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}\r\n\
         Content-Length: 2\r\n\r\n{{}}",
        now.format("%Y%m%dT%H%M%SZ"),
        now.format("%Y%m%d"),
        "0".repeat(64)
    );
    const FLOOD: usize = 2000;
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = (0..4).map(|_| connect(&addr)).collect();
    for i in 0..FLOOD {
        let status = exchange(&mut conns[i % 4], request.as_bytes());
        assert!((400..500).contains(&status), "refused: {status}");
    }
    let flood_took = start.elapsed();
    // A real client with a wrong secret: InvalidSignature, counted too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wrong = Creds {
        access_key_id: server.root.access_key_id.clone(),
        secret: "not-the-secret".into(),
    };
    for _ in 0..5 {
        assert!(
            rt.block_on(sdk_client(&server.url, &wrong, None).list_keys().send())
                .is_err()
        );
    }
    // Authenticated requests, each audited.
    let client = sdk_client(&server.url, &server.root, None);
    for _ in 0..20 {
        rt.block_on(client.list_keys().send()).unwrap();
    }
    let flood_bytes = std::fs::metadata(&audit).unwrap().len() - size_before;
    server.stop();

    let lines = audit_lines(&audit);
    let unauthenticated: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["principal"].is_null() && l["outcome"] == "failure")
        .collect();
    let summaries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["outcome"] == "unauthenticated-summary")
        .collect();
    // Every line has a request line's core fields, summaries too.
    for l in &lines {
        assert!(l["time"].is_string() && l["request_id"].is_string() && l["operation"].is_string());
    }
    let authenticated = lines
        .iter()
        .filter(|l| l["operation"] == "ListKeys" && l["principal"].is_string())
        .count();
    assert_eq!(authenticated, 20, "each authenticated request audited");
    assert_eq!(unauthenticated.len(), 1, "the first written in full");
    assert_eq!(summaries.len(), 1, "the rest in one summary: {summaries:?}");
    let summary = summaries[0];
    assert_eq!(summary["count"], (FLOOD + 5 - 1) as u64, "{summary}");
    assert_eq!(summary["sources"]["127.0.0.1"], (FLOOD + 5 - 1) as u64);
    assert_eq!(
        summary["errors"]["InvalidSignatureException"], 5,
        "{summary}"
    );
    eprintln!(
        "{FLOOD} unauthenticated requests in {flood_took:?}: audit log grew {flood_bytes} bytes \
         before shutdown, {} bytes in all",
        std::fs::metadata(&audit).unwrap().len() - size_before
    );
    assert!(
        flood_bytes < 16 * 1024,
        "audit log grew {flood_bytes} bytes"
    );
}

#[test]
fn the_audit_log_rotates_by_size_and_keeps_n_files() {
    const MAX: u64 = 4096;
    let server = Server::start(
        &["--audit-max-size", "4K", "--audit-keep", "2"],
        false,
        Stdio::inherit(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = sdk_client(&server.url, &server.root, None);
    for _ in 0..100 {
        rt.block_on(client.list_keys().send()).unwrap();
    }
    let last = rt
        .block_on(client.create_key().send())
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_string();

    let audit = server.data.join("audit.log");
    let rotated = |n: usize| server.data.join(format!("audit.log.{n}"));
    assert!(rotated(1).exists() && rotated(2).exists(), "two kept");
    assert!(!rotated(3).exists(), "no more than --audit-keep");
    let files = [rotated(2), rotated(1), audit.clone()];
    let mut previous_last_time = String::new();
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= MAX, "{}: {len} bytes", f.display());
        let lines = audit_lines(f);
        assert!(!lines.is_empty(), "{}", f.display());
        // Oldest to newest: each file's lines come after the previous file's.
        let first = lines[0]["time"].as_str().unwrap().to_string();
        assert!(first >= previous_last_time, "{}", f.display());
        previous_last_time = lines.last().unwrap()["time"].as_str().unwrap().to_string();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} stays private", f.display());
    }
    // The newest file holds the latest request.
    let newest = audit_lines(&audit);
    assert!(
        newest
            .iter()
            .any(|l| l["operation"] == "CreateKey" && l["key"] == last.as_str()),
        "the CreateKey of {last} is in audit.log"
    );
}

#[test]
fn envol_up_applies_the_same_limits_to_its_embedded_kms() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("envol");
    let mut child = envol()
        .args(["up", "--size", "16M", "--listen", "127.0.0.1:0"])
        .args(["--kms-listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(["--kms-max-connections", "4", "--kms-header-timeout", "3s"])
        .args(["--audit-max-size", "4K", "--audit-keep", "1"])
        .env("HOME", tmp.path())
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            tmp.path().join("credentials"),
        )
        .env("AWS_CONFIG_FILE", tmp.path().join("config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(|w| w.trim_end_matches(':').to_string())
        })
        .expect("up names its KMS endpoint");
    std::thread::spawn(move || for _ in lines {});
    let addr = url.trim_start_matches("http://").to_string();

    // Five half-sent requests on a cap of four: the oldest is evicted at
    // once, the rest closed at the 3 s header deadline.
    let start = Instant::now();
    let mut halves: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(HALF_HEADER).unwrap();
            s
        })
        .collect();
    let (_, took) = read_until_closed(&mut halves[0], start);
    assert!(took < Duration::from_millis(2500), "evicted: {took:?}");
    for s in &mut halves[1..] {
        let (_, took) = read_until_closed(s, start);
        assert_closed_near("half a header (up)", took, Duration::from_secs(3));
    }

    // The audit log rotates at 4 KiB and keeps one old file.
    let creds = parse_creds(&std::fs::read_to_string(tmp.path().join("credentials")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = sdk_client(&url, &creds, None);
    for _ in 0..40 {
        rt.block_on(client.list_keys().send()).unwrap();
    }
    let kms_dir = data.join("kms");
    for f in ["audit.log", "audit.log.1"] {
        let len = std::fs::metadata(kms_dir.join(f)).unwrap().len();
        assert!(len <= 4096, "{f}: {len} bytes");
    }
    assert!(!kms_dir.join("audit.log.2").exists());
}
