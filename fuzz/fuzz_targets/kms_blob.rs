//! The KMS ciphertext-blob decoder: `blob::parse_header` and `blob::open`.
//!
//! Input: a mode byte, then either a raw blob (opened with a fixed master
//! key), or a plaintext and a mutation applied to a fresh, real blob.
//!
//! Invariants: no panic; `parse_header` accepts exactly the blobs of valid
//! length, magic and version; a raw input never opens (it would be a
//! forgery); a real blob opens to its plaintext under its context, and
//! never once mutated (a flipped bit, truncation, extension, another
//! context or another key).
#![no_main]

use std::collections::BTreeMap;

use envol::kms::blob::{self, BlobHeader, MAX_LEN, MIN_LEN};
use libfuzzer_sys::fuzz_target;

const MATERIAL: [u8; 32] = [0x42; 32];

fn context(volume: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("envol:volume".to_string(), volume.to_string())])
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(rest);
    } else {
        mutated(mode >> 1, rest);
    }
});

fn raw(bytes: &[u8]) {
    let header = blob::parse_header(bytes);
    let well_formed =
        (MIN_LEN..=MAX_LEN).contains(&bytes.len()) && bytes.starts_with(b"EVK") && bytes[3] == 1;
    assert_eq!(header.is_ok(), well_formed, "{header:?}");
    if let Ok(h) = header {
        assert_eq!(h.key_id.as_bytes(), &bytes[4..20]);
    }
    for ctx in [
        BTreeMap::new(),
        context("00000000-0000-0000-0000-000000000000"),
    ] {
        assert!(
            blob::open(bytes, &MATERIAL, &ctx).is_err(),
            "a blob nobody sealed opened"
        );
    }
}

fn mutated(how: u8, rest: &[u8]) {
    if rest.len() < 4 {
        return;
    }
    let (control, plaintext) = rest.split_at(4);
    let plaintext = &plaintext[..plaintext.len().min(MAX_LEN - MIN_LEN)];
    let header = BlobHeader {
        key_id: uuid::Uuid::from_bytes([control[0]; 16]),
        key_version: u32::from(control[1]),
    };
    let ctx = context("9b2f1c3e-0000-4000-8000-000000000001");
    let sealed = blob::seal(header, &MATERIAL, &ctx, plaintext);
    assert_eq!(blob::parse_header(&sealed), Ok(header));
    let opened = blob::open(&sealed, &MATERIAL, &ctx).expect("a fresh blob opens");
    assert_eq!(&opened[..], plaintext);

    let position = u16::from_le_bytes([control[2], control[3]]) as usize;
    let mut bad = sealed.clone();
    let (material, ctx) = match how % 5 {
        0 => {
            let bit = position % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            (MATERIAL, ctx)
        }
        1 => {
            bad.truncate(position % bad.len());
            (MATERIAL, ctx)
        }
        2 => {
            bad.push(control[2]);
            (MATERIAL, ctx)
        }
        3 => {
            let mut other = ctx.clone();
            other.insert(
                String::from_utf8_lossy(plaintext).into_owned(),
                String::new(),
            );
            (MATERIAL, other)
        }
        _ => {
            let mut material = MATERIAL;
            material[position % 32] ^= 1 << (control[2] % 8);
            (material, ctx)
        }
    };
    assert!(
        blob::open(&bad, &material, &ctx).is_err(),
        "a mutated blob opened (mutation {})",
        how % 5
    );
}
