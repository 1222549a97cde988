//! Errors of the master-key service, in the shape AWS KMS clients expect.
//!
//! Every error carries the AWS `__type` name that SDKs turn into typed
//! exceptions, the HTTP status AWS uses for it, and a message. Messages are
//! written for the caller: they name principals, actions and keys, never key
//! material, plaintext, secrets or signatures.

use std::fmt;

/// The kinds of error the KMS API returns (`__type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    AccessDenied,
    AlreadyExists,
    Disabled,
    DryRunOperation,
    IncorrectKey,
    InvalidAliasName,
    InvalidArn,
    InvalidCiphertext,
    InvalidGrantId,
    InvalidGrantToken,
    InvalidKeyUsage,
    InvalidMarker,
    InvalidState,
    Internal,
    LimitExceeded,
    MalformedPolicyDocument,
    NotAuthorized,
    Tag,
    NotFound,
    Serialization,
    UnknownOperation,
    UnsupportedOperation,
    Validation,
    // Authentication and transport errors (the HTTP front door).
    MissingAuthenticationToken,
    IncompleteSignature,
    InvalidSignature,
    UnrecognizedClient,
    RequestExpired,
    RequestEntityTooLarge,
    /// The body stopped arriving before its deadline (`--body-timeout`).
    RequestTimeout,
}

impl ErrorKind {
    /// The `__type` string AWS uses for this error.
    pub fn aws_type(self) -> &'static str {
        use ErrorKind::*;
        match self {
            AccessDenied => "AccessDeniedException",
            AlreadyExists => "AlreadyExistsException",
            Disabled => "DisabledException",
            DryRunOperation => "DryRunOperationException",
            IncorrectKey => "IncorrectKeyException",
            InvalidAliasName => "InvalidAliasNameException",
            InvalidArn => "InvalidArnException",
            InvalidCiphertext => "InvalidCiphertextException",
            InvalidGrantId => "InvalidGrantIdException",
            InvalidGrantToken => "InvalidGrantTokenException",
            InvalidKeyUsage => "InvalidKeyUsageException",
            InvalidMarker => "InvalidMarkerException",
            InvalidState => "KMSInvalidStateException",
            Internal => "KMSInternalException",
            LimitExceeded => "LimitExceededException",
            MalformedPolicyDocument => "MalformedPolicyDocumentException",
            NotAuthorized => "NotAuthorizedException",
            Tag => "TagException",
            NotFound => "NotFoundException",
            Serialization => "SerializationException",
            UnknownOperation => "UnknownOperationException",
            UnsupportedOperation => "UnsupportedOperationException",
            Validation => "ValidationException",
            MissingAuthenticationToken => "MissingAuthenticationTokenException",
            IncompleteSignature => "IncompleteSignatureException",
            InvalidSignature => "InvalidSignatureException",
            UnrecognizedClient => "UnrecognizedClientException",
            RequestExpired => "RequestExpired",
            RequestEntityTooLarge => "RequestEntityTooLargeException",
            RequestTimeout => "RequestTimeoutException",
        }
    }

    /// The HTTP status AWS KMS answers this error with.
    pub fn http_status(self) -> u16 {
        use ErrorKind::*;
        match self {
            Internal => 500,
            MissingAuthenticationToken => 403,
            RequestEntityTooLarge => 413,
            RequestTimeout => 408,
            DryRunOperation => 412,
            _ => 400,
        }
    }
}

/// An error answered to a KMS caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl KmsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        KmsError {
            kind,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// InvalidCiphertextException. AWS says nothing more, on purpose: the
    /// caller learns neither which check failed nor anything about the key.
    pub fn invalid_ciphertext() -> Self {
        Self::new(
            ErrorKind::InvalidCiphertext,
            "The ciphertext is invalid, was not encrypted under this key, or the encryption context does not match.",
        )
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.aws_type(), self.message)
    }
}

impl std::error::Error for KmsError {}

impl From<rusqlite::Error> for KmsError {
    fn from(e: rusqlite::Error) -> Self {
        // The store's errors never contain secrets (values are bound, and
        // sealed blobs are the only key-related values it holds).
        KmsError::internal(format!("key store: {e}"))
    }
}
