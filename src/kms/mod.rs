//! The master-key service: an AWS-KMS-compatible KMS.
//!
//! Layers, top to bottom:
//!
//! - `http`: AWS JSON 1.1 over HTTP; bounds connections, TLS handshakes,
//!   headers, bodies and idle time (`http/limits.rs`), verifies SigV4
//!   (`sigv4`), maps access keys to principals, renders AWS-shaped errors.
//! - `service`: the transport-free API, `Kms::handle(request, op, body)`:
//!   dispatches to `ops/` (one file per family of operations) and writes
//!   the audit log (`audit`: rotated by size, unauthenticated failures
//!   counted into summary lines).
//! - `core`: the service's state and what every operation relies on:
//!   resolving keys, authorizing by key policy (`policy`) and grants,
//!   sealing key material, users. It knows nothing of operations.
//! - `schedule`: the clock's work — deletion windows, then `rotation`.
//! - `blob`: the ciphertext-blob format handed to clients.
//! - `store` (SQLite), `seal` (root-key sealing at rest), `datadir` (files
//!   and permissions), `iam` (account, principals, access keys).
//! - `grant`: the grant model (operations, constraints, tokens); grants
//!   count alongside the key policy in authorization.
//! - `rotation`: new key versions, on demand and when automatic rotation
//!   falls due.
//! - `key_state`: Enabled, Disabled, PendingDeletion.
//! - `usage`: per-key use counted from the audit log (with an index
//!   beside it, so a query reads only new lines); `price`: the monthly
//!   price model of keys and key versions. Both serve `envol key list`.
//! - `metrics`: requests by operation and outcome, latency, keys by state
//!   (a prometheus-client collector; `service` counts the requests).
//! - `clock`: injected time, so tests can expire signatures, pass deletion
//!   windows and reach rotation dates without waiting.
//!
//! Dependencies run one way: `http` → `service` → `ops` → `schedule` /
//! `rotation` → `core` → `store`; no module imports from one above it.

pub mod audit;
pub mod blob;
pub mod clock;
mod core;
pub mod datadir;
pub mod error;
mod excerpt;
pub mod grant;
pub mod http;
pub mod iam;
pub mod key_state;
pub mod metrics;
mod ops;
pub mod policy;
pub mod price;
pub mod profile;
mod rotation;
mod schedule;
pub mod seal;
pub mod service;
pub mod sigv4;
pub mod store;
pub mod tls;
pub mod usage;

pub use error::{ErrorKind, KmsError};
pub use service::{Kms, RequestContext};
