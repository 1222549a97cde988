//! The KMS data directory: its layout, its permissions, and the root key.
//!
//! ```text
//! DIR/            0700
//!   root.key      0600  32 random bytes: seals all key material at rest
//!   kms.db        0600  SQLite (WAL): principals, keys, versions, aliases
//!   audit.log     0600  one JSON line per request (rotated: audit.log.1 …)
//!   audit-usage.json  0600  what `envol key list --kms-data` has counted of
//!                     the audit log (a cache: `usage.rs`)
//! ```
//!
//! The root key is the one secret that must stay off the database's backups;
//! a store copied without it is useless. A directory that other users can
//! read, or a root key that does not open the store's canary, is refused.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::seal::RootKey;
use crate::secret_memory::LockedBox;

pub const ROOT_KEY_FILE: &str = "root.key";
pub const DATABASE_FILE: &str = "kms.db";
pub const AUDIT_FILE: &str = "audit.log";

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

/// Why a data directory cannot be used. Messages are one line, for users.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{0} already exists: refusing to initialise over it (pick a new directory)")]
    AlreadyExists(PathBuf),
    #[error("{0} is not an initialised KMS data directory (run `envol kms init --data {0}`)")]
    NotInitialised(PathBuf),
    #[error(
        "{path} has permissions {mode:04o}: group and others must have no access (chmod 700 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("root key {0} is missing")]
    MissingRootKey(PathBuf),
    #[error("root key {0} is not a 32-byte key")]
    MalformedRootKey(PathBuf),
    #[error("root key {0} does not belong to this data directory's store")]
    WrongRootKey(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn database(&self) -> PathBuf {
        self.root.join(DATABASE_FILE)
    }
    pub fn root_key_path(&self) -> PathBuf {
        self.root.join(ROOT_KEY_FILE)
    }
    pub fn audit_log(&self) -> PathBuf {
        self.root.join(AUDIT_FILE)
    }

    /// Creates the directory (0700) and a fresh root key (0600). Refuses an
    /// existing, non-empty directory.
    pub fn create(&self) -> Result<RootKey, DataDirError> {
        if self.root.exists() {
            let empty = fs::read_dir(&self.root)
                .map_err(io_err(&self.root))?
                .next()
                .is_none();
            if !empty || self.root.join(DATABASE_FILE).exists() {
                return Err(DataDirError::AlreadyExists(self.root.clone()));
            }
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.root))?;
        } else {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(io_err(&self.root))?;
            // `recursive` applies the mode to the leaf, but umask may have
            // trimmed it further; set it exactly.
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.root))?;
        }
        let key = RootKey::generate();
        let path = self.root_key_path();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(key.as_bytes()).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        Ok(key)
    }

    /// Checks permissions and reads the root key of an initialised directory.
    pub fn open(&self) -> Result<RootKey, DataDirError> {
        if !self.database().exists() {
            return Err(DataDirError::NotInitialised(self.root.clone()));
        }
        check_private(&self.root)?;
        let path = self.root_key_path();
        if !path.exists() {
            return Err(DataDirError::MissingRootKey(path));
        }
        check_private(&path)?;
        // Straight into a locked page, one byte more than a key so that a
        // longer file is noticed: a growing Vec would leave stale copies of
        // the key in freed heap.
        let mut bytes = LockedBox::new([0u8; 33]);
        let len = fs::File::open(&path)
            .and_then(|mut f| read_up_to(&mut f, bytes.as_mut_slice()))
            .map_err(io_err(&path))?;
        RootKey::from_bytes(&bytes[..len]).ok_or(DataDirError::MalformedRootKey(path))
    }
}

/// Refuses a path that group or others can access in any way.
pub fn check_private(path: &Path) -> Result<(), DataDirError> {
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates (or opens for append) a file readable by the owner only.
pub fn open_private_append(path: &Path) -> std::io::Result<fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Reads until `buf` is full or the file ends; returns how many bytes came.
fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}
