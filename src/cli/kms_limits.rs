//! The KMS listener's bounds as flags: `envol kms serve` names them plainly
//! (`--max-connections`), `envol up` with a `--kms-` prefix (its unprefixed
//! flags are the NBD server's). Both become the same `http::Limits` and
//! audit `Rotation`.

use std::time::Duration;

use clap::Args;

use super::parse::{parse_connections, parse_duration};
use super::target::parse_size;
use crate::kms::audit::{self, Rotation};
use crate::kms::http::limits::{self, Limits};

/// `--audit-max-size`: a size (`64M`), at least a few lines' worth.
fn parse_audit_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < audit::MIN_MAX_BYTES {
        return Err(format!(
            "{s:?}: the audit log's files must hold at least {} bytes",
            audit::MIN_MAX_BYTES
        ));
    }
    Ok(n)
}

/// `envol kms serve`'s bounds on clients and on the audit log.
#[derive(Debug, Args)]
pub struct ServeLimitArgs {
    /// Most connections served at once (TLS handshakes included); at the cap the one longest idle or half-sent makes room, else a newcomer is closed.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = parse_connections)]
    pub max_connections: usize,
    /// Time a connection has to send a whole request header, from connect or from the request's first byte (e.g. 10s, 500ms; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time a request has to send its whole body once its header is in.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to finish the TLS handshake (with --tls-cert).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Rotate the audit log when a file would grow past this size (K/M/G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_audit_size)]
    pub audit_max_size: u64,
    /// Rotated audit-log files to keep (audit.log.1 is the newest).
    #[arg(long, value_name = "N", default_value_t = audit::DEFAULT_KEEP)]
    pub audit_keep: usize,
}

impl ServeLimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout,
        }
    }

    pub fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.audit_max_size,
            keep: self.audit_keep,
        }
    }
}

/// `envol up`'s bounds on its embedded KMS listener and audit log.
#[derive(Debug, Args)]
pub struct UpKmsLimitArgs {
    /// Most connections the KMS listener serves at once; at the cap the one longest idle or half-sent makes room, else a newcomer is closed.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = parse_connections)]
    pub kms_max_connections: usize,
    /// Time a KMS connection has to send a whole request header (e.g. 10s, 500ms; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub kms_header_timeout: Duration,
    /// Time a KMS request has to send its whole body once its header is in.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub kms_body_timeout: Duration,
    /// Time a keep-alive KMS connection may sit idle between requests.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub kms_idle_timeout: Duration,
    /// Rotate the KMS audit log when a file would grow past this size (K/M/G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_audit_size)]
    pub audit_max_size: u64,
    /// Rotated KMS audit-log files to keep (audit.log.1 is the newest).
    #[arg(long, value_name = "N", default_value_t = audit::DEFAULT_KEEP)]
    pub audit_keep: usize,
}

impl UpKmsLimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.kms_max_connections,
            header_timeout: self.kms_header_timeout,
            body_timeout: self.kms_body_timeout,
            idle_timeout: self.kms_idle_timeout,
            ..Limits::default()
        }
    }

    pub fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.audit_max_size,
            keep: self.audit_keep,
        }
    }
}
