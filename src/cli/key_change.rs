//! How `volume rewrap` and `volume reencrypt` (offline and online) show
//! the key a volume's data key was wrapped under and is now.

use crate::volume::Superblock;

/// The key a volume's data key was wrapped under, and is now (with the
/// key version, where the wrapped blob names one).
pub(super) fn print_key_change(old_key_arn: &str, sb: &Superblock) {
    say!("  was:  {old_key_arn}");
    match key_version(&sb.wrapped_key) {
        Some(v) => say!("  now:  {} (version {v})", sb.key_arn),
        None => say!("  now:  {}", sb.key_arn),
    }
}

/// The master-key version an envol KMS blob names; `None` for other KMSs'
/// blobs (AWS's are opaque).
pub(super) fn key_version(wrapped: &[u8]) -> Option<u32> {
    crate::kms::blob::parse_header(wrapped)
        .ok()
        .map(|h| h.key_version)
}
