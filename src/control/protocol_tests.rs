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
        Command::SnapshotBegin {
            volume_uuid: "0b8f6f0e-6a43-4c5e-9c1a-0d6f3c1e2a11".into(),
            base: "s3://b/p/snap-0123456789abcdef".into(),
            all_chunks: true,
            copy_limit: 256 << 20,
        },
        Command::SnapshotRead { chunk: 7 },
        Command::SnapshotEnd { success: false },
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

#[test]
fn snapshot_replies_round_trip() {
    for body in [
        ReplyBody::SnapshotFrozen {
            export: "db".into(),
            changes: TakenChanges::Exact {
                base: Some("s3://b/p/snap-0123456789abcdef".into()),
                chunks: vec![0, 5, 9],
            },
            store_snapshot: None,
        },
        ReplyBody::SnapshotFrozen {
            export: "db".into(),
            changes: TakenChanges::Unknown {
                reason: "not detached cleanly".into(),
            },
            store_snapshot: Some("envol-attached-snap-0123456789abcdef".into()),
        },
        ReplyBody::SnapshotChunk {
            chunk: 3,
            len: 1 << 20,
        },
        ReplyBody::SnapshotEnded { success: true },
    ] {
        let reply = Reply {
            version: PROTOCOL_VERSION,
            body,
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
    }
}

#[test]
fn a_snapshot_begin_without_its_bound_is_refused() {
    let line =
        br#"{"version":1,"command":"snapshot_begin","volume_uuid":"u","base":"s3://b/snap-1"}"#;
    let err = parse_request(line).unwrap_err();
    assert!(err.contains("copy_limit"), "{err}");
}
