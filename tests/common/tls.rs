//! Test PKI made with the `openssl` command: a CA, a server certificate for
//! `localhost` / 127.0.0.1, a client certificate, and the directories libnbd
//! and qemu read (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Only `ca-cert.pem`: a client that checks the server but has no
    /// certificate of its own.
    pub client_anon: PathBuf,
    /// `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.
    pub client_auth: PathBuf,
    /// A certificate and key from a CA the server does not trust.
    pub client_rogue: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("`openssl` is needed for the TLS tests ({e}); apt-get install -y openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA named `name`: `<name>-cert.pem`, `<name>-key.pem`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=envol test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
        ],
    );
}

/// A leaf certificate `<name>-cert.pem` / `<name>-key.pem` signed by CA `ca`.
fn leaf(dir: &Path, ca: &str, name: &str, cn: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}-cert.pem"),
        ],
    );
}

fn client_dir(root: &Path, name: &str, ca: &str, client: Option<&str>) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(root.join(format!("{ca}-cert.pem")), d.join("ca-cert.pem")).unwrap();
    if let Some(c) = client {
        std::fs::copy(
            root.join(format!("{c}-cert.pem")),
            d.join("client-cert.pem"),
        )
        .unwrap();
        std::fs::copy(root.join(format!("{c}-key.pem")), d.join("client-key.pem")).unwrap();
    }
    d
}

impl Pki {
    /// `envol serve`'s flags for this server certificate and key.
    pub fn serve_args(&self) -> Vec<&str> {
        vec![
            "--tls-cert",
            self.server_cert.to_str().unwrap(),
            "--tls-key",
            self.server_key.to_str().unwrap(),
        ]
    }

    /// [`Pki::serve_args`], and client certificates from this CA required.
    pub fn serve_args_requiring_clients(&self) -> Vec<&str> {
        let mut args = self.serve_args();
        args.extend(["--tls-ca", self.ca_cert.to_str().unwrap()]);
        args
    }

    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        ca(root, "ca");
        ca(root, "rogue-ca");
        leaf(
            root,
            "ca",
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";
        leaf(root, "ca", "client", "envol-client", client_ext);
        leaf(root, "rogue-ca", "rogue", "envol-client", client_ext);
        // The rogue client trusts the real CA (it can check the server)
        // but its own certificate is from a CA the server does not know.
        let client_rogue = client_dir(root, "client-rogue", "ca", Some("rogue"));
        Pki {
            ca_cert: root.join("ca-cert.pem"),
            server_cert: root.join("server-cert.pem"),
            server_key: root.join("server-key.pem"),
            client_anon: client_dir(root, "client-anon", "ca", None),
            client_auth: client_dir(root, "client-auth", "ca", Some("client")),
            client_rogue,
            dir,
        }
    }
}
