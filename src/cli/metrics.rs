//! `--metrics ADDR` of `serve`, `kms serve` and `up`: where the Prometheus
//! endpoint (`crate::metrics`) listens, and the rule for where it may:
//! loopback, or over TLS (the command's own certificate), or anywhere with
//! `--insecure-plaintext` — the rule and wording of NBD's listen address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use clap::Args;
use prometheus_client::registry::Registry;
use tokio_rustls::rustls::ServerConfig;

use super::error::CliError;
use crate::metrics::MetricsEndpoint;

/// Every metric's name starts with this.
pub const PREFIX: &str = "envol";

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (HTTPS with the command's --tls-cert/--tls-key); a non-loopback address needs TLS or --insecure-plaintext.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// Where and how the metrics will be served, checked before anything
/// else happens.
pub(crate) struct MetricsPlan {
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
}

impl MetricsArgs {
    /// Applies the address rule and loads the certificate (`tls`: the
    /// command's `--tls-cert` and `--tls-key`), or `None` without
    /// `--metrics`.
    pub(crate) fn plan(
        &self,
        tls: Option<(&Path, &Path)>,
        insecure_plaintext: bool,
    ) -> Result<Option<MetricsPlan>, CliError> {
        let Some(addr) = self.metrics else {
            return Ok(None);
        };
        check_plaintext(addr, tls.is_some(), insecure_plaintext)?;
        let tls = match tls {
            Some((cert, key)) => Some(
                crate::kms::tls::server_config(cert, key)
                    .map_err(|e| CliError(format!("metrics TLS: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(MetricsPlan { addr, tls }))
    }
}

/// Refuses plaintext metrics on a non-loopback address unless the operator
/// said `--insecure-plaintext` (then warns).
pub(crate) fn check_plaintext(
    addr: SocketAddr,
    tls: bool,
    insecure_plaintext: bool,
) -> Result<(), CliError> {
    if addr.ip().is_loopback() || tls {
        return Ok(());
    }
    if !insecure_plaintext {
        return Err(CliError(format!(
            "refusing to serve plaintext metrics on {addr}, which is not a loopback address: anyone who can reach it could read what is served and how it is used (export names, I/O and KMS request counts); use --tls-cert/--tls-key (HTTPS), a loopback address, or pass --insecure-plaintext"
        )));
    }
    tracing::warn!(
        "serving plaintext metrics on {addr} (--insecure-plaintext): anyone who can reach it can read them"
    );
    Ok(())
}

impl MetricsPlan {
    /// Binds the endpoint (so that a busy port fails the command early).
    pub(crate) async fn bind(self) -> Result<MetricsEndpoint, CliError> {
        MetricsEndpoint::bind(self.addr, self.tls)
            .await
            .map_err(|e| CliError(format!("cannot serve metrics on {}: {e}", self.addr)))
    }
}

/// Serves `registry` on `endpoint` in the background for as long as the
/// runtime runs, and says where.
pub(crate) fn spawn(endpoint: MetricsEndpoint, registry: Registry) -> Result<(), CliError> {
    let url = endpoint
        .url()
        .map_err(|e| CliError(format!("metrics: {e}")))?;
    say!("metrics: {url}");
    tokio::spawn(endpoint.serve(registry, std::future::pending()));
    Ok(())
}

/// A registry whose metric names start with [`PREFIX`].
pub(crate) fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}
