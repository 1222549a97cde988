//! The KMS database's schema version is checked when a data directory is
//! opened: a database written by a newer envol (or one whose version is
//! missing) is refused with one clear line naming the directory and both
//! versions, before anything alters it.

mod common;

use std::path::Path;
use std::process::Output;

use common::{envol, run_ok};

fn init(dir: &Path) {
    run_ok(envol().args(["kms", "init", "--data"]).arg(dir));
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("kms.db")).expect("open the KMS database")
}

fn tables(dir: &Path) -> Vec<String> {
    let c = db(dir);
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs `envol kms serve` on the directory; it must refuse to start.
fn serve_refused(dir: &Path) -> Output {
    let out = envol()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .env("ENVOL_LOG", "warn")
        .output()
        .expect("run envol kms serve");
    assert!(
        !out.status.success(),
        "envol kms serve started on a database it cannot read: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_newer_schema_is_refused_before_it_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    init(&dir);
    // Sanity: the version envol writes is the one it reads.
    let version: Vec<u8> = db(&dir)
        .query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, b"2");
    run_ok(envol().args(["kms", "user", "list", "--data"]).arg(&dir));

    // A "newer envol" bumps the version and drops a table this build has.
    {
        let c = db(&dir);
        c.execute(
            "UPDATE meta SET value = CAST('3' AS BLOB) WHERE name = 'schema_version'",
            [],
        )
        .unwrap();
        c.execute("DROP TABLE grants", []).unwrap();
    }
    let before = tables(&dir);
    assert!(!before.contains(&"grants".to_string()));

    let err = one_line_error(&serve_refused(&dir));
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains("schema version \"3\""), "{err}");
    assert!(err.contains("version 2"), "{err}");

    // Every command that opens the directory refuses it the same way.
    let out = envol()
        .args(["kms", "user", "add", "carol", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(one_line_error(&out), err);

    // Nothing was altered: the dropped table was not re-created.
    assert_eq!(tables(&dir), before);
}

#[test]
fn a_missing_or_unreadable_schema_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    init(&dir);
    db(&dir)
        .execute(
            "UPDATE meta SET value = CAST('one' AS BLOB) WHERE name = 'schema_version'",
            [],
        )
        .unwrap();
    let err = one_line_error(&serve_refused(&dir));
    assert!(err.contains("schema version \"one\""), "{err}");

    db(&dir)
        .execute("DELETE FROM meta WHERE name = 'schema_version'", [])
        .unwrap();
    let err = one_line_error(&serve_refused(&dir));
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains("schema version \"none\""), "{err}");
    assert!(err.contains("version 2"), "{err}");
}

/// Opening a current database takes no write lock: a read-only command
/// (`kms user list`) runs while another process holds the write lock (as a
/// server in the middle of a write does), instead of waiting out the busy
/// timeout (10 s) and failing with "database is locked".
#[test]
fn a_current_database_opens_without_taking_the_write_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    init(&dir);
    let writer = db(&dir);
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let out = common::volume::output_with_timeout(
        envol().args(["kms", "user", "list", "--data"]).arg(&dir),
        std::time::Duration::from_secs(8),
    );
    let took = started.elapsed();
    writer.execute_batch("ROLLBACK").unwrap();
    assert!(
        out.status.success(),
        "kms user list failed while another process held the write lock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("root"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "kms user list waited {took:?} for the write lock"
    );
}
