//! NBD over TLS (NBD_OPT_STARTTLS): libnbd (nbdinfo, nbdcopy) and qemu-img
//! over TLS with a test CA, FORCEDTLS refusals on a raw socket, option
//! state forgotten across STARTTLS (checked with a rustls client), client
//! certificates with `envol serve --tls-ca`. The tests that move data run
//! on both transmission loops (`threaded::NAME`, `async_loop::NAME`): a
//! TLS connection's session is shared by the threaded loop's threads
//! (`tls_session.rs`), and the async loop runs it on tokio-rustls.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::nbd::{MemDevice, TestServer, export, run_tool};
use common::raw::*;
use common::tls::Pki;
use common::volume::{ADMIN, Fixture, MIB, VolumeServer};
use envol::nbd::{Server, TlsConfig, TlsMode, TransmissionLoop};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls;

const CLIENT_FLAGS: u32 = 0b11;
const REP_ERR_TLS_REQD: u32 = 0x8000_0005;

fn tls_server(pki: &Pki, mode: TlsMode, disk: Arc<MemDevice>) -> TestServer {
    tls_server_on(TransmissionLoop::default(), pki, mode, disk)
}

fn tls_server_on(
    transmission: TransmissionLoop,
    pki: &Pki,
    mode: TlsMode,
    disk: Arc<MemDevice>,
) -> TestServer {
    let tls = TlsConfig::from_pem_files(&pki.server_cert, &pki.server_key, None, mode).unwrap();
    TestServer::start_server(
        Server::new(vec![export("disk", disk)])
            .unwrap()
            .with_tls(tls)
            .with_transmission_loop(transmission),
    )
}

fn tls_uri(socket: &Path, export: &str, certs: &Path) -> String {
    format!(
        "nbds+unix:///{export}?socket={}&tls-certificates={}",
        socket.display(),
        certs.display()
    )
}

/// Runs a client that must fail; returns its output.
fn fails(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        !out.status.success(),
        "`{program} {}` should have failed\nstdout:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "{program} failed as expected: {}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

fn nbdinfo_size(uri: &str) -> u64 {
    let out = run_tool("nbdinfo", &["--json", uri]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["exports"][0]["export-size"].as_u64().unwrap()
}

fn nbdinfo_nbdcopy_and_qemu_img_over_tls(transmission: TransmissionLoop) {
    let pki = Pki::new();
    let disk = MemDevice::new(8 * MIB as usize);
    let server = tls_server_on(transmission, &pki, TlsMode::Require, disk.clone());
    let uri = tls_uri(&server.socket, "disk", &pki.client_anon);

    let out = run_tool("nbdinfo", &["--json", &uri]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["TLS"], true, "{v}");
    assert_eq!(v["exports"][0]["export-size"], 8 * MIB);

    // nbdcopy in and out over TLS, 4 connections.
    let src = server.dir.path().join("src.img");
    let back = server.dir.path().join("back.img");
    let data: Vec<u8> = (0..8 * MIB as usize)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    run_tool("nbdcopy", &["--connections=4", src.to_str().unwrap(), &uri]);
    assert!(
        disk.contents() == data,
        "nbdcopy over TLS wrote other bytes"
    );
    run_tool("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);

    // qemu-img with x509 credentials from the same directory layout.
    let object = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        pki.client_anon.display()
    );
    let image = format!(
        "driver=nbd,server.type=unix,server.path={},export=disk,tls-creds=tls0,tls-hostname=localhost",
        server.socket.display()
    );
    let out = run_tool(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &image],
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("8 MiB"), "{info}");
    let copy = server.dir.path().join("qemu.img");
    run_tool(
        "qemu-img",
        &[
            "convert",
            "--object",
            &object,
            "--image-opts",
            &image,
            "-O",
            "raw",
            copy.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&copy).unwrap() == data);
}

#[test]
fn forced_tls_refuses_everything_but_starttls_before_tls() {
    let pki = Pki::new();
    let server = tls_server(&pki, TlsMode::Require, MemDevice::new(MIB as usize));

    // A plaintext libnbd client cannot get in.
    fails("nbdinfo", &[&server.uri("disk")]);

    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    for (option, data) in [
        (OPT_GO, info_data("disk", &[])),
        (OPT_INFO, info_data("disk", &[])),
        (OPT_LIST, Vec::new()),
        (OPT_STRUCTURED_REPLY, Vec::new()),
        (0x99, vec![0; 10]),
        // Oversized too: FORCEDTLS answers every option the same way.
        (0x98, vec![0; 200_000]),
    ] {
        let r = c.option(option, &data);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, REP_ERR_TLS_REQD, "option {option}");
    }
    // STARTTLS with data is invalid; haggling continues.
    assert_eq!(c.option(OPT_STARTTLS, b"x")[0].kind, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_ABORT, &[])[0].kind, REP_ACK);
    assert!(c.is_closed());

    // EXPORT_NAME cannot carry an error: the server hangs up.
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    c.send_option(OPT_EXPORT_NAME, b"disk");
    assert!(c.is_closed());
    // A client without fixed newstyle cannot do TLS at all.
    let mut c = Raw::connect(server.connect(), 0);
    assert!(c.is_closed());
}

/// A minimal TLS client: trusts the test CA, expects "localhost".
fn tls_client(pki: &Pki, sock: std::os::unix::net::UnixStream) -> impl Read + Write {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&pki.ca_cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn send_option(s: &mut impl Write, option: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
    s.flush().unwrap();
}

/// Every reply to one option, up to ACK or an error: (type, data).
fn replies(s: &mut impl Read) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut data).unwrap();
        out.push((kind, data));
        if kind == REP_ACK || kind & 0x8000_0000 != 0 {
            return out;
        }
    }
}

#[test]
fn starttls_restarts_haggling_over_tls_with_state_forgotten() {
    let pki = Pki::new();
    let disk = MemDevice::new(MIB as usize);
    disk.fill(4096, b"secret");
    let server = tls_server(&pki, TlsMode::Optional, disk);

    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    // Optional mode: plaintext options are served.
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[])[0].kind, REP_ACK);
    assert_eq!(c.option(OPT_STARTTLS, &[])[0].kind, REP_ACK);
    // No second greeting: the TLS handshake starts right away.
    let mut t = tls_client(&pki, c.s);

    // Structured replies were negotiated before TLS and must be forgotten,
    // so SET_META_CONTEXT is now refused as if they never were.
    send_option(
        &mut t,
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &["base:allocation"]),
    );
    assert_eq!(replies(&mut t)[0].0, REP_ERR_INVALID);
    // STARTTLS again: invalid, TLS is already up.
    send_option(&mut t, OPT_STARTTLS, &[]);
    assert_eq!(replies(&mut t)[0].0, REP_ERR_INVALID);
    // GO, then a simple-reply READ over TLS.
    send_option(&mut t, OPT_GO, &info_data("disk", &[]));
    assert_eq!(replies(&mut t).last().unwrap().0, REP_ACK);
    let mut req = Vec::new();
    req.extend_from_slice(&0x25609513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&CMD_READ.to_be_bytes());
    req.extend_from_slice(&7u64.to_be_bytes());
    req.extend_from_slice(&4096u64.to_be_bytes());
    req.extend_from_slice(&6u32.to_be_bytes());
    t.write_all(&req).unwrap();
    t.flush().unwrap();
    let mut reply = [0u8; 16 + 6];
    t.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[0..4], &0x67446698u32.to_be_bytes());
    assert_eq!(&reply[4..8], &[0; 4], "no error");
    assert_eq!(&reply[8..16], &7u64.to_be_bytes());
    assert_eq!(&reply[16..], b"secret");
}

fn optional_tls_serves_plaintext_and_tls_clients(transmission: TransmissionLoop) {
    let pki = Pki::new();
    let server = tls_server_on(
        transmission,
        &pki,
        TlsMode::Optional,
        MemDevice::new(2 * MIB as usize),
    );
    assert_eq!(nbdinfo_size(&server.uri("disk")), 2 * MIB);
    assert_eq!(
        nbdinfo_size(&tls_uri(&server.socket, "disk", &pki.client_anon)),
        2 * MIB
    );
}

/// Over TCP, many requests in flight on several connections at once, in
/// both directions, with replies far larger than what the session seals
/// per turn (64 KiB) and smaller than a record: nbdcopy with 4
/// connections, 64 requests each, 1 MiB and then 4 KiB requests; every
/// byte comes back as written and nbdcopy exits cleanly.
fn nbdcopy_over_tcp_tls_many_requests_in_flight(transmission: TransmissionLoop) {
    let pki = Pki::new();
    let disk = MemDevice::new(32 * MIB as usize);
    let server = tls_server_on(transmission, &pki, TlsMode::Require, disk.clone());
    let uri = format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        server.tcp.port(),
        pki.client_anon.display()
    );
    let data: Vec<u8> = (0..32 * MIB as usize)
        .map(|i| (i * 131 % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    let src = server.dir.path().join("src.img");
    std::fs::write(&src, &data).unwrap();
    for size in ["1048576", "4096"] {
        let back = server.dir.path().join(format!("back-{size}.img"));
        let request_size = format!("--request-size={size}");
        let common = ["--connections=4", "--requests=64", &request_size];
        let mut args = common.to_vec();
        args.extend([src.to_str().unwrap(), &uri]);
        run_tool("nbdcopy", &args);
        assert!(
            disk.contents() == data,
            "nbdcopy {size} over TLS wrote other bytes"
        );
        let mut args = common.to_vec();
        args.extend([&uri, back.to_str().unwrap()]);
        run_tool("nbdcopy", &args);
        assert!(
            std::fs::read(&back).unwrap() == data,
            "nbdcopy {size} over TLS read other bytes"
        );
    }
}

crate::on_every_transmission_loop! {
    nbdinfo_nbdcopy_and_qemu_img_over_tls,
    optional_tls_serves_plaintext_and_tls_clients,
    nbdcopy_over_tcp_tls_many_requests_in_flight,
}

/// `envol serve --tls-cert --tls-key --tls-ca`: TLS required by default,
/// the printed URIs are `nbds+unix://`, and only clients with a certificate
/// from the given CA get in.
#[test]
fn envol_serve_requires_tls_and_client_certificates() {
    let pki = Pki::new();
    let fx = Fixture::new();
    let vol = fx.create_volume("tls.envol", 16 * MIB, 4096);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(
        ADMIN,
        &[(&vol, None)],
        &socket,
        &pki.serve_args_requiring_clients(),
    );
    let server = VolumeServer::spawn(&mut cmd, socket.clone(), &[vol.export()]);
    assert!(
        server.first_uri().starts_with("nbds+unix:///tls?socket="),
        "{}",
        server.banner
    );
    let with = |dir: &Path| format!("{}&tls-certificates={}", server.first_uri(), dir.display());

    // With a client certificate from the CA: a write and a read back.
    let src = fx.path("src.img");
    let back = fx.path("back.img");
    let data: Vec<u8> = (0..16 * MIB as usize).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    run_tool("nbdcopy", &[src.to_str().unwrap(), &with(&pki.client_auth)]);
    run_tool(
        "nbdcopy",
        &[&with(&pki.client_auth), back.to_str().unwrap()],
    );
    assert!(std::fs::read(&back).unwrap() == data);

    // Without a certificate, with one from another CA, or in plaintext:
    // refused.
    fails("nbdinfo", &[&with(&pki.client_anon)]);
    fails("nbdinfo", &[&with(&pki.client_rogue)]);
    let plain = format!("nbd+unix:///tls?socket={}", socket.display());
    fails("nbdinfo", &[&plain]);

    // The server survived all of that.
    assert_eq!(nbdinfo_size(&with(&pki.client_auth)), 16 * MIB);
    server.stop();
}

#[test]
fn envol_serve_rejects_unusable_tls_files_before_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = common::envol()
        .args(["serve", "none.envol", "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--tls-cert")
        .arg(&junk)
        .arg("--tls-key")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("junk.pem"), "{err}");
    assert!(!dir.path().join("s.sock").exists());

    // --tls-key without --tls-cert is a usage error.
    let out = common::envol()
        .args(["serve", "none.envol", "--tls-key"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
