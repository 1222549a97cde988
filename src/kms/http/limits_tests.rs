use super::*;

#[test]
fn seconds_accept_whole_and_fractional_values() {
    assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_seconds(" 0.5 "), Ok(Duration::from_millis(500)));
}

#[test]
fn seconds_refuse_zero_negative_and_garbage() {
    for bad in ["0", "-1", "NaN", "inf", "1e400", "", "ten", "5s"] {
        let err = parse_seconds(bad).unwrap_err();
        assert!(err.contains(bad.trim()), "{bad:?}: {err}");
    }
}

#[test]
fn max_connections_is_at_least_one() {
    assert_eq!(parse_max_connections("1"), Ok(1));
    assert!(parse_max_connections("0").is_err());
    assert!(parse_max_connections("-3").is_err());
}

#[test]
fn defaults_are_the_documented_ones() {
    let l = Limits::default();
    assert_eq!(l.max_connections, 512);
    assert_eq!(l.header_timeout, Duration::from_secs(10));
    assert_eq!(l.body_timeout, Duration::from_secs(10));
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
}
