//! `envol serve --config FILE`: a TOML file serves its exports (seen by
//! nbdinfo), the command line overrides it, and a bad file is refused in
//! one line naming the file and the key.

mod common;

use std::path::{Path, PathBuf};

use common::nbd::run_tool;
use common::prometheus;
use common::tls::Pki;
use common::volume::{ADMIN, Fixture, MIB, VolumeServer, assert_one_clean_line, run_fails};

/// A configuration serving `a.vol` (as a string) and `b.vol` (a read-only
/// table) on `socket`, its metrics on `metrics_port`, with the KMS client settings in `[kms]`: the command
/// lines below give no --endpoint or --profile.
fn write_config(fx: &Fixture, socket: &Path, metrics_port: u16) -> PathBuf {
    let text = format!(
        r#"
socket = "{socket}"
metrics = "127.0.0.1:{metrics_port}"
exports = [
    "{a}=alpha",
    {{ volume = "{b}", name = "beta", read_only = true }},
]

[limits]
max_connections = 8
request_timeout = "10s"

[kms]
endpoint = "{endpoint}"
profile = "{ADMIN}"
"#,
        socket = socket.display(),
        a = fx.path("a.vol").display(),
        b = fx.path("b.vol").display(),
        endpoint = fx.kms.endpoint,
    );
    let path = fx.path("envol.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn nbdinfo(uri: &str) -> serde_json::Value {
    let out = run_tool("nbdinfo", &["--json", uri]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["exports"][0].clone()
}

fn serve_with_config(
    fx: &Fixture,
    config: &Path,
    extra: &[&str],
    socket: &Path,
    names: &[&str],
) -> VolumeServer {
    let mut cmd = fx.envol(&["serve", "--config", config.to_str().unwrap()]);
    cmd.args(extra);
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    VolumeServer::spawn(&mut cmd, socket.to_path_buf(), &names)
}

#[test]
fn serves_the_exports_of_the_file() {
    let fx = Fixture::new();
    fx.create_volume("a.vol", 16 * MIB, 4096);
    fx.create_volume("b.vol", 8 * MIB, 512);
    let socket = fx.path("from-file.sock");
    let metrics_port = prometheus::free_port();
    let config = write_config(&fx, &socket, metrics_port);

    let server = serve_with_config(&fx, &config, &[], &socket, &["alpha", "beta"]);
    let a = nbdinfo(server.uri("alpha"));
    assert_eq!(a["export-size"], 16 * MIB, "{a}");
    assert_eq!(a["is_read_only"], false, "{a}");
    let b = nbdinfo(server.uri("beta"));
    assert_eq!(b["export-size"], 8 * MIB, "{b}");
    assert_eq!(b["is_read_only"], true, "{b}");
    // The file's `metrics` address serves both exports' series.
    let text = prometheus::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    for export in ["alpha", "beta"] {
        assert!(
            text.contains(&format!("export=\"{export}\"")),
            "no series for {export} in:\n{text}"
        );
    }
    server.stop();
}

#[test]
fn the_command_line_overrides_the_file() {
    let fx = Fixture::new();
    fx.create_volume("a.vol", 16 * MIB, 4096);
    fx.create_volume("b.vol", 8 * MIB, 512);
    fx.create_volume("c.vol", 4 * MIB, 512);
    let file_socket = fx.path("from-file.sock");
    let config = write_config(&fx, &file_socket, prometheus::free_port());

    // --socket and --read-only win over the file's socket and exports' modes.
    let socket = fx.path("from-flag.sock");
    let server = serve_with_config(
        &fx,
        &config,
        &["--socket", socket.to_str().unwrap(), "--read-only"],
        &socket,
        &["alpha", "beta"],
    );
    assert!(!file_socket.exists(), "the file's socket is not used");
    assert_eq!(nbdinfo(server.uri("alpha"))["is_read_only"], true);
    server.stop();

    // VOLUME arguments replace the file's exports (the rest of the file stays).
    let c = fx.path("c.vol");
    let server = serve_with_config(
        &fx,
        &config,
        &[&format!("{}=gamma", c.display())],
        &file_socket,
        &["gamma"],
    );
    assert_eq!(server.uris.len(), 1, "{:?}", server.uris);
    assert_eq!(nbdinfo(server.uri("gamma"))["export-size"], 4 * MIB);
    server.stop();

    // A flag's environment variable overrides the file too (ENVOL_CONTROL).
    let control = fx.path("env.control");
    let mut cmd = fx.envol(&["serve", "--config", config.to_str().unwrap()]);
    cmd.env("ENVOL_CONTROL", &control);
    let server = VolumeServer::spawn(&mut cmd, file_socket.clone(), &["alpha".into()]);
    assert!(control.exists(), "control socket at ENVOL_CONTROL");
    server.stop();
}

/// `[tls]` from the file: TLS required, client certificates from its CA;
/// `--tls optional` on the command line changes the mode and keeps the
/// file's certificate.
#[test]
fn tls_from_the_file() {
    let pki = Pki::new();
    let fx = Fixture::new();
    fx.create_volume("a.vol", 16 * MIB, 4096);
    fx.create_volume("b.vol", 8 * MIB, 512);
    let socket = fx.path("tls.sock");
    let config = write_config(&fx, &socket, prometheus::free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display()
    ));
    std::fs::write(&config, text).unwrap();

    let server = serve_with_config(&fx, &config, &[], &socket, &["alpha", "beta"]);
    let uri = server.uri("alpha").to_string();
    assert!(
        uri.starts_with("nbds+unix:///alpha?socket="),
        "{}",
        server.banner
    );
    let with = |dir: &Path| format!("{uri}&tls-certificates={}", dir.display());
    assert_eq!(nbdinfo(&with(&pki.client_auth))["export-size"], 16 * MIB);
    let anon = std::process::Command::new("nbdinfo")
        .arg(with(&pki.client_anon))
        .output()
        .expect("nbdinfo");
    assert!(
        !anon.status.success(),
        "a client without a certificate is refused"
    );
    let plain = format!("nbd+unix:///alpha?socket={}", socket.display());
    let out = std::process::Command::new("nbdinfo")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!out.status.success(), "plaintext is refused");
    server.stop();

    let server = serve_with_config(
        &fx,
        &config,
        &["--tls", "optional"],
        &socket,
        &["alpha", "beta"],
    );
    assert_eq!(
        nbdinfo(&plain)["export-size"],
        16 * MIB,
        "plaintext allowed"
    );
    server.stop();
}

#[test]
fn a_bad_file_is_one_line_naming_the_key() {
    let fx = Fixture::new();
    let socket = fx.path("never.sock");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown key",
            "[limits]\nmax_conections = 5\n",
            &["max_conections", "limits"],
        ),
        ("unknown top-level key", "sockets = \"/x\"\n", &["sockets"]),
        (
            "bad value",
            "exports = [\"x.vol\"]\n[limits]\nrequest_timeout = \"soon\"\n",
            &["limits.request_timeout", "soon"],
        ),
        ("bad address", "listen = \"nowhere\"\n", &["listen"]),
        ("not TOML", "listen = \n", &["line 2"]),
    ];
    for (what, text, needles) in cases {
        let config = fx.path("bad.toml");
        std::fs::write(
            &config,
            format!("socket = \"{}\"\n{text}", socket.display()),
        )
        .unwrap();
        let mut cmd = fx.envol(&["serve", "--config", config.to_str().unwrap()]);
        let (_, stderr) = run_fails(&mut cmd);
        assert_one_clean_line(what, &stderr);
        assert!(
            stderr.contains(config.to_str().unwrap()),
            "{what}: names the file: {stderr}"
        );
        for n in *needles {
            assert!(stderr.contains(n), "{what}: {n:?} in {stderr}");
        }
        assert!(!socket.exists(), "{what}: nothing was served");
    }

    let missing = fx.path("missing.toml");
    let mut cmd = fx.envol(&["serve", "--config", missing.to_str().unwrap()]);
    let (_, stderr) = run_fails(&mut cmd);
    assert_one_clean_line("missing file", &stderr);
    assert!(
        stderr.contains("missing.toml") && stderr.contains("No such file"),
        "{stderr}"
    );

    // A CA without a certificate (neither in the file nor on the command line).
    let plain = fx.path("plain.toml");
    std::fs::write(
        &plain,
        format!("socket = \"{}\"\nexports = [\"x.vol\"]\n", socket.display()),
    )
    .unwrap();
    let mut cmd = fx.envol(&[
        "serve",
        "--config",
        plain.to_str().unwrap(),
        "--tls-ca",
        "ca.pem",
    ]);
    let (_, stderr) = run_fails(&mut cmd);
    assert_one_clean_line("CA without a certificate", &stderr);
    assert!(stderr.contains("need a certificate"), "{stderr}");

    // Neither VOLUME arguments nor exports: nothing to serve, said in one line.
    let empty = fx.path("empty.toml");
    std::fs::write(&empty, format!("socket = \"{}\"\n", socket.display())).unwrap();
    let mut cmd = fx.envol(&["serve", "--config", empty.to_str().unwrap()]);
    let (_, stderr) = run_fails(&mut cmd);
    assert_one_clean_line("no exports", &stderr);
    assert!(stderr.contains("no exports"), "{stderr}");
}
