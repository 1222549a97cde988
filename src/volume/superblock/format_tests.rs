//! The byte format: round trips, hostile input, typed errors, field rules.

use super::*;
use crate::volume::superblock::test_sample::sample;
use rand::{Rng, RngCore, SeedableRng};

fn reseal(bytes: &mut [u8]) {
    // Recompute the checksum after a deliberate edit, so the test reaches
    // the field validation behind it.
    let body_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let end = HEADER_LEN + body_len;
    let sum = Sha256::digest(&bytes[..end]);
    bytes[end..end + 32].copy_from_slice(&sum);
}

#[test]
fn encode_decode_round_trip() {
    let sb = sample();
    let bytes = sb.encode().unwrap();
    assert_eq!(&bytes[..8], b"ENVOLSB\0");
    assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
    // Padding after the copy is ignored.
    let mut padded = bytes.clone();
    padded.resize(COPY_SIZE, 0);
    assert_eq!(Superblock::decode(&padded).unwrap(), sb);
    assert_eq!(
        sb.encryption_context,
        BTreeMap::from([(
            "envol:volume".to_string(),
            "42424242-4242-4242-4242-424242424242".to_string()
        )])
    );
}

#[test]
fn every_truncation_is_truncated_and_every_bit_flip_is_caught() {
    let bytes = sample().encode().unwrap();
    for len in 0..bytes.len() {
        assert!(
            matches!(
                Superblock::decode(&bytes[..len]),
                Err(SuperblockError::Truncated) | Err(SuperblockError::Invalid(_))
            ),
            "length {len}"
        );
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(Superblock::decode(&b).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for len in 0..200 {
        for _ in 0..50 {
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            let _ = Superblock::decode(&buf);
            // With a valid header, so the decoder gets further in.
            if len >= 24 {
                buf[..8].copy_from_slice(&MAGIC);
                buf[8..12].copy_from_slice(&1u32.to_le_bytes());
                let body = rng.gen_range(0..(len as u32));
                buf[20..24].copy_from_slice(&body.to_le_bytes());
                let _ = Superblock::decode(&buf);
                if (body as usize) + HEADER_LEN + 32 <= len {
                    reseal(&mut buf);
                    let _ = Superblock::decode(&buf);
                }
            }
        }
    }
    // Random megabytes too.
    for _ in 0..20 {
        let mut buf = vec![0u8; rng.gen_range(0..COPY_SIZE * 2)];
        rng.fill_bytes(&mut buf);
        assert!(Superblock::decode(&buf).is_err());
    }
}

#[test]
fn hostile_lengths_inside_a_sealed_body_are_invalid() {
    let mut bytes = sample().encode().unwrap();
    // The cipher id's length field is at 24 + 16 + 8 + 4.
    let at = HEADER_LEN + 28;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bytes);
    assert!(matches!(
        Superblock::decode(&bytes),
        Err(SuperblockError::Invalid(_))
    ));
}

#[test]
fn header_errors_are_typed() {
    let good = sample().encode().unwrap();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        Superblock::decode(&b),
        Err(SuperblockError::BadMagic)
    ));
    let mut b = good.clone();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        Superblock::decode(&b),
        Err(SuperblockError::UnsupportedVersion(3))
    ));
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    assert!(matches!(
        Superblock::decode(&b),
        Err(SuperblockError::BadChecksum)
    ));
    let mut b = good.clone();
    b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Superblock::decode(&b),
        Err(SuperblockError::Invalid(_))
    ));
}

#[test]
fn field_rules_are_enforced_on_decode() {
    // Bytes a buggy or hostile writer could leave, sealed with a valid
    // checksum so that only the field rules can reject them.
    let check = |edit: &dyn Fn(&mut Superblock)| -> SuperblockError {
        let mut sb = sample();
        edit(&mut sb);
        Superblock::decode(&encode_unchecked(&sb)).unwrap_err()
    };
    assert!(matches!(
        check(&|sb| sb.cipher = "aes-cbc-essiv:sha256".into()),
        SuperblockError::UnknownCipher(c) if c == "aes-cbc-essiv:sha256"
    ));
    assert!(matches!(
        check(&|sb| sb.sector_size = 1024),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.size = 0),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.size = 4097),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.data_offset = 4096),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.data_offset = (1 << 20) + 512),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.size = u64::MAX - 4095),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.key_arn.clear()),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.wrapped_key.clear()),
        SuperblockError::Invalid(_)
    ));
    assert!(matches!(
        check(&|sb| sb.uuid = Uuid::from_bytes([1; 16])),
        SuperblockError::Invalid(m) if m.contains("encryption context")
    ));
    // 512-byte sectors are fine.
    let mut sb = sample();
    sb.sector_size = 512;
    sb.size = 512 * 3;
    assert_eq!(Superblock::decode(&sb.encode().unwrap()).unwrap(), sb);
}

/// Encodes without validation (test-only), to produce bytes a buggy or
/// hostile writer could leave on disk.
fn encode_unchecked(sb: &Superblock) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&sb.sequence.to_le_bytes());
    // Rebuild the body by hand from sb's fields.
    let mut body = Vec::new();
    body.extend_from_slice(sb.uuid.as_bytes());
    body.extend_from_slice(&sb.size.to_le_bytes());
    body.extend_from_slice(&sb.sector_size.to_le_bytes());
    put_bytes(&mut body, sb.cipher.as_bytes()).unwrap();
    body.extend_from_slice(&sb.data_offset.to_le_bytes());
    put_bytes(&mut body, sb.key_arn.as_bytes()).unwrap();
    put_len(&mut body, sb.encryption_context.len()).unwrap();
    for (k, v) in &sb.encryption_context {
        put_bytes(&mut body, k.as_bytes()).unwrap();
        put_bytes(&mut body, v.as_bytes()).unwrap();
    }
    put_bytes(&mut body, &sb.wrapped_key).unwrap();
    body.extend_from_slice(&sb.key_check);
    body.extend_from_slice(&sb.created.to_le_bytes());
    put_len(&mut bytes, body.len()).unwrap();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&[0u8; 32]);
    reseal(&mut bytes);
    bytes
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let mut sb = sample();
    sb.sector_size = 1000;
    assert!(sb.encode().is_err());
    let mut sb = sample();
    sb.wrapped_key = vec![1; COPY_SIZE];
    assert!(matches!(sb.encode(), Err(SuperblockError::Invalid(m)) if m.contains("fits")));
}

fn in_transition() -> Superblock {
    let mut sb = sample();
    sb.transition = Some(Transition {
        new_key_arn: "arn:aws:kms:us-east-1:111122223333:key/new".into(),
        new_wrapped_key: vec![0x5a; 184],
        new_key_check: [0x22; 32],
        direction: Direction::Ascending,
        watermark: 100,
        started: 1_800_000_000,
        hotzone: (0..MAX_HOTZONE_SECTORS)
            .map(|i| [i as u8; HOTZONE_DIGEST_LEN])
            .collect(),
    });
    sb
}

#[test]
fn a_transition_round_trips_as_version_2_and_a_finished_one_is_version_1() {
    let sb = in_transition();
    let bytes = sb.encode().unwrap();
    assert!(bytes.len() <= COPY_SIZE, "a full hotzone fits in a copy");
    assert_eq!(bytes[8..12], TRANSITION_FORMAT_VERSION.to_le_bytes());
    assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
    let mut done = sb.clone();
    done.transition = None;
    let bytes = done.encode().unwrap();
    assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(Superblock::decode(&bytes).unwrap(), done);
    // Debug output names the hotzone's size, not its digests.
    assert!(format!("{sb:?}").contains("hotzone_sectors: 2048"));
}

#[test]
fn a_transition_beyond_the_volume_or_hotzone_limit_is_refused() {
    let mut sb = in_transition();
    let sectors = sb.size / u64::from(sb.sector_size);
    sb.transition.as_mut().unwrap().watermark = sectors - 10;
    assert!(matches!(sb.encode(), Err(SuperblockError::Invalid(_))));
    let mut sb = in_transition();
    sb.transition
        .as_mut()
        .unwrap()
        .hotzone
        .push([0; HOTZONE_DIGEST_LEN]);
    assert!(matches!(sb.encode(), Err(SuperblockError::Invalid(_))));
    let mut sb = in_transition();
    sb.transition.as_mut().unwrap().new_wrapped_key.clear();
    assert!(matches!(sb.encode(), Err(SuperblockError::Invalid(_))));
}

#[test]
fn a_version_2_copy_without_transition_fields_or_with_bad_direction_is_refused() {
    // A version-1 body relabelled version 2 (and re-checksummed) runs out
    // of body where the transition should be.
    let mut bytes = sample().encode().unwrap();
    bytes[8..12].copy_from_slice(&TRANSITION_FORMAT_VERSION.to_le_bytes());
    let n = bytes.len() - 32;
    let sum = Sha256::digest(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum);
    assert!(matches!(
        Superblock::decode(&bytes),
        Err(SuperblockError::Invalid(_))
    ));
    // Direction byte 7.
    let sb = in_transition();
    let mut bytes = sb.encode().unwrap();
    let t = sb.transition.as_ref().unwrap();
    let tail = 1 + 8 + 8 + 4 + t.hotzone.len() * HOTZONE_DIGEST_LEN + 32;
    let at = bytes.len() - tail;
    assert_eq!(bytes[at], 1);
    bytes[at] = 7;
    let n = bytes.len() - 32;
    let sum = Sha256::digest(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum);
    let err = Superblock::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("direction 7"), "{err}");
}
