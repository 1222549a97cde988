use super::*;

#[test]
fn requests_round_trip_as_one_json_line() {
    for command in [
        Command::Attach {
            volume: "/srv/a.vol=db:ro".into(),
            take_over: Some(TakeOverMode::IfHolderDead),
        },
        Command::Detach {
            name: "db".into(),
            force: true,
        },
        Command::Status,
        Command::Grow {
            volume: "rbd:p/i".into(),
            size: 16 << 20,
            add: true,
        },
    ] {
        let line = serde_json::to_vec(&Request {
            version: PROTOCOL_VERSION,
            command: command.clone(),
        })
        .unwrap();
        assert!(!line.contains(&b'\n'));
        assert_eq!(parse_request(&line).unwrap(), command);
    }
}

#[test]
fn optional_fields_may_be_left_out() {
    let line = br#"{"version":1,"command":"detach","name":"db"}"#;
    assert_eq!(
        parse_request(line).unwrap(),
        Command::Detach {
            name: "db".into(),
            force: false
        }
    );
    let line = br#"{"version":1,"command":"grow","volume":"/v","size":4096}"#;
    assert_eq!(
        parse_request(line).unwrap(),
        Command::Grow {
            volume: "/v".into(),
            size: 4096,
            add: false
        }
    );
    let line = br#"{"version":1,"command":"attach","volume":"rbd:p/i"}"#;
    assert_eq!(
        parse_request(line).unwrap(),
        Command::Attach {
            volume: "rbd:p/i".into(),
            take_over: None
        }
    );
}

#[test]
fn bad_requests_are_errors_not_panics() {
    for (line, expect) in [
        (&b"not json"[..], "malformed request"),
        (b"", "malformed request"),
        (b"[]", "malformed request"),
        (br#"{"command":"status"}"#, "malformed request"),
        (
            br#"{"version":"1","command":"status"}"#,
            "malformed request",
        ),
        (
            br#"{"version":2,"command":"status"}"#,
            "unsupported control protocol version 2",
        ),
        (br#"{"version":1}"#, "malformed request"),
        (br#"{"version":1,"command":"grow"}"#, "malformed request"),
        (
            br#"{"version":1,"command":"grow","volume":"/v","size":-1}"#,
            "malformed request",
        ),
        (
            br#"{"version":1,"command":"detach","name":7}"#,
            "malformed request",
        ),
        (b"\xff\xfe", "malformed request"),
    ] {
        let err = parse_request(line).unwrap_err();
        assert!(err.contains(expect), "{line:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn replies_name_their_kind() {
    let reply = Reply {
        version: PROTOCOL_VERSION,
        body: ReplyBody::error("no export named \"x\""),
    };
    let text = serde_json::to_string(&reply).unwrap();
    assert_eq!(
        text,
        r#"{"version":1,"reply":"error","message":"no export named \"x\""}"#
    );
    assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
}
