//! A data directory written by schema version 1 (before principal ids; see
//! `tests/fixtures/kms-schema-v1/`) opens with this envol: every principal
//! gets its unique id, key policies and grants are bound to the principals
//! they named, the version becomes 2 — and from then on a user removed and
//! re-created under the same name gets nothing of the old one's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envol::kms::RequestContext;
use envol::kms::clock::SystemClock;
use envol::kms::datadir::DataDir;
use envol::kms::iam::{Principal, is_user_id};
use envol::kms::service::Kms;
use serde_json::{Value, json};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms-schema-v1");

/// A private copy of the fixture's data directory, with the modes envol
/// requires (git keeps none).
fn copy_fixture(tmp: &Path) -> PathBuf {
    let dir = tmp.join("kms");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for name in ["kms.db", "root.key", "audit.log"] {
        let to = dir.join(name);
        std::fs::copy(Path::new(FIXTURE).join("data").join(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn schema_version(dir: &Path) -> String {
    let c = rusqlite::Connection::open(dir.join("kms.db")).unwrap();
    let v: Vec<u8> = c
        .query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    String::from_utf8(v).unwrap()
}

fn open(dir: &Path) -> Kms {
    Kms::open(&DataDir::new(dir), Arc::new(SystemClock)).expect("open the data directory")
}

/// Runs one operation as `principal`; an error becomes its AWS type.
fn call(kms: &Kms, principal: &Principal, op: &str, body: Value) -> Result<Value, String> {
    let ctx = RequestContext {
        principal: principal.clone(),
        request_id: "migration-test".into(),
        source: None,
        secure_transport: false,
    };
    kms.handle(&ctx, op, body.to_string().as_bytes())
        .map_err(|e| e.kind.aws_type().to_string())
}

fn principal_of(kms: &Kms, access_key_id: &str) -> Principal {
    kms.credentials(access_key_id)
        .unwrap()
        .expect("the fixture's access key exists")
        .0
}

#[test]
fn a_version_1_directory_is_migrated_and_bound_to_principal_ids() {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("state.json")).unwrap(),
    )
    .unwrap();
    let s = |k: &str| state[k].as_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    assert_eq!(
        schema_version(&dir),
        "1",
        "the fixture is a version-1 directory"
    );

    let kms = open(&dir);
    assert_eq!(schema_version(&dir), "2");
    let principals = kms.list_principals().unwrap();
    assert_eq!(principals.len(), 3, "{principals:?}");
    for p in &principals {
        if p.name == "root" {
            assert_eq!(p.id, s("account"), "the root's id is the account id");
        } else {
            assert!(is_user_id(&p.id), "{} got {:?}", p.name, p.id);
        }
    }
    let ids: Vec<String> = principals.iter().map(|p| p.id.clone()).collect();

    // What version 1 allowed still works: the policy names alice, the
    // grant bob, and both were bound to them.
    let ctx = &state["context"];
    let decrypt = |blob: &str| json!({"CiphertextBlob": s(blob), "EncryptionContext": ctx});
    let alice = principal_of(&kms, &s("alice_access_key_id"));
    let bob = principal_of(&kms, &s("bob_access_key_id"));
    assert!(call(&kms, &alice, "Decrypt", decrypt("policy_blob")).is_ok());
    assert!(call(&kms, &bob, "Decrypt", decrypt("grant_blob")).is_ok());
    assert!(call(&kms, &bob, "DescribeKey", json!({"KeyId": s("grant_key")})).is_ok());
    // ... and what it did not allow still does not.
    assert_eq!(
        call(&kms, &bob, "Decrypt", decrypt("policy_blob")).unwrap_err(),
        "AccessDeniedException"
    );
    drop(kms);

    // Opening again changes nothing: the ids stay.
    let kms = open(&dir);
    let again: Vec<String> = kms
        .list_principals()
        .unwrap()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(again, ids);

    // Alice and bob removed and re-created: same names and ARNs, new ids,
    // none of the old ones' policy statements or grants.
    for name in ["alice", "bob"] {
        kms.remove_user(name).unwrap();
    }
    let (new_alice, _) = kms.add_user("alice").unwrap();
    let (new_bob, _) = kms.add_user("bob").unwrap();
    assert_eq!(new_alice.arn, alice.arn);
    assert_ne!(new_alice.id, alice.id);
    assert_eq!(
        call(&kms, &new_alice, "Decrypt", decrypt("policy_blob")).unwrap_err(),
        "AccessDeniedException"
    );
    assert_eq!(
        call(
            &kms,
            &new_alice,
            "DescribeKey",
            json!({"KeyId": s("policy_key")})
        )
        .unwrap_err(),
        "AccessDeniedException"
    );
    assert_eq!(
        call(&kms, &new_bob, "Decrypt", decrypt("grant_blob")).unwrap_err(),
        "AccessDeniedException"
    );
    // The old grant is still listed under bob's ARN, but serves nobody,
    // and the new alice cannot retire it as its retiring principal.
    let root = kms.root_principal();
    let grants = call(&kms, &root, "ListGrants", json!({"KeyId": s("grant_key")})).unwrap();
    assert_eq!(grants["Grants"][0]["GrantId"], state["grant_id"]);
    assert_eq!(grants["Grants"][0]["GranteePrincipal"], json!(bob.arn));
    assert_eq!(
        call(
            &kms,
            &new_alice,
            "RetireGrant",
            json!({"KeyId": s("grant_key"), "GrantId": s("grant_id")})
        )
        .unwrap_err(),
        "AccessDeniedException"
    );
}
