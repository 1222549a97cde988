use super::*;

fn record<'a>(time: &str, request_id: &'a str, principal: Option<&'a str>) -> AuditRecord<'a> {
    AuditRecord {
        time: time.to_string(),
        request_id,
        principal,
        source: Some("192.0.2.7:4000"),
        operation: "ListKeys",
        key: None,
        destination_key: None,
        encryption_context: None,
        outcome: if principal.is_some() {
            "success"
        } else {
            "failure"
        },
        error: principal.map_or(Some("InvalidSignatureException"), |_| None),
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn rotation_keeps_at_most_keep_files_each_within_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    log.set_rotation(Rotation {
        max_bytes: 1000,
        keep: 2,
    });
    for i in 0..100 {
        let id = format!("req-{i:03}");
        log.record(&record("t", &id, Some("arn:aws:iam::1:root")))
            .unwrap();
    }
    let numbered = |n: usize| dir.path().join(format!("audit.log.{n}"));
    assert!(numbered(1).exists() && numbered(2).exists());
    assert!(!numbered(3).exists());
    let mut ids = Vec::new();
    for f in [numbered(2), numbered(1), path.clone()] {
        assert!(std::fs::metadata(&f).unwrap().len() <= 1000);
        ids.extend(lines(&f).into_iter().map(|l| l["request_id"].to_string()));
    }
    // The files hold the latest requests, in order, with none missing.
    let last = ids.len();
    assert!(last > 3);
    let expected: Vec<String> = (100 - last..100)
        .map(|i| format!("\"req-{i:03}\""))
        .collect();
    assert_eq!(ids, expected);
}

#[test]
fn keep_zero_starts_the_file_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    log.set_rotation(Rotation {
        max_bytes: 600,
        keep: 0,
    });
    for i in 0..20 {
        let id = format!("req-{i:03}");
        log.record(&record("t", &id, None)).unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() <= 600);
    assert!(!dir.path().join("audit.log.1").exists());
    let got = lines(&path);
    assert_eq!(got.last().unwrap()["request_id"], "req-019");
}

#[test]
fn unauthenticated_failures_are_counted_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    for i in 0..500 {
        let id = format!("bad-{i}");
        log.record_unauthenticated(&record("t0", &id, None))
            .unwrap();
        if i % 100 == 0 {
            log.record(&record("t1", "good", Some("arn:aws:iam::1:root")))
                .unwrap();
        }
    }
    // Within the interval nothing more is written, even when asked.
    log.flush_unauthenticated("t2", false).unwrap();
    assert_eq!(lines(&path).len(), 1 + 5);
    // At shutdown the summary is written.
    log.flush_unauthenticated("t3", true).unwrap();
    let got = lines(&path);
    assert_eq!(got.len(), 1 + 5 + 1);
    assert_eq!(got[0]["request_id"], "bad-0");
    let summary = got.last().unwrap();
    assert_eq!(summary["outcome"], "unauthenticated-summary");
    assert_eq!(summary["count"], 499);
    assert_eq!(summary["request_id"], "bad-499");
    assert_eq!(summary["errors"]["InvalidSignatureException"], 499);
    assert_eq!(summary["sources"]["192.0.2.7"], 499);
    // Nothing counted since: nothing more to write.
    log.flush_unauthenticated("t4", true).unwrap();
    assert_eq!(lines(&path).len(), 7);
}

#[test]
fn a_summary_names_at_most_sixteen_sources() {
    let mut tally = Tally::default();
    for i in 0..40u8 {
        let source = format!("10.0.0.{i}:1");
        let mut rec = record("t", "r", None);
        rec.source = Some(&source);
        tally.count(&rec);
    }
    assert_eq!(tally.sources.len(), MAX_SUMMARY_SOURCES + 1);
    assert_eq!(tally.sources["other"], 40 - MAX_SUMMARY_SOURCES as u64);
    assert_eq!(tally.count, 40);
}

#[test]
fn a_rotation_by_another_process_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let server = AuditLog::open(&path).unwrap();
    let cli = AuditLog::open(&path).unwrap();
    server.record(&record("t", "before", None)).unwrap();
    // The other process rotates: its next line starts a new audit.log.
    cli.set_rotation(Rotation {
        max_bytes: MIN_MAX_BYTES,
        keep: 1,
    });
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&vec![b' '; MIN_MAX_BYTES as usize])
        .unwrap();
    cli.record(&record("t", "cli", None)).unwrap();
    server.record(&record("t", "after", None)).unwrap();
    let ids: Vec<String> = lines(&path)
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["cli", "after"]);
}
