//! # envol — encrypted block volumes with envelope encryption
//!
//! envol is an EBS-style encrypted block device. A *volume* is a file whose
//! data area is encrypted with AES-256-XTS (`aes-xts-plain64`, dm-crypt's
//! layout) under one random 512-bit **data key**. The data key is never
//! stored in the clear: the volume's superblock holds it *wrapped* by a
//! **master key** that never leaves a KMS. Attaching a volume asks the KMS to
//! unwrap it — which the KMS does only for callers its key policy allows —
//! and then serves the plaintext view over **NBD**, so `nbd-client`, qemu,
//! libnbd tools and fio can use it like a disk.
//!
//! ## The layers
//!
//! Data flows one way, top to bottom; each layer knows only the one below.
//!
//! ```text
//!  cli/        clap commands: parse, print, exit codes — no logic
//!   │
//!   ├── snapshot/  point-in-time copies in S3 (aws-sdk-s3): a volume's
//!   │              stored chunks, content-addressed, and an authenticated
//!   │              manifest; create (incremental), restore, list, delete
//!   │        uses envelope/ below (attach; create with an existing
//!   │        key) and the open Volume's read_stored / write_stored /
//!   │        changes
//!   │
//!   ├── nbd/       NBD wire format, handshake state machine, parallel
//!   │              transmission, listeners (Unix, TCP), exports
//!   │     │  BlockDevice (volume/device.rs): read/write/trim/zero/flush
//!   │     ▼
//!   │   volume/    superblock (two copies), growing (store, then both
//!   │              copies), sector cipher (XTS), range
//!   │              locks for read-modify-write, the attachment lock (one
//!   │              writer per volume), the storage backend trait and its
//!   │              backends: a file (`backend.rs`), a Ceph RBD image
//!   │              (`rbd/`: librbd loaded at run time, aio, exclusive lock,
//!   │              take-over with blocklisting)
//!   │
//!   ├── envelope/  where a volume meets its master key: create (wrap a new
//!   │              data key), attach (unwrap, check, open); `store.rs`
//!   │              turns a volume address (a path or `rbd:POOL/IMAGE`)
//!   │              into a backend
//!   │     │  KeyService (keys/mod.rs): generate wrapped key, unwrap key
//!   │     ▼
//!   │   keys/      key client: the official aws-sdk-kms (any AWS-KMS
//!   │              endpoint, ours or AWS's), or the KMS core in-process
//!   │
//!   └── kms/       the master-key service: AWS KMS JSON API over HTTP with
//!                  SigV4, key policies, ciphertext blobs, sealed SQLite
//!                  store, audit log; `Kms::handle` is its transport-free core
//!
//!  secret_memory   below volume/ and kms/ alike: locked, dump-excluded
//!                  pages for keys (`LockedBox`), the non-dumpable process
//! ```
//!
//! The NBD layer does not know about XTS or where the bytes live (a file,
//! or RBD: a device may complete requests later, from another thread —
//! `BlockDevice::start_*` — so that many are in flight in librbd), the
//! volume layer does not know about NBD or the KMS, and the KMS does not know about volumes: it wraps
//! and unwraps opaque data keys bound to an encryption context
//! (`{"envol:volume": "<uuid>"}`), exactly as AWS KMS does for EBS.
//!
//! ## Where secrets live
//!
//! - Master-key material: only inside the KMS, sealed at rest under the
//!   root key (`kms/seal.rs`), unsealed per operation into a locked page.
//! - Data keys: on disk only wrapped; in memory only inside an open
//!   `volume::Volume` (the key and the XTS engine's AES key schedules, each
//!   in a locked page), wiped on detach and exit.
//! - Access-key secrets: sealed in the KMS store; printed once at creation.
//!
//! "Locked page": `secret_memory::LockedBox`, a page of its own that is
//! `mlock`ed (never swapped, where `ulimit -l` allows), excluded from core
//! dumps (`MADV_DONTDUMP`) and wiped on drop; and every envol process marks
//! itself non-dumpable at start (`secret_memory::protect_process`).
//! Nothing secret is logged, audited or put in an error message.

// No unsafe code anywhere in the crate but two modules, each with its own
// `allow`: `secret_memory` (locked, dump-excluded pages for keys: mmap,
// mlock and madvise are `unsafe` in rustix), below, and `volume::rbd::ffi`
// (librados/librbd, loaded at run time: no maintained crate binds librbd),
// which keeps every unsafe call behind owned handles with safe methods.
// `deny` rather than `forbid` only so that those allows can exist; the
// binary (main.rs) still forbids it.
#![deny(unsafe_code)]

pub mod cli;
pub mod control;
pub mod envelope;
pub mod keys;
pub mod kms;
pub mod nbd;
#[allow(unsafe_code)]
pub mod secret_memory;
pub mod snapshot;
pub mod volume;
