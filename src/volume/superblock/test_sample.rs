//! The superblock both test files start from.

use uuid::Uuid;

use super::format::Superblock;

/// A valid superblock of a 10 MiB volume with 4 KiB sectors, sequence 1.
pub(super) fn sample() -> Superblock {
    let uuid = Uuid::from_bytes([0x42; 16]);
    Superblock::new(
        uuid,
        10 << 20,
        4096,
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".to_string(),
        vec![0xc7; 184],
        [0x11; 32],
        1_700_000_000,
    )
    .expect("the sample superblock is valid")
}
