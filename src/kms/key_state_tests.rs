use super::*;

#[test]
fn every_state_round_trips_through_its_stored_name() {
    for s in [
        KeyState::Enabled,
        KeyState::Disabled,
        KeyState::PendingDeletion,
    ] {
        assert_eq!(s.as_str().parse::<KeyState>(), Ok(s));
        assert_eq!(s.to_string(), s.as_str());
    }
}

#[test]
fn an_unknown_stored_name_is_refused_not_guessed() {
    let err = "PendingImport".parse::<KeyState>().unwrap_err();
    assert_eq!(err, UnknownKeyState("PendingImport".into()));
    assert!(err.to_string().contains("\"PendingImport\""), "{err}");
    assert!("enabled".parse::<KeyState>().is_err());
    assert!("".parse::<KeyState>().is_err());
}
