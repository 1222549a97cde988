//! End to end through the public API: create a volume file, open it, write
//! through the `BlockDevice` interface, and read the data area back with an
//! independent XTS implementation (OpenSSL, via Python's `cryptography`) —
//! the no-lock-in promise: the data area is plain `aes-xts-plain64` at
//! `DATA_OFFSET`, readable without envol.

mod common;

use std::os::unix::fs::FileExt;

use common::xts_oracle::openssl_decrypt;

use envol::volume::{
    BlockDevice, DATA_OFFSET, DataKey, FileBackend, Superblock, Volume, VolumeError,
    create_volume_file, read_superblocks, write_superblock,
};

fn key_bytes() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn new_volume_file(
    dir: &tempfile::TempDir,
    sector_size: u32,
    size: u64,
) -> (std::path::PathBuf, Superblock) {
    let key = DataKey::from_slice(&key_bytes()).unwrap();
    let uuid = uuid::Uuid::new_v4();
    let sb = Superblock::new(
        uuid,
        size,
        sector_size,
        "arn:aws:kms:eu-west-1:111122223333:key/0f3c".into(),
        b"opaque wrapped key from the KMS".to_vec(),
        key.key_check(&uuid),
        1_750_000_000,
    )
    .unwrap();
    let path = dir.path().join(format!("vol-{sector_size}.envol"));
    create_volume_file(&path, &sb, false).unwrap();
    (path, sb)
}

fn open(path: &std::path::Path) -> Volume {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let sb = read_superblocks(&file).best().unwrap().clone();
    let key = DataKey::from_slice(&key_bytes()).unwrap();
    Volume::open(FileBackend::new(file), &sb, key).unwrap()
}

#[test]
fn data_area_is_standard_aes_xts_plain64() {
    let dir = tempfile::tempdir().unwrap();
    for sector_size in [512u32, 4096] {
        let (path, _) = new_volume_file(&dir, sector_size, 8 << 20);
        let volume = open(&path);
        let plain: Vec<u8> = (0..3 * 4096 + 700).map(|i| (i * 13 % 251) as u8).collect();
        let offset = 5 * 4096 + 100;
        volume.write_at(offset, &plain, true).unwrap();
        drop(volume);

        // Read the covering sectors straight from the file and decrypt them
        // without envol.
        let ss = u64::from(sector_size);
        let first = offset / ss;
        let end = (offset + plain.len() as u64).div_ceil(ss);
        let mut raw = vec![0u8; ((end - first) * ss) as usize];
        let file = std::fs::File::open(&path).unwrap();
        file.read_exact_at(&mut raw, DATA_OFFSET + first * ss)
            .unwrap();
        let decrypted = openssl_decrypt(&key_bytes(), sector_size as usize, first, &raw);
        let skip = (offset - first * ss) as usize;
        assert_eq!(
            &decrypted[skip..skip + plain.len()],
            &plain[..],
            "sector size {sector_size}"
        );
        // The bytes around the write inside the edge sectors are zeros.
        assert!(decrypted[..skip].iter().all(|&b| b == 0));
        assert!(decrypted[skip + plain.len()..].iter().all(|&b| b == 0));
    }
}

#[test]
fn reopen_after_superblock_update_and_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sb) = new_volume_file(&dir, 4096, 1 << 20);
    let volume = open(&path);
    volume.write_at(4096 * 7 + 3, b"persisted", false).unwrap();
    volume.flush().unwrap();
    drop(volume);

    // A rewrap changes only the superblock; the data stays readable.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut updated = read_superblocks(&file).best().unwrap().clone();
    assert_eq!(updated, sb);
    updated.key_arn = "arn:aws:kms:eu-west-1:111122223333:key/rotated".into();
    updated.wrapped_key = b"rewrapped".to_vec();
    write_superblock(&file, &mut updated).unwrap();
    assert_eq!(updated.sequence, sb.sequence + 1);
    drop(file);

    let volume = open(&path);
    assert_eq!(volume.superblock().key_arn, updated.key_arn);
    let mut buf = [0u8; 9];
    volume.read_at(4096 * 7 + 3, &mut buf).unwrap();
    assert_eq!(&buf, b"persisted");
    drop(volume);

    let file = std::fs::File::open(&path).unwrap();
    let sb = read_superblocks(&file).best().unwrap().clone();
    let mut wrong = key_bytes();
    wrong[0] ^= 1;
    let err = Volume::open(
        FileBackend::new(file),
        &sb,
        DataKey::from_slice(&wrong).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, VolumeError::WrongKey));
}
