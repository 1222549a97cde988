use super::*;

const DAY: i64 = DAY_MS;
/// 2026-06-15T00:00:00Z.
const NOW: i64 = 1_781_481_600_000;

fn line(ms: i64, op: &str, key: &str, outcome: &str) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"time":"{time}","request_id":"r{ms}","principal":"p","source":null,"operation":"{op}","key":"{key}","outcome":"{outcome}","error":null}}"#
    )
}

fn append(path: &Path, lines: &[String]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[test]
fn counts_successful_cryptographic_operations_in_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    append(
        &data.audit_log(),
        &[
            line(NOW - 40 * DAY, "Decrypt", "A", "success"),
            line(NOW - 29 * DAY, "Decrypt", "A", "success"),
            line(NOW - DAY, "Encrypt", "A", "success"),
            line(NOW - DAY, "Decrypt", "A", "failure"),
            line(NOW - DAY, "DescribeKey", "A", "success"),
            line(
                NOW - 2 * DAY,
                "GenerateDataKeyWithoutPlaintext",
                "B",
                "success",
            ),
        ],
    );
    let r = key_usage(&data, NOW).unwrap();
    assert_eq!(
        r.of("A"),
        KeyUsage {
            last_used_ms: Some(NOW - DAY),
            uses_in_window: 2
        }
    );
    assert_eq!(r.of("B").uses_in_window, 1);
    assert_eq!(r.of("C"), KeyUsage::default());
    assert_eq!(r.log_starts_ms, Some(NOW - 40 * DAY));
}

#[test]
fn reads_only_new_lines_and_survives_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    let log = data.audit_log();
    append(&log, &[line(NOW - 3 * DAY, "Decrypt", "A", "success")]);
    assert_eq!(key_usage(&data, NOW).unwrap().of("A").uses_in_window, 1);
    let index: Index =
        serde_json::from_slice(&fs::read(tmp.path().join(USAGE_INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(index.files[0].counted, fs::metadata(&log).unwrap().len());

    // A half-written line is left for later; the new whole one is counted once.
    append(&log, &[line(NOW - 2 * DAY, "Encrypt", "A", "success")]);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&line(NOW - DAY, "Decrypt", "A", "success").as_bytes()[..40])
        .unwrap();
    assert_eq!(key_usage(&data, NOW).unwrap().of("A").uses_in_window, 2);

    // Rotated (renamed, as the audit log does), then a new current file.
    fs::rename(&log, tmp.path().join("audit.log.1")).unwrap();
    append(&log, &[line(NOW - DAY, "ReEncrypt", "A", "success")]);
    let r = key_usage(&data, NOW).unwrap();
    assert_eq!(r.of("A").uses_in_window, 3);
    assert_eq!(r.of("A").last_used_ms, Some(NOW - DAY));

    // A corrupt index is rebuilt from the log, with the same answer.
    fs::write(tmp.path().join(USAGE_INDEX_FILE), b"{not json").unwrap();
    assert_eq!(key_usage(&data, NOW).unwrap().of("A").uses_in_window, 3);
}

#[test]
fn re_encrypt_uses_both_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path());
    let l = line(NOW, "ReEncrypt", "A", "success")
        .replace(r#""outcome""#, r#""destination_key":"B","outcome""#);
    append(&data.audit_log(), &[l]);
    let r = key_usage(&data, NOW).unwrap();
    assert_eq!(r.of("A").uses_in_window, 1);
    assert_eq!(r.of("B").uses_in_window, 1);
}

#[test]
fn a_directory_without_a_log_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let e = key_usage(&DataDir::new(tmp.path()), NOW).unwrap_err();
    assert!(e.to_string().contains("holds no audit log"), "{e}");
}
