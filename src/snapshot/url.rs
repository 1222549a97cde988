//! Where snapshots live, and what a snapshot is called: `s3://` URLs.
//!
//! A *place* is `s3://BUCKET[/PREFIX]`: every snapshot of the volumes kept
//! there shares its chunk objects. A *snapshot* is `s3://BUCKET[/PREFIX]/snap-ID`
//! (`snap-` and 16 lowercase hex digits), the one name `snapshot create`
//! prints and every other snapshot command takes. Under the place:
//!
//! ```text
//!  PREFIX/chunks/<sha256 hex>     content-addressed chunk (the volume's ciphertext), shared
//!  PREFIX/snap-ID/in-progress     written first, deleted after the manifest
//!  PREFIX/snap-ID/manifest        written last: the snapshot exists once it does
//! ```
//!
//! Parsing is strict and every refusal is one line that quotes the URL:
//! a bad URL must never become a request to an unexpected bucket or key.

use std::fmt;

/// The URL scheme.
pub const SCHEME: &str = "s3://";
/// The folder of chunk objects under a place.
pub const CHUNKS_DIR: &str = "chunks";
/// The object that makes a snapshot complete.
pub const MANIFEST_NAME: &str = "manifest";
/// The marker of a snapshot being written.
pub const IN_PROGRESS_NAME: &str = "in-progress";
/// `snap-` and this many lowercase hex digits.
const ID_HEX_DIGITS: usize = 16;

/// Why a URL was refused. One line, quoting the URL as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

fn refuse(url: &str, why: impl Into<String>) -> UrlError {
    UrlError {
        url: url.to_string(),
        why: why.into(),
    }
}

/// A snapshot's id: `snap-` and 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A new random id (64 bits from the OS generator: two snapshots made in
    /// the same place collide with probability ~n²/2^65).
    pub fn generate() -> SnapshotId {
        use rand::RngCore;
        let mut bytes = [0u8; ID_HEX_DIGITS / 2];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SnapshotId(format!("snap-{}", hex::encode(bytes)))
    }

    /// `s` if it is a well-formed id.
    pub fn parse(s: &str) -> Option<SnapshotId> {
        let hex = s.strip_prefix("snap-")?;
        let ok = hex.len() == ID_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| SnapshotId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `s3://BUCKET[/PREFIX]`: where snapshots are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl Place {
    /// `s3://BUCKET[/PREFIX][/]`. A URL that names a snapshot (its last part
    /// is `snap-ID`) is refused: snapshots go *into* a place.
    pub fn parse(url: &str) -> Result<Place, UrlError> {
        let (bucket, parts) = split(url)?;
        if let Some(last) = parts.last()
            && SnapshotId::parse(last).is_some()
        {
            return Err(refuse(
                url,
                format!(
                    "names a snapshot ({last}); give the place that holds snapshots, s3://BUCKET[/PREFIX]"
                ),
            ));
        }
        Ok(Place {
            bucket,
            prefix: parts.join("/"),
        })
    }

    /// `PREFIX/` or nothing: what every key of this place starts with.
    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// `PREFIX/chunks/`.
    pub fn chunks_prefix(&self) -> String {
        format!("{}{CHUNKS_DIR}/", self.key_prefix())
    }

    /// `PREFIX/chunks/<sha256 hex>`.
    pub fn chunk_key(&self, sha256_hex: &str) -> String {
        format!("{}{sha256_hex}", self.chunks_prefix())
    }

    /// `PREFIX/snap-ID/manifest`.
    pub fn manifest_key(&self, id: &SnapshotId) -> String {
        format!("{}{id}/{MANIFEST_NAME}", self.key_prefix())
    }

    /// `PREFIX/snap-ID/in-progress`.
    pub fn in_progress_key(&self, id: &SnapshotId) -> String {
        format!("{}{id}/{IN_PROGRESS_NAME}", self.key_prefix())
    }

    /// The snapshot `id` in this place.
    pub fn snapshot(&self, id: SnapshotId) -> SnapshotUrl {
        SnapshotUrl {
            place: self.clone(),
            id,
        }
    }

    /// Which snapshot an object key of this place belongs to, and what it is
    /// (`manifest`, `in-progress`): `PREFIX/snap-ID/NAME`. Chunk keys and
    /// anything else give `None`.
    pub fn snapshot_object<'k>(&self, key: &'k str) -> Option<(SnapshotId, &'k str)> {
        let rest = key.strip_prefix(&self.key_prefix())?;
        let (id, name) = rest.split_once('/')?;
        if name.contains('/') {
            return None;
        }
        Some((SnapshotId::parse(id)?, name))
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{SCHEME}{}", self.bucket)
        } else {
            write!(f, "{SCHEME}{}/{}", self.bucket, self.prefix)
        }
    }
}

/// `s3://BUCKET[/PREFIX]/snap-ID`: one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotUrl {
    pub place: Place,
    pub id: SnapshotId,
}

impl SnapshotUrl {
    /// `s3://BUCKET[/PREFIX]/snap-ID`; anything else is one line saying what
    /// a snapshot URL looks like.
    pub fn parse(url: &str) -> Result<SnapshotUrl, UrlError> {
        let (bucket, mut parts) = split(url)?;
        let id = parts.pop().and_then(SnapshotId::parse).ok_or_else(|| {
            refuse(
                url,
                "is not a snapshot: expected s3://BUCKET[/PREFIX]/snap-<16 hex digits>, as `envol snapshot create` prints",
            )
        })?;
        Ok(SnapshotUrl {
            place: Place {
                bucket,
                prefix: parts.join("/"),
            },
            id,
        })
    }

    pub fn manifest_key(&self) -> String {
        self.place.manifest_key(&self.id)
    }

    pub fn in_progress_key(&self) -> String {
        self.place.in_progress_key(&self.id)
    }
}

impl fmt::Display for SnapshotUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.place, self.id)
    }
}

/// The bucket and the prefix's parts of `s3://BUCKET[/P1/P2…][/]`.
fn split(url: &str) -> Result<(String, Vec<&str>), UrlError> {
    let rest = url.strip_prefix(SCHEME).ok_or_else(|| {
        refuse(
            url,
            "not an s3:// URL (expected s3://BUCKET[/PREFIX], e.g. s3://backups/volumes)",
        )
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let bucket = parts.next().unwrap_or_default();
    check_bucket(url, bucket)?;
    let parts: Vec<&str> = parts.collect();
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(refuse(
                url,
                "the prefix has an empty, `.` or `..` part (`//`, `/./`, `/../`)",
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|c| c.is_control() || matches!(c, '\\' | '?' | '#' | '*'))
        {
            return Err(refuse(url, format!("the prefix contains {c:?}")));
        }
    }
    if parts.contains(&CHUNKS_DIR) {
        return Err(refuse(
            url,
            format!(
                "`{CHUNKS_DIR}` is where a place keeps its chunks; it cannot be part of the prefix"
            ),
        ));
    }
    if rest.len() > 900 {
        return Err(refuse(url, "too long (object keys are at most 1024 bytes)"));
    }
    Ok((bucket.to_string(), parts))
}

/// S3's bucket naming rules (3-63 of a-z 0-9 . -, starting and ending
/// with a letter or digit), so that a typo is refused here rather than
/// becoming a request to a surprising host.
fn check_bucket(url: &str, bucket: &str) -> Result<(), UrlError> {
    if bucket.is_empty() {
        return Err(refuse(url, "no bucket (expected s3://BUCKET[/PREFIX])"));
    }
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !ends_ok(bucket.bytes().next())
        || !ends_ok(bucket.bytes().last())
        || bucket.contains("..")
    {
        return Err(refuse(
            url,
            format!(
                "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, `.` and `-`, starting and ending with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "url_tests.rs"]
mod tests;
