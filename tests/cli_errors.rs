//! What a newcomer sees when the KMS is down or no credentials are
//! configured: one line that says what is wrong and what to do, from every
//! command that talks to a KMS — never an SDK `Debug` dump, never a probe of
//! the EC2 metadata service, never a request toward real AWS.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::volume::{Fixture, assert_one_clean_line, run_fails, run_ok};

/// A loopback URL where nothing listens.
fn dead_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// Every `envol key` subcommand, with the arguments it needs.
const KEY_COMMANDS: &[&[&str]] = &[
    &["key", "create", "--alias", "x"],
    &["key", "list"],
    &["key", "describe", "alias/DemoKey"],
    &["key", "enable", "alias/DemoKey"],
    &["key", "disable", "alias/DemoKey"],
    &["key", "schedule-deletion", "alias/DemoKey", "--days", "7"],
    &["key", "cancel-deletion", "alias/DemoKey"],
    &["key", "rotate", "alias/DemoKey"],
    &["key", "enable-rotation", "alias/DemoKey"],
];

/// `envol key`, `volume create|rewrap` and `serve` against a KMS that is
/// down, with a working profile otherwise.
fn commands_against(fx: &Fixture, endpoint: &str) -> Vec<Command> {
    let vol = fx.create_volume("v.vol", 4 << 20, 4096);
    let vol = vol.path.to_str().unwrap().to_string();
    let new_vol = fx.path("new.vol");
    let new_vol = new_vol.to_str().unwrap();
    let sock = fx.path("s.sock");
    let sock = sock.to_str().unwrap();
    let mut all: Vec<Vec<&str>> = KEY_COMMANDS.iter().map(|c| c.to_vec()).collect();
    all.push(vec![
        "volume",
        "create",
        new_vol,
        "--size",
        "4M",
        "--key",
        "alias/DemoKey",
    ]);
    all.push(vec!["volume", "rewrap", &vol]);
    all.push(vec!["serve", &vol, "--socket", sock]);
    all.iter()
        .map(|args| {
            let mut cmd = fx.envol(args);
            cmd.args(["--endpoint", endpoint, "--profile", common::volume::ADMIN]);
            cmd
        })
        .collect()
}

#[test]
fn kms_down_is_one_line_naming_the_endpoint_from_every_command() {
    let fx = Fixture::new();
    let endpoint = dead_endpoint();
    for mut cmd in commands_against(&fx, &endpoint) {
        let what = format!("{cmd:?}");
        let (_, stderr) = run_fails(&mut cmd);
        assert_one_clean_line(&what, &stderr);
        assert!(
            stderr.contains(&format!("cannot reach the KMS at {endpoint}")),
            "{what}: {stderr}"
        );
        assert!(stderr.contains("Connection refused"), "{what}: {stderr}");
        for dump in ["DispatchFailure", "ConnectorError", "{ ", "os error"] {
            assert!(!stderr.contains(dump), "{what}: {dump:?} in {stderr}");
        }
    }
    // Nothing was created by the failed `volume create`.
    assert!(!fx.path("new.vol").exists());
}

/// `envol ARGS` with no credentials anywhere: an empty HOME, AWS files that
/// do not exist, no AWS_* variables.
fn without_credentials(home: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = common::envol();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    // On an EC2 instance with a role, that role would be credentials: say
    // no to the metadata service as a user without credentials would.
    cmd.env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("nothing/credentials"),
        )
        .env("AWS_CONFIG_FILE", home.join("nothing/config"))
        .env_remove("ENVOL_LOG")
        .args(args);
    cmd
}

#[test]
fn no_credentials_fails_at_once_naming_where_to_get_them() {
    let home = tempfile::tempdir().unwrap();
    let vol = home.path().join("v.vol");
    let vol = vol.to_str().unwrap();
    let mut commands: Vec<Vec<&str>> = KEY_COMMANDS.iter().map(|c| c.to_vec()).collect();
    commands.push(vec![
        "volume", "create", vol, "--size", "4M", "--key", "alias/k",
    ]);
    for args in &commands {
        // No endpoint either: the message says where requests would go.
        let started = Instant::now();
        let (_, stderr) = run_fails(&mut without_credentials(home.path(), args));
        let elapsed = started.elapsed();
        let what = format!("envol {args:?}");
        assert_one_clean_line(&what, &stderr);
        for needle in [
            "no AWS credentials",
            "--profile",
            "AWS_PROFILE",
            "envol-up",
            "would go to AWS KMS",
            "--endpoint",
        ] {
            assert!(stderr.contains(needle), "{what}: no {needle:?} in {stderr}");
        }
        assert!(!stderr.contains("IMDS"), "{what}: {stderr}");
        assert!(elapsed < Duration::from_secs(5), "{what}: took {elapsed:?}");

        // With an endpoint: still no credentials, but no word about AWS.
        let mut cmd = without_credentials(home.path(), args);
        cmd.args(["--endpoint", "http://127.0.0.1:9"]);
        let (_, stderr) = run_fails(&mut cmd);
        assert_one_clean_line(&what, &stderr);
        assert!(stderr.contains("no AWS credentials"), "{what}: {stderr}");
        assert!(!stderr.contains("would go to AWS KMS"), "{what}: {stderr}");
    }
    assert!(!home.path().join("v.vol").exists());

    // A profile that does not exist is named.
    let (_, stderr) = run_fails(&mut without_credentials(
        home.path(),
        &["key", "list", "--profile", "nosuch"],
    ));
    assert_one_clean_line("--profile nosuch", &stderr);
    assert!(stderr.contains("nosuch"), "{stderr}");
}

#[test]
fn a_wrong_secret_is_one_line_with_the_kms_code() {
    let fx = Fixture::new();
    // A profile with myadmin's key id and a wrong secret.
    let creds = fx.aws_home.path().join("credentials");
    let text = std::fs::read_to_string(&creds).unwrap();
    let forged = text
        .lines()
        .map(|l| {
            if l.starts_with("aws_secret_access_key") {
                "aws_secret_access_key = 0000000000000000000000000000000000000000".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&creds, forged).unwrap();
    let mut cmd = fx.envol(&["key", "list"]);
    cmd.args(["--endpoint", &fx.kms.endpoint, "--profile", "myadmin"]);
    let (_, stderr) = run_fails(&mut cmd);
    assert_one_clean_line("wrong secret", &stderr);
    assert!(stderr.contains("InvalidSignatureException"), "{stderr}");
    assert!(stderr.contains("check the credentials"), "{stderr}");
    // The right secret, for contrast, works.
    std::fs::write(&creds, text).unwrap();
    run_ok(&mut cmd);
}
