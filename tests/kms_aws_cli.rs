//! The AWS CLI (installed by the test command with pip) against `envol kms
//! serve`, with a profile written by `envol kms user add --profile`.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::{KmsServer, envol, run_ok};

fn aws(home: &Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new("aws")
        .args(args)
        .args([
            "--profile",
            "demo",
            "--endpoint-url",
            endpoint,
            "--output",
            "json",
        ])
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("the AWS CLI (`aws`) must be installed: pip install awscli")
}

fn aws_ok(home: &Path, endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = aws(home, endpoint, args);
    assert!(
        out.status.success(),
        "aws {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn aws_cli_create_key_alias_encrypt_decrypt_generate_data_key() {
    let kms = KmsServer::start();
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(
        envol()
            .args([
                "kms",
                "user",
                "add",
                "myadmin",
                "--profile",
                "demo",
                "--data",
            ])
            .arg(kms.data())
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.path().join("credentials"),
            )
            .env("AWS_CONFIG_FILE", home.path().join("config")),
    );
    assert!(out.contains("Wrote profile demo"), "{out}");
    let config = std::fs::read_to_string(home.path().join("config")).unwrap();
    assert!(config.contains("[profile demo]") && config.contains("region = us-east-1"));

    let key = aws_ok(
        home.path(),
        &kms.endpoint,
        &["kms", "create-key", "--description", "cli key"],
    );
    let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    aws_ok(
        home.path(),
        &kms.endpoint,
        &[
            "kms",
            "create-alias",
            "--alias-name",
            "alias/DemoKey",
            "--target-key-id",
            &key_id,
        ],
    );

    let plain = home.path().join("plain.txt");
    std::fs::write(&plain, b"hello from the AWS CLI").unwrap();
    let enc = aws_ok(
        home.path(),
        &kms.endpoint,
        &[
            "kms",
            "encrypt",
            "--key-id",
            "alias/DemoKey",
            "--plaintext",
            &format!("fileb://{}", plain.display()),
            "--encryption-context",
            "purpose=test",
        ],
    );
    assert_eq!(enc["KeyId"].as_str(), Some(arn.as_str()));
    let blob = base64::engine::general_purpose::STANDARD
        .decode(enc["CiphertextBlob"].as_str().unwrap())
        .unwrap();
    let blob_file = home.path().join("blob.bin");
    std::fs::write(&blob_file, &blob).unwrap();
    let dec = aws_ok(
        home.path(),
        &kms.endpoint,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob_file.display()),
            "--encryption-context",
            "purpose=test",
        ],
    );
    let got = base64::engine::general_purpose::STANDARD
        .decode(dec["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, b"hello from the AWS CLI");

    // Wrong context: the CLI reports InvalidCiphertextException and fails.
    let bad = aws(
        home.path(),
        &kms.endpoint,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob_file.display()),
            "--encryption-context",
            "purpose=other",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidCiphertextException"));

    let gdk = aws_ok(
        home.path(),
        &kms.endpoint,
        &[
            "kms",
            "generate-data-key",
            "--key-id",
            "alias/DemoKey",
            "--number-of-bytes",
            "64",
        ],
    );
    let pt = base64::engine::general_purpose::STANDARD
        .decode(gdk["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(pt.len(), 64);
    assert!(gdk["CiphertextBlob"].as_str().is_some());

    let aliases = aws_ok(home.path(), &kms.endpoint, &["kms", "list-aliases"]);
    assert!(
        aliases["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["AliasName"] == "alias/DemoKey" && a["TargetKeyId"] == key_id.as_str())
    );
}
