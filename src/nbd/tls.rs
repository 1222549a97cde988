//! TLS for NBD (`NBD_OPT_STARTTLS`) with rustls and the `aws-lc-rs` provider.
//!
//! A server either has no TLS (the spec's NOTLS mode: STARTTLS is answered
//! `NBD_REP_ERR_UNSUP`) or a [`TlsConfig`]: a certificate, its key,
//! optionally a CA that client certificates must chain to, and a
//! [`TlsMode`]. `Require` is the spec's FORCEDTLS mode, `Optional` is
//! SELECTIVETLS with no TLS-only export (clients may upgrade or not).
//!
//! The crypto provider is passed explicitly rather than taken from the
//! process default: other dependencies (the AWS SDK) enable rustls's
//! aws-lc-rs provider in the same binary, and with two providers compiled in
//! rustls refuses to guess.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// Whether clients must upgrade to TLS before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// FORCEDTLS: before STARTTLS every option but STARTTLS and ABORT is
    /// answered `NBD_REP_ERR_TLS_REQD`, and `NBD_OPT_EXPORT_NAME` (which
    /// cannot carry an error) closes the connection.
    Require,
    /// Plaintext clients are served too; STARTTLS upgrades when asked.
    Optional,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A ready TLS server configuration and the mode it is served in.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
    mode: TlsMode,
    client_auth: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mode", &self.mode)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key, and with `client_ca`
    /// requires every client to present a certificate that chains to one
    /// of the PEM certificates in that file (verified by webpki).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        mode: TlsMode,
    ) -> Result<Self, TlsError> {
        let chain = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        path: ca.to_path_buf(),
                        message: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        Ok(Self::new(Arc::new(config), mode, client_ca.is_some()))
    }

    /// Wraps an already built rustls configuration.
    pub fn new(config: Arc<ServerConfig>, mode: TlsMode, client_auth: bool) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
            mode,
            client_auth,
        }
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            message: "no PEM certificate in file".into(),
        });
    }
    Ok(certs)
}

fn file_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
