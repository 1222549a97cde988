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
//! | `catalog.rs` | a place's inventory (one listing), `list`, `describe`'s fetch, `delete` and chunk collection |
//! | `create.rs` | `snapshot create`: parent, changed chunks, upload, manifest |
//! | `source.rs` | where create reads the volume at its point in time: locked here, or frozen by its server |
//! | `restore.rs` | `volume restore` under the same key: authenticate, create, fetch and verify, write as stored |
//! | `rekey.rs` | re-encryption of a chunk from one data key to another (restore or copy under `--key`) |
//! | `fetch.rs` | the one fetch-and-verify pipeline of every restore and copy, into a volume or a place |
//! | `lazy.rs` | `volume restore --lazy` and serving while restoring: the S3 chunk fetcher, the record, background hydration |
//! | `copy.rs` | `snapshot copy`: into another place, same key or a new lineage under `--key` |
//! | `progress.rs` | a progress bar on a terminal, plain lines otherwise |
//! | `error.rs` | [`SnapshotError`]: one line per failure |
//!
//! The objects of a place `s3://BUCKET/PREFIX`:
//!
//! ```text
//!  PREFIX/chunks/<sha256 hex>     a chunk (1 MiB of the data area as stored), content-addressed,
//!                                 immutable, shared by every snapshot in the place
//!  PREFIX/snap-ID/in-progress     written first; deleted once the manifest is written
//!  PREFIX/snap-ID/manifest        written last: the snapshot is complete (and listed) once it exists
//! ```

pub mod catalog;
pub mod copy;
pub mod create;
pub mod error;
pub mod fetch;
pub mod lazy;
pub mod manifest;
pub mod object_store;
pub mod progress;
pub mod rekey;
pub mod restore;
pub mod source;
pub mod url;

pub use create::{AttachedVolumes, Created, Method};
pub use error::SnapshotError;
pub use restore::Restored;
pub use source::{ChunkSource, LockedVolume, SnapshotVolume};

pub use manifest::{ChunkEntry, MANIFEST_FORMAT, Manifest, ManifestError};
pub use object_store::{ObjectErrorKind, ObjectInfo, ObjectStore, ObjectStoreError, S3Options};
pub use url::{Place, SnapshotId, SnapshotUrl, UrlError};
