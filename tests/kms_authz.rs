//! Authorization that never fails open, through boto3 against `envol kms
//! serve` (`tests/python/boto3_authz.py`), each refusal checked by the AWS
//! error code: empty grant constraints, duplicate keys in a policy,
//! `alias/AWS/…`, a user re-created under an old name, and
//! `aws:SecureTransport` over plain HTTP and over TLS.

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::{
    Creds, KmsServer, envol, parse_account, parse_creds, run_ok, spawn_kms_serve,
    spawn_kms_serve_tls,
};

/// Runs one phase of the boto3 script; it must print `marker`.
fn boto3(args: &[&str], marker: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/boto3_authz.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "boto3 {} failed (is boto3 installed? pip install boto3):\n{}{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(marker),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `kms user list --json`: the unique id of `name`.
fn user_id(data: &Path, name: &str) -> String {
    let out = run_ok(
        envol()
            .args(["kms", "user", "list", "--json", "--data"])
            .arg(data),
    );
    let list: serde_json::Value = serde_json::from_str(&out).expect("user list --json is JSON");
    let users = list.as_array().expect("an array");
    let user = users
        .iter()
        .find(|u| u["UserName"] == name)
        .unwrap_or_else(|| panic!("no {name} in {out}"));
    user["UserId"].as_str().unwrap().to_string()
}

#[test]
fn empty_constraints_duplicate_keys_and_reserved_aliases_are_refused() {
    let kms = KmsServer::start();
    boto3(
        &[
            "refusals",
            &kms.endpoint,
            &kms.root.access_key_id,
            &kms.root.secret,
            &kms.account_id,
        ],
        "boto3 authz refusals: ok",
    );
}

#[test]
fn a_user_recreated_under_an_old_name_gets_nothing_of_the_old_ones() {
    let kms = KmsServer::start();
    let state = kms.dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let phase = |phase: &str, alice: &Creds| {
        boto3(
            &[
                phase,
                &kms.endpoint,
                &kms.root.access_key_id,
                &kms.root.secret,
                &kms.account_id,
                &alice.access_key_id,
                &alice.secret,
                state,
            ],
            &format!("boto3 authz {phase}: ok"),
        );
    };
    let alice = kms.add_user("alice");
    let old_id = user_id(&kms.data(), "alice");
    assert!(old_id.starts_with("AIDA") && old_id.len() == 21, "{old_id}");
    assert_eq!(user_id(&kms.data(), "root"), kms.account_id);
    // The text listing shows the id too.
    let text = run_ok(
        envol()
            .args(["kms", "user", "list", "--data"])
            .arg(kms.data()),
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("alice\t{old_id}\t"))),
        "{text}"
    );
    phase("before", &alice);

    // Removed and re-created while the server runs (another process).
    run_ok(
        envol()
            .args(["kms", "user", "remove", "alice", "--data"])
            .arg(kms.data()),
    );
    let alice = kms.add_user("alice");
    let new_id = user_id(&kms.data(), "alice");
    assert_ne!(new_id, old_id);
    phase("after", &alice);
}

/// Kills the servers it holds when the test ends, passing or not.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn secure_transport_deny_applies_to_plain_http_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kms");
    let out = run_ok(
        envol()
            .args(["kms", "init", "--self-signed-cert", "--data"])
            .arg(&data),
    );
    let root = parse_creds(&out);
    let account = parse_account(&out);
    // One data directory served twice: over TLS and over plain HTTP.
    let (tls, https) = spawn_kms_serve_tls(&data);
    let mut servers = Servers(vec![tls]);
    let (plain, http) = spawn_kms_serve(&data);
    servers.0.push(plain);
    let ca = data.join("tls/cert.pem");
    boto3(
        &[
            "secure-transport",
            &https,
            &http,
            ca.to_str().unwrap(),
            &root.access_key_id,
            &root.secret,
            &account,
        ],
        "boto3 authz secure transport: ok",
    );
    drop(servers);
}
