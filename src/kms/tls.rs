//! TLS for the KMS's HTTP front door (rustls).
//!
//! `envol kms serve --tls-cert F --tls-key F` serves HTTPS; `envol kms init
//! --self-signed-cert` makes a certificate for localhost / 127.0.0.1 / ::1 so
//! a single machine gets TLS without a CA. Clients trust it the AWS way:
//! `AWS_CA_BUNDLE=DIR/tls/cert.pem` (the AWS CLI, boto3, and envol's key
//! client all honour it).
//!
//! Handshakes run in each connection's own task, within the
//! `--tls-handshake-timeout` deadline (`kms/http/accept.rs`).

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The self-signed certificate's files inside a data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Makes a self-signed certificate for localhost, 127.0.0.1 and ::1 (valid
/// about ten years) and writes it as PEM: the key 0600, the certificate 0644.
pub fn write_self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert_path, key_path) = self_signed_paths(data_dir);
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let dir = cert_path
        .parent()
        .ok_or_else(|| "bad certificate path".to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), String> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let key_pem = zeroize::Zeroizing::new(certified.signing_key.serialize_pem());
    write(&key_path, key_pem.as_bytes(), 0o600)?;
    write(&cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// A rustls server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // The provider is named explicitly: more than one is compiled in (the
    // AWS SDK brings aws-lc-rs), and rustls refuses to guess.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// Where a request came from (for the audit log), and whether over TLS
/// (the `aws:SecureTransport` condition key); put in each request's
/// extensions (as axum's `ConnectInfo`) for plain and TLS connections alike.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub over_tls: bool,
}
