use super::parse_new_size;
use crate::volume::NewSize;

#[test]
fn sizes_and_increments() {
    assert_eq!(parse_new_size("10G"), Ok(NewSize::To(10 << 30)));
    assert_eq!(parse_new_size("+512M"), Ok(NewSize::Plus(512 << 20)));
    assert_eq!(parse_new_size(" +4096 "), Ok(NewSize::Plus(4096)));
    for bad in ["", "+", "+0", "-1G", "++1G", "1X", "+1.5G"] {
        let err = parse_new_size(bad).unwrap_err();
        assert!(err.starts_with("invalid size"), "{bad:?}: {err}");
    }
}
