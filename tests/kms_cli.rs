//! `envol kms init | serve | user | check` on the command line: what they
//! print, write, and refuse.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{envol, run_ok};

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} should fail");
    assert!(
        stderr.contains(needle),
        "{cmd:?}: expected {needle:?} in {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
}

#[test]
fn init_makes_a_private_directory_and_refuses_to_reinit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let out = run_ok(
        envol()
            .args(["kms", "init", "--region", "eu-west-3", "--data"])
            .arg(&dir),
    );
    let creds = common::parse_creds(&out);
    assert!(creds.access_key_id.starts_with("AKIA"));
    assert_eq!(creds.secret.len(), 40);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("root.key")), 0o600);
    assert_eq!(std::fs::metadata(dir.join("root.key")).unwrap().len(), 32);
    assert_eq!(mode(&dir.join("kms.db")), 0o600);
    fails_with(
        envol().args(["kms", "init", "--data"]).arg(&dir),
        "already exists",
    );
    fails_with(
        envol()
            .args(["kms", "init", "--region", "moon", "--data"])
            .arg(tmp.path().join("x")),
        "invalid region",
    );
    // `check` unseals every key version.
    let ok = run_ok(envol().args(["kms", "check", "--data"]).arg(&dir));
    assert!(ok.starts_with("ok:"), "{ok}");
}

#[test]
fn serve_refuses_unsafe_or_mismatched_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    run_ok(envol().args(["kms", "init", "--data"]).arg(&dir));
    let serve = || {
        let mut c = envol();
        c.args(["kms", "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&dir);
        c
    };

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    fails_with(&mut serve(), "group and others must have no access");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let key = dir.join("root.key");
    let original = std::fs::read(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails_with(&mut serve(), "group and others must have no access");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::write(&key, [7u8; 32]).unwrap();
    fails_with(&mut serve(), "does not belong to this data directory");
    std::fs::write(&key, [7u8; 31]).unwrap();
    fails_with(&mut serve(), "not a 32-byte key");
    std::fs::remove_file(&key).unwrap();
    fails_with(&mut serve(), "is missing");
    std::fs::write(&key, &original).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    fails_with(
        envol()
            .args(["kms", "serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(&dir),
        "without TLS",
    );
    fails_with(
        envol()
            .args(["kms", "serve", "--data"])
            .arg(tmp.path().join("nothing")),
        "not an initialised KMS data directory",
    );
}

#[test]
fn users_are_listed_added_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    run_ok(envol().args(["kms", "init", "--data"]).arg(&dir));
    run_ok(
        envol()
            .args(["kms", "user", "add", "alice", "--data"])
            .arg(&dir),
    );
    fails_with(
        envol()
            .args(["kms", "user", "add", "alice", "--data"])
            .arg(&dir),
        "already exists",
    );
    fails_with(
        envol()
            .args(["kms", "user", "add", "bad name", "--data"])
            .arg(&dir),
        "invalid user name",
    );
    let list = run_ok(envol().args(["kms", "user", "list", "--data"]).arg(&dir));
    assert!(list.contains(":user/alice"), "{list}");
    assert!(list.contains(":root"), "{list}");
    run_ok(
        envol()
            .args(["kms", "user", "remove", "alice", "--data"])
            .arg(&dir),
    );
    let list = run_ok(envol().args(["kms", "user", "list", "--data"]).arg(&dir));
    assert!(!list.contains("alice"), "{list}");
    fails_with(
        envol()
            .args(["kms", "user", "remove", "alice", "--data"])
            .arg(&dir),
        "no user named alice",
    );
}

#[test]
fn user_remove_removes_the_profile_user_add_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let creds = tmp.path().join("aws/credentials");
    let config = tmp.path().join("aws/config");
    std::fs::create_dir_all(tmp.path().join("aws")).unwrap();
    // Someone's own profiles, which must survive.
    std::fs::write(
        &creds,
        "# mine\n[keep]\naws_access_key_id = AKIAKEEPKEEPKEEPKEEP\naws_secret_access_key = x\n",
    )
    .unwrap();
    std::fs::write(&config, "[profile keep]\nregion = eu-west-1\n").unwrap();
    let with_files = |c: &mut Command| {
        c.env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", &config);
    };
    run_ok(envol().args(["kms", "init", "--data"]).arg(&dir));
    let mut add = envol();
    add.args(["kms", "user", "add", "alice", "--profile", "alice-prof"])
        .args(["--endpoint", "http://127.0.0.1:4599", "--data"])
        .arg(&dir);
    with_files(&mut add);
    let out = run_ok(&mut add);
    let alice = common::parse_creds(&out);
    let text = std::fs::read_to_string(&creds).unwrap();
    assert!(text.contains("[alice-prof]") && text.contains(&alice.access_key_id));
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("[profile alice-prof]")
    );

    let mut remove = envol();
    remove
        .args(["kms", "user", "remove", "alice", "--data"])
        .arg(&dir);
    with_files(&mut remove);
    let out = run_ok(&mut remove);
    assert!(out.contains("Removed AWS profile alice-prof"), "{out}");
    let text = std::fs::read_to_string(&creds).unwrap();
    assert_eq!(
        text,
        "# mine\n[keep]\naws_access_key_id = AKIAKEEPKEEPKEEPKEEP\naws_secret_access_key = x\n"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "[profile keep]\nregion = eu-west-1\n"
    );

    // A user without a profile: removal still works, the files are untouched.
    run_ok(
        envol()
            .args(["kms", "user", "add", "bob", "--data"])
            .arg(&dir),
    );
    let mut remove = envol();
    remove
        .args(["kms", "user", "remove", "bob", "--data"])
        .arg(&dir);
    with_files(&mut remove);
    let out = run_ok(&mut remove);
    assert!(!out.contains("AWS profile"), "{out}");
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), text);
}
