//! The master-key service: an AWS-KMS-compatible KMS.
//!
//! Layers, top to bottom:
//!
//! - `http`: AWS JSON 1.1 over HTTP; bounds bodies, verifies SigV4
//!   (`sigv4`), maps access keys to principals, renders AWS-shaped errors.
//! - `service`: the transport-free core, `Kms::handle(request, op, body)`;
//!   resolves keys, enforces key policies (`policy`), writes the audit log
//!   (`audit`). `ops/` holds one file per family of operations.
//! - `blob`: the ciphertext-blob format handed to clients.
//! - `store` (SQLite), `seal` (root-key sealing at rest), `datadir` (files
//!   and permissions), `iam` (account, principals, access keys).
//! - `grant`: the grant model (operations, constraints, tokens); grants
//!   count alongside the key policy in authorization.
//! - `rotation`: new key versions, on demand and when automatic rotation
//!   falls due.
//! - `clock`: injected time, so tests can expire signatures, pass deletion
//!   windows and reach rotation dates without waiting.

pub mod audit;
pub mod blob;
pub mod clock;
pub mod datadir;
pub mod error;
mod excerpt;
pub mod grant;
pub mod http;
pub mod iam;
mod ops;
pub mod policy;
pub mod profile;
mod rotation;
pub mod seal;
pub mod service;
pub mod sigv4;
pub mod store;
pub mod tls;

pub use error::{ErrorKind, KmsError};
pub use service::{Kms, RequestContext};
