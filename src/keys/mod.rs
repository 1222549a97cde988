//! The key client: how volumes get their data keys wrapped and unwrapped.
//!
//! `KeyService` is the two calls the volume commands need. Two
//! implementations stand behind it:
//!
//! - [`aws::AwsKeyClient`], on the official `aws-sdk-kms` crate: talks to any
//!   AWS-KMS-compatible endpoint — envol's own `envol kms serve`, or real AWS
//!   KMS — with nothing envol-specific on the wire. Endpoint, profile and
//!   region come from flags or the standard AWS environment and files.
//! - [`embedded::EmbeddedKeys`]: the KMS core called in-process (`envol up`),
//!   as the account root.

pub mod aws;
pub mod embedded;

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// A data key as stored: ciphertext from the KMS, and the key that wrapped it.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub blob: Vec<u8>,
    /// The master key's ARN, as the KMS resolved it.
    pub key_arn: String,
}

/// What went wrong, in the terms a user acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyErrorKind {
    AccessDenied,
    Disabled,
    NotFound,
    InvalidState,
    InvalidCiphertext,
    Unreachable,
    Credentials,
    Other,
}

/// An error from the key service. `code` is the AWS error code when the
/// service answered; the message never contains key material.
#[derive(Debug, Clone)]
pub struct KeyError {
    pub kind: KeyErrorKind,
    pub code: Option<String>,
    pub message: String,
}

impl KeyError {
    pub fn from_code(code: &str, message: impl Into<String>) -> Self {
        let kind = match code {
            "AccessDeniedException" => KeyErrorKind::AccessDenied,
            "DisabledException" => KeyErrorKind::Disabled,
            "NotFoundException" => KeyErrorKind::NotFound,
            "KMSInvalidStateException" => KeyErrorKind::InvalidState,
            "InvalidCiphertextException" | "IncorrectKeyException" => {
                KeyErrorKind::InvalidCiphertext
            }
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "RequestExpired"
            | "ExpiredTokenException" => KeyErrorKind::Credentials,
            _ => KeyErrorKind::Other,
        };
        KeyError {
            kind,
            code: Some(code.to_string()),
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.message.replace('\n', " ");
        match &self.code {
            Some(code) if msg.is_empty() => write!(f, "{code}"),
            Some(code) => write!(f, "{code}: {msg}"),
            None => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Wraps and unwraps volume data keys.
pub trait KeyService: Send + Sync {
    /// A new random data key of `bytes` bytes, returned only wrapped
    /// (GenerateDataKeyWithoutPlaintext).
    fn generate_wrapped_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        bytes: usize,
    ) -> impl Future<Output = Result<WrappedKey, KeyError>> + Send;

    /// Unwraps a data key (Decrypt), insisting it was wrapped by `key`.
    fn unwrap_key(
        &self,
        key: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, KeyError>> + Send;

    /// Re-wraps a data key under `destination` (ReEncrypt): the plaintext
    /// never leaves the KMS. `source` names the key the blob must be under;
    /// the blob was wrapped with `source_context` and the new one is bound
    /// to `destination_context` (the same context for a key rotation or a
    /// move to another key; a volume restored from a snapshot binds the
    /// same data key to its own uuid).
    fn rewrap_key(
        &self,
        source: &str,
        blob: &[u8],
        destination: &str,
        source_context: &BTreeMap<String, String>,
        destination_context: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<WrappedKey, KeyError>> + Send;

    /// Where the keys come from, for messages ("the KMS at http://...").
    fn describe(&self) -> String;
}
