//! The superblock decoder: `Superblock::decode` on raw bytes, and
//! `read_superblocks_from` a `MemBackend` holding two fuzzed copies; plus
//! encode → decode round trips of superblocks built from the input.
//!
//! Input: a mode byte, then either raw copies or `arbitrary` fields.
//!
//! Invariants: no panic; whatever decodes re-encodes and decodes to the
//! same superblock; `best()` returns one of the two decoded copies, the one
//! with the higher sequence; a superblock built from the input that
//! encodes decodes to itself, and any single bit flipped in its encoding
//! is refused.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use envol::volume::backend::Backend;
use envol::volume::superblock::{
    COPY_SIZE, SECONDARY_OFFSET, Superblock, read_superblocks_from, write_superblock_to,
};
use envol::volume::{KEY_CHECK_LEN, MemBackend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(mode, rest);
    } else if let Ok(fields) = Fields::arbitrary(&mut Unstructured::new(rest)) {
        built(fields);
    }
});

/// Decodes `bytes` and, if it decodes, checks the round trip.
fn decode_checked(bytes: &[u8]) -> Option<Superblock> {
    let sb = Superblock::decode(bytes).ok()?;
    let encoded = sb.encode().expect("a decoded superblock re-encodes");
    assert_eq!(Superblock::decode(&encoded).unwrap(), sb);
    Some(sb)
}

fn raw(mode: u8, bytes: &[u8]) {
    let first = decode_checked(bytes);
    // Both copies on a backend: the input is the primary, and (mode bit 1)
    // also the secondary, or split between them.
    let (primary, secondary): (&[u8], &[u8]) = match mode >> 1 & 3 {
        0 => (bytes, &[]),
        1 => (bytes, bytes),
        _ => bytes.split_at(bytes.len() / 2),
    };
    // The backend may be cut short (mode bits 3..): a truncated volume.
    let full = SECONDARY_OFFSET as usize + COPY_SIZE;
    let size = match mode >> 3 {
        0 => full,
        n => (full * usize::from(n) / 32).max(1),
    };
    let backend = MemBackend::new(size);
    let put = |offset: usize, b: &[u8]| {
        let n = b.len().min(size.saturating_sub(offset)).min(COPY_SIZE);
        if n > 0 {
            backend.write_at(offset as u64, &b[..n]).unwrap();
        }
    };
    put(0, primary);
    put(SECONDARY_OFFSET as usize, secondary);
    let set = read_superblocks_from(&backend);
    let primary = set.primary.as_ref().ok();
    let secondary = set.secondary.as_ref().ok();
    // What decodes on its own decodes the same padded to a whole copy.
    if let Some(first) = &first
        && size == full
        && mode >> 1 & 3 != 2
    {
        assert_eq!(primary, Some(first), "backend read differs from decode");
    }
    for sb in [primary, secondary].into_iter().flatten() {
        decode_checked(&sb.encode().unwrap());
    }
    match (set.best(), primary, secondary) {
        (Ok(best), Some(p), Some(s)) => {
            assert_eq!(best, if s.sequence > p.sequence { s } else { p })
        }
        (Ok(best), Some(p), None) => assert_eq!(best, p),
        (Ok(best), None, Some(s)) => assert_eq!(best, s),
        (Err(_), None, None) => {}
        (best, p, s) => panic!("best() = {best:?} with copies {p:?} / {s:?}"),
    }
}

#[derive(Debug, Arbitrary)]
struct Fields {
    sequence: u64,
    uuid: [u8; 16],
    sectors: u64,
    sector_4096: bool,
    data_offset_extra_pages: Option<u32>,
    key_arn: String,
    extra_context: Vec<(String, String)>,
    wrapped_key: Vec<u8>,
    key_check: [u8; KEY_CHECK_LEN],
    created: u64,
    flip_bit: u32,
    update: bool,
}

fn built(f: Fields) {
    let uuid = uuid::Uuid::from_bytes(f.uuid);
    let sector_size = if f.sector_4096 { 4096 } else { 512 };
    let size = f.sectors.wrapping_mul(sector_size);
    let Ok(mut sb) = Superblock::new(
        uuid,
        size,
        sector_size as u32,
        f.key_arn,
        f.wrapped_key,
        f.key_check,
        f.created,
    ) else {
        return;
    };
    sb.sequence = f.sequence;
    if let Some(pages) = f.data_offset_extra_pages {
        sb.data_offset = sb.data_offset.wrapping_add(u64::from(pages) * 4096);
    }
    let mut context: BTreeMap<String, String> = f.extra_context.into_iter().collect();
    context.extend(sb.encryption_context.clone());
    sb.encryption_context = context;
    let Ok(encoded) = sb.encode() else {
        return;
    };
    assert!(encoded.len() <= COPY_SIZE);
    assert_eq!(Superblock::decode(&encoded).unwrap(), sb, "round trip");

    // Any single flipped bit is caught (checksum, magic, version or length).
    let bit = f.flip_bit as usize % (encoded.len() * 8);
    let mut corrupt = encoded.clone();
    corrupt[bit / 8] ^= 1 << (bit % 8);
    assert!(
        Superblock::decode(&corrupt).is_err(),
        "bit {bit} flipped and still decodes"
    );

    // Through a backend: written copies read back as the best superblock.
    if f.update && sb.sequence < u64::MAX - 2 {
        let backend = MemBackend::new(SECONDARY_OFFSET as usize + COPY_SIZE);
        let mut written = sb.clone();
        write_superblock_to(&backend, &mut written).unwrap();
        let set = read_superblocks_from(&backend);
        assert_eq!(set.best().unwrap(), &written);
        assert!(written.sequence > sb.sequence);
    }
}
