use super::*;
use crate::volume::XtsModeCipher;

/// A stored chunk of `sectors` sectors at data-area `offset` under `key`:
/// sector *i* holds plaintext bytes `i + 1` (never zero), except the
/// sectors in `holes`, which are stored as zeros.
fn stored_chunk(key: &DataKey, ss: usize, offset: u64, sectors: usize, holes: &[usize]) -> Vec<u8> {
    let cipher = XtsEngine::new(key, ss).unwrap();
    let mut chunk = vec![0u8; ss * sectors];
    for i in 0..sectors {
        if holes.contains(&i) {
            continue;
        }
        let sector = &mut chunk[i * ss..(i + 1) * ss];
        sector.fill(i as u8 + 1);
        cipher.encrypt_sectors(offset / ss as u64 + i as u64, sector);
    }
    chunk
}

#[test]
fn reencrypted_chunk_decrypts_under_the_new_key_and_holes_stay_holes() {
    for ss in [512usize, 4096] {
        let (old, new) = (DataKey::generate(), DataKey::generate());
        let offset = 3 * 1024 * 1024;
        let sectors = 64;
        let holes = [0, 7, 8, 9, 63];
        let mut chunk = stored_chunk(&old, ss, offset, sectors, &holes);
        let before = chunk.clone();
        Rekey::new(&old, &new, ss as u32)
            .unwrap()
            .reencrypt(offset, &mut chunk)
            .unwrap();
        // The reference cipher, not the engine that wrote it, reads it back.
        let reference = XtsModeCipher::new(&new, ss).unwrap();
        for i in 0..sectors {
            let sector = &chunk[i * ss..(i + 1) * ss];
            if holes.contains(&i) {
                assert!(sector.iter().all(|&b| b == 0), "hole {i} ({ss}) was filled");
                continue;
            }
            assert_ne!(
                sector,
                &before[i * ss..(i + 1) * ss],
                "sector {i} unchanged"
            );
            let mut plain = sector.to_vec();
            reference.decrypt_sectors(offset / ss as u64 + i as u64, &mut plain);
            assert!(
                plain.iter().all(|&b| b == i as u8 + 1),
                "sector {i} ({ss}) decrypts wrong under the new key"
            );
        }
    }
}

#[test]
fn the_same_key_round_trips_and_the_sector_number_is_the_tweak() {
    let key = DataKey::generate();
    let ss = 512;
    let chunk = stored_chunk(&key, ss, 0, 8, &[]);
    let mut same = chunk.clone();
    Rekey::new(&key, &key, 512)
        .unwrap()
        .reencrypt(0, &mut same)
        .unwrap();
    assert_eq!(
        same, chunk,
        "old key = new key must leave the bytes as they were"
    );
    // The offset is the tweak: re-encrypted as if one sector further on,
    // the first sector no longer decrypts to its plaintext under the new key.
    let new = DataKey::generate();
    let mut moved = chunk.clone();
    Rekey::new(&key, &new, 512)
        .unwrap()
        .reencrypt(512, &mut moved)
        .unwrap();
    let mut plain = moved[..ss].to_vec();
    XtsModeCipher::new(&new, ss)
        .unwrap()
        .decrypt_sectors(0, &mut plain);
    assert!(!plain.iter().all(|&b| b == 1));
}

#[test]
fn unaligned_input_is_an_error_not_a_panic() {
    let key = DataKey::generate();
    let rekey = Rekey::new(&key, &DataKey::generate(), 4096).unwrap();
    let mut buf = vec![1u8; 4096];
    assert!(matches!(
        rekey.reencrypt(512, &mut buf),
        Err(RekeyError::Unaligned { offset: 512, .. })
    ));
    let mut short = vec![1u8; 4000];
    let err = rekey.reencrypt(0, &mut short).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot re-encrypt 4000 bytes at offset 0: not whole 4096-byte sectors"
    );
    assert!(Rekey::new(&key, &key, 100).is_err());
}
