//! What a stranger may hold of the KMS's HTTP front door, and for how long.
//!
//! Nothing here needs authentication to use up: a TCP connection, a TLS
//! handshake, half a header and half a body all come before SigV4. So each
//! is bounded — by count (connections) or by time (every other state a
//! connection can sit in). Each bound is a flag of `envol kms serve`
//! (`src/cli/kms_limits.rs`); `envol up` takes the same with a `--kms-`
//! prefix, except the TLS handshake's (its KMS listener has no TLS), which
//! keeps its default. The flags are parsed in the CLI; this module takes
//! `Duration`s.

use std::time::Duration;

/// The bounds of one KMS HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (TLS handshakes included); more are closed
    /// as soon as they are accepted.
    pub max_connections: usize,
    /// From a connection's start, or from the first byte of a request after
    /// an idle spell, to the end of that request's header.
    pub header_timeout: Duration,
    /// From the end of a request's header to the end of its body.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// From accept to the end of the TLS handshake (HTTPS only).
    pub tls_handshake_timeout: Duration,
}

/// Default `--max-connections`: well under the usual 1024-descriptor soft
/// limit, far above what the AWS SDKs and CLI open (a handful each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default `--header-timeout`: a real client sends its header in one write.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--body-timeout`: bodies are at most 256 KiB.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--idle-timeout`: longer than the SDKs' idle pools keep a
/// connection (20 s for aws-smithy), so a client reuses its connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--tls-handshake-timeout`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
