use super::*;
use crate::kms::http::limits::Limits;
use crate::nbd::REQUEST_TIMEOUT;

#[test]
fn durations_parse_with_units() {
    // `envol serve --request-timeout`'s default, written as text in its
    // declaration.
    assert_eq!(parse_duration("30s"), Ok(REQUEST_TIMEOUT));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
}

#[test]
fn a_bare_number_is_seconds_as_the_kms_flags_took_it() {
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration(" 0.5 "), Ok(Duration::from_millis(500)));
}

#[test]
fn durations_refuse_zero_negative_huge_and_garbage_naming_the_input() {
    for bad in [
        "",
        "0",
        "0s",
        "0.0000000000001",
        "-1",
        "-1s",
        "1h",
        "2d",
        "abc",
        "ten",
        "NaN",
        "NaNs",
        "inf",
        "1e9",
        "1e400",
        "86401",
        "1441m",
    ] {
        let err = parse_duration(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
    assert_eq!(parse_duration("1440m"), Ok(Duration::from_secs(86_400)));
}

#[test]
fn the_kms_defaults_parse_to_the_library_defaults() {
    // The flags' defaults are written as text in their declarations
    // (cli/kms_limits.rs); these are the same values.
    let l = Limits::default();
    assert_eq!(parse_duration("10s"), Ok(l.header_timeout));
    assert_eq!(parse_duration("10s"), Ok(l.body_timeout));
    assert_eq!(parse_duration("60s"), Ok(l.idle_timeout));
    assert_eq!(parse_duration("10s"), Ok(l.tls_handshake_timeout));
}

#[test]
fn connection_counts_are_at_least_one() {
    assert_eq!(parse_connections("16"), Ok(16));
    assert_eq!(parse_connections("1"), Ok(1));
    for bad in ["0", "-1", "-3", "", "1.5", "many"] {
        let err = parse_connections(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
}
