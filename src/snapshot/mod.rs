//! Snapshots in object storage (S3, radosgw, MinIO): point-in-time copies
//! of a volume, incremental, restorable into a new volume on any host.
//!
//! A snapshot is the volume's *stored* bytes — its ciphertext, chunk by
//! chunk — plus a manifest; a same-key snapshot or restore never decrypts
//! anything. It sits beside the NBD server, above the envelope:
//! `cli → snapshot → envelope → volume`.
//!
//! | file | owns |
//! |---|---|
//! | `url.rs` | `s3://BUCKET/PREFIX[/snap-ID]`: parsing, the object keys of a place |
//! | `object_store.rs` | one bucket through `aws-sdk-s3`: put/get/head/list/delete, bounded concurrency, retries, one-line errors |
//! | `manifest.rs` | the manifest's format and its authentication (HMAC under a key derived from the data key) |
//!
//! The objects of a place `s3://BUCKET/PREFIX`:
//!
//! ```text
//!  PREFIX/chunks/<sha256 hex>     a chunk (1 MiB of the data area as stored), content-addressed,
//!                                 immutable, shared by every snapshot in the place
//!  PREFIX/snap-ID/in-progress     written first; deleted once the manifest is written
//!  PREFIX/snap-ID/manifest        written last: the snapshot is complete (and listed) once it exists
//! ```

pub mod manifest;
pub mod object_store;
pub mod url;

pub use manifest::{ChunkEntry, MANIFEST_FORMAT, Manifest, ManifestError};
pub use object_store::{ObjectErrorKind, ObjectInfo, ObjectStore, ObjectStoreError, S3Options};
pub use url::{Place, SnapshotId, SnapshotUrl, UrlError};
