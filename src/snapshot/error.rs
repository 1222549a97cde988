//! Why a snapshot command failed: one line, naming the snapshot, object,
//! volume or key concerned.

use super::manifest::ManifestError;
use super::object_store::ObjectStoreError;
use super::url::UrlError;
use crate::envelope::EnvelopeError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Store(#[from] ObjectStoreError),
    /// The volume or its key (attach, create, the KMS's refusal).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// `snapshot`: its URL.
    #[error("{snapshot}: {error}")]
    Manifest {
        snapshot: String,
        error: ManifestError,
    },
    /// Anything else, as one line that says what and where.
    #[error("{0}")]
    Failed(String),
}

impl SnapshotError {
    pub fn failed(message: impl Into<String>) -> SnapshotError {
        SnapshotError::Failed(message.into().replace('\n', " "))
    }
}
