//! boto3 runs AWS's KMS demo flow against `envol kms serve`
//! (`tests/python/boto3_demo.py`).

mod common;

use std::process::Command;

use common::{KmsServer, envol, run_ok};

#[test]
fn boto3_demo_flow() {
    let kms = KmsServer::start();
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join("credentials");
    let config = home.path().join("config");
    // Root's profile, written by hand from the init output; the users' by
    // `envol kms user add --profile`.
    std::fs::write(
        &creds,
        format!(
            "[envol-root]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            kms.root.access_key_id, kms.root.secret
        ),
    )
    .unwrap();
    std::fs::write(&config, "[profile envol-root]\nregion = us-east-1\n").unwrap();
    for user in ["myadmin", "S3DemoUser"] {
        run_ok(
            envol()
                .args(["kms", "user", "add", user, "--profile", user, "--data"])
                .arg(kms.data())
                .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
                .env("AWS_CONFIG_FILE", &config),
        );
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/boto3_demo.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&kms.endpoint)
        .arg(&creds)
        .arg(&config)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "boto3 demo failed (is boto3 installed? pip install boto3):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("boto3 demo flow: ok"));
}

/// Tags through boto3 (`tests/python/boto3_tags.py`), paged by boto3's own
/// ListResourceTags paginator.
#[test]
fn boto3_tags() {
    let kms = KmsServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/boto3_tags.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&kms.endpoint)
        .arg(&kms.root.access_key_id)
        .arg(&kms.root.secret)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "boto3 tags failed (is boto3 installed? pip install boto3):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("boto3 tags: ok"));
}
