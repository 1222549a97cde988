use super::*;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn sectors_below_the_watermark_use_the_new_key_the_rest_the_old() {
    for ss in [512usize, 4096] {
        let (old, new) = (DataKey::generate(), DataKey::generate());
        let t = TransitionCipher::new(&old, &new, ss, 5).unwrap();
        let old_e = XtsEngine::new(&old, ss).unwrap();
        let new_e = XtsEngine::new(&new, ss).unwrap();
        let plain = data(8 * ss);
        // Sectors 2..10: 2,3,4 new; 5..10 old.
        let mut got = plain.clone();
        t.encrypt_sectors(2, &mut got);
        let mut want = plain.clone();
        new_e.encrypt_sectors(2, &mut want[..3 * ss]);
        old_e.encrypt_sectors(5, &mut want[3 * ss..]);
        assert_eq!(got, want);
        let mut to = vec![0u8; plain.len()];
        t.encrypt_sectors_to(2, &plain, &mut to);
        assert_eq!(to, want);
        t.decrypt_sectors(2, &mut got);
        assert_eq!(got, plain);
        // Advancing moves the split; it never moves down.
        t.advance(10);
        t.advance(4);
        assert_eq!(t.watermark(), 10);
        let mut all_new = plain.clone();
        t.encrypt_sectors(2, &mut all_new);
        let mut want = plain.clone();
        new_e.encrypt_sectors(2, &mut want);
        assert_eq!(all_new, want);
    }
}

#[test]
fn a_retired_old_key_is_gone_and_everything_is_under_the_new_one() {
    let (old, new) = (DataKey::generate(), DataKey::generate());
    let t = TransitionCipher::new(&old, &new, 512, 0).unwrap();
    assert!(t.with_old(|_| ()).is_some());
    t.retire_old();
    assert!(t.with_old(|_| ()).is_none());
    let plain = data(1024);
    let mut got = plain.clone();
    t.encrypt_sectors(0, &mut got);
    let mut want = plain.clone();
    XtsEngine::new(&new, 512)
        .unwrap()
        .encrypt_sectors(0, &mut want);
    assert_eq!(got, want);
}
