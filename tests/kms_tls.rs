//! The KMS over TLS: `kms init --self-signed-cert`, `kms serve --tls-cert
//! --tls-key`, clients trusting the certificate through AWS_CA_BUNDLE — the
//! AWS CLI, and envol's own key client creating and attaching a volume.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{envol, parse_creds, run_ok};

struct TlsKms {
    child: Child,
    url: String,
}

impl Drop for TlsKms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_tls(data: &std::path::Path) -> TlsKms {
    let mut child = envol()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--tls-cert")
        .arg(data.join("tls/cert.pem"))
        .arg("--tls-key")
        .arg(data.join("tls/key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {first:?}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    TlsKms { child, url }
}

#[test]
fn kms_over_tls_with_a_self_signed_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kms");
    let creds_file = tmp.path().join("credentials");
    let config_file = tmp.path().join("config");
    let with_env = |c: &mut Command| {
        c.env("AWS_SHARED_CREDENTIALS_FILE", &creds_file)
            .env("AWS_CONFIG_FILE", &config_file)
            .env("AWS_CA_BUNDLE", data.join("tls/cert.pem"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL_KMS")
            .env_remove("AWS_ENDPOINT_URL");
    };
    let mut init = envol();
    init.args([
        "kms",
        "init",
        "--self-signed-cert",
        "--profile",
        "admin",
        "--data",
    ])
    .arg(&data);
    with_env(&mut init);
    let out = run_ok(&mut init);
    assert!(out.contains("AWS_CA_BUNDLE"), "{out}");
    parse_creds(&out);
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(data.join("tls/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "the TLS key is private");

    let kms = serve_tls(&data);

    // The AWS CLI, trusting the certificate through AWS_CA_BUNDLE.
    let mut aws = Command::new("aws");
    aws.args([
        "kms",
        "create-key",
        "--profile",
        "admin",
        "--endpoint-url",
        &kms.url,
        "--output",
        "json",
    ]);
    with_env(&mut aws);
    let out = aws
        .output()
        .expect("the AWS CLI (`aws`) must be installed: pip install awscli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap();

    // envol's key client: create a volume under the key and attach it.
    let vol = tmp.path().join("tls.vol");
    let mut create = envol();
    create.args(["volume", "create"]).arg(&vol).args([
        "--size",
        "8M",
        "--key",
        key_id,
        "--profile",
        "admin",
        "--endpoint",
        &kms.url,
    ]);
    with_env(&mut create);
    run_ok(&mut create);
    let sock = tmp.path().join("s.sock");
    let mut serve = envol();
    serve
        .arg("serve")
        .arg(&vol)
        .arg("--socket")
        .arg(&sock)
        .args(["--profile", "admin", "--endpoint", &kms.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    with_env(&mut serve);
    let mut server = serve.spawn().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("serve printed its URI").unwrap();
    assert!(ready.contains("nbd+unix://"), "{ready}");
    let _ = server.kill();
    let _ = server.wait();

    // Without the CA bundle the certificate is not trusted, and plain HTTP
    // to the TLS port gets nowhere.
    for (endpoint, ca) in [
        (kms.url.clone(), false),
        (kms.url.replace("https", "http"), true),
    ] {
        let mut list = envol();
        list.args(["key", "list", "--profile", "admin", "--endpoint", &endpoint]);
        with_env(&mut list);
        if !ca {
            list.env_remove("AWS_CA_BUNDLE");
        }
        let out = list.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{endpoint} (CA {ca}) must fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // Non-loopback without TLS is refused; with TLS it is allowed.
    let mut c = envol();
    let out = c
        .args(["kms", "serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
}
