//! Grants, driven by the official `aws-sdk-kms` crate against a real
//! `envol kms serve`: a grantee the key policy does not name decrypts through
//! a grant whose constraint the context satisfies, is refused otherwise, and
//! loses access when the grant is retired or revoked; an explicit deny in the
//! key policy beats any grant; grants made through a grant cannot widen it.

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{GrantConstraints, GrantOperation};
use common::{KmsServer, create_key_arn, error_code};
use serde_json::{Value, json};

fn subset(pairs: &[(&str, &str)]) -> GrantConstraints {
    let mut b = GrantConstraints::builder();
    for (k, v) in pairs {
        b = b.encryption_context_subset(*k, *v);
    }
    b.build()
}

async fn blob_for(c: &aws_sdk_kms::Client, arn: &str, pairs: &[(&str, &str)]) -> Blob {
    let mut req = c
        .encrypt()
        .key_id(arn)
        .plaintext(Blob::new(b"data key".to_vec()));
    for (k, v) in pairs {
        req = req.encryption_context(*k, *v);
    }
    req.send().await.unwrap().ciphertext_blob().unwrap().clone()
}

async fn decrypt(
    c: &aws_sdk_kms::Client,
    blob: &Blob,
    pairs: &[(&str, &str)],
    token: Option<&str>,
) -> Result<(), String> {
    let mut req = c.decrypt().ciphertext_blob(blob.clone());
    for (k, v) in pairs {
        req = req.encryption_context(*k, *v);
    }
    if let Some(t) = token {
        req = req.grant_tokens(t);
    }
    match req.send().await {
        Ok(out) => {
            assert_eq!(out.plaintext().unwrap().as_ref(), b"data key");
            Ok(())
        }
        Err(e) => Err(error_code(&e)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_give_retire_and_revoke_access() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let alice = kms.client(&kms.add_user("alice"));
    let bob = kms.client(&kms.add_user("bob"));
    let (alice_arn, bob_arn) = (kms.user_arn("alice"), kms.user_arn("bob"));
    let arn = create_key_arn(&root).await;

    let v1 = [("envol:volume", "v1")];
    let v1_more = [("envol:volume", "v1"), ("envol:host", "h")];
    let v2 = [("envol:volume", "v2")];
    let b1 = blob_for(&root, &arn, &v1).await;
    let b1_more = blob_for(&root, &arn, &v1_more).await;
    let b2 = blob_for(&root, &arn, &v2).await;

    // Not in the key policy: refused.
    assert_eq!(
        decrypt(&alice, &b1, &v1, None).await.unwrap_err(),
        "AccessDeniedException"
    );

    let g = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .retiring_principal(&bob_arn)
        .operations(GrantOperation::Decrypt)
        .constraints(subset(&v1))
        .name("volume-v1")
        .send()
        .await
        .unwrap();
    let grant_id = g.grant_id().unwrap().to_string();
    let token = g.grant_token().unwrap().to_string();
    assert_eq!(grant_id.len(), 64);

    // The same named grant again is the same grant (idempotent CreateGrant).
    let again = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .retiring_principal(&bob_arn)
        .operations(GrantOperation::Decrypt)
        .constraints(subset(&v1))
        .name("volume-v1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.grant_id(), Some(grant_id.as_str()));

    // The grant works at once, with or without its token; only for contexts
    // that contain the constraint's pairs; only for the granted operation.
    decrypt(&alice, &b1, &v1, Some(&token)).await.unwrap();
    decrypt(&alice, &b1, &v1, None).await.unwrap();
    decrypt(&alice, &b1_more, &v1_more, None).await.unwrap();
    assert_eq!(
        decrypt(&alice, &b2, &v2, None).await.unwrap_err(),
        "AccessDeniedException"
    );
    let e = alice
        .encrypt()
        .key_id(&arn)
        .plaintext(Blob::new(b"x".to_vec()))
        .encryption_context("envol:volume", "v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");
    // A malformed grant token is refused; a well-formed unknown one is not.
    assert_eq!(
        decrypt(&alice, &b1, &v1, Some("not a token!"))
            .await
            .unwrap_err(),
        "InvalidGrantTokenException"
    );
    decrypt(&alice, &b1, &v1, Some("AQpAM2RhZTk1MGMy"))
        .await
        .unwrap();

    // ListGrants (needs kms:ListGrants: root yes, alice no).
    let list = root.list_grants().key_id(&arn).send().await.unwrap();
    assert_eq!(list.grants().len(), 1);
    let entry = &list.grants()[0];
    assert_eq!(entry.grant_id(), Some(grant_id.as_str()));
    assert_eq!(entry.key_id(), Some(arn.as_str()));
    assert_eq!(entry.name(), Some("volume-v1"));
    assert_eq!(entry.grantee_principal(), Some(alice_arn.as_str()));
    assert_eq!(entry.retiring_principal(), Some(bob_arn.as_str()));
    assert_eq!(
        entry.issuing_account(),
        Some(format!("arn:aws:iam::{}:root", kms.account_id).as_str())
    );
    assert_eq!(entry.operations(), &[GrantOperation::Decrypt]);
    assert_eq!(
        entry
            .constraints()
            .and_then(|c| c.encryption_context_subset())
            .and_then(|m| m.get("envol:volume"))
            .map(String::as_str),
        Some("v1")
    );
    assert!(entry.creation_date().is_some());
    let filtered = root
        .list_grants()
        .key_id(&arn)
        .grantee_principal(&bob_arn)
        .send()
        .await
        .unwrap();
    assert!(filtered.grants().is_empty());
    let e = alice.list_grants().key_id(&arn).send().await.unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");

    // ListRetirableGrants: bob sees what he may retire; alice may not look.
    let r = bob
        .list_retirable_grants()
        .retiring_principal(&bob_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(r.grants().len(), 1);
    let e = alice
        .list_retirable_grants()
        .retiring_principal(&bob_arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");

    // RetireGrant: not by the grantee (no RetireGrant operation), by the
    // retiring principal with the token.
    let e = alice
        .retire_grant()
        .grant_token(&token)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");
    bob.retire_grant().grant_token(&token).send().await.unwrap();
    assert_eq!(
        decrypt(&alice, &b1, &v1, None).await.unwrap_err(),
        "AccessDeniedException"
    );
    let e = bob
        .retire_grant()
        .grant_token(&token)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");

    // RevokeGrant: needs kms:RevokeGrant by the key policy.
    let g = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::Decrypt)
        .operations(GrantOperation::RetireGrant)
        .send()
        .await
        .unwrap();
    let id2 = g.grant_id().unwrap().to_string();
    decrypt(&alice, &b2, &v2, None)
        .await
        .expect("no constraint");
    let e = alice
        .revoke_grant()
        .key_id(&arn)
        .grant_id(&id2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");
    root.revoke_grant()
        .key_id(&arn)
        .grant_id(&id2)
        .send()
        .await
        .unwrap();
    assert_eq!(
        decrypt(&alice, &b2, &v2, None).await.unwrap_err(),
        "AccessDeniedException"
    );
    let e = root
        .revoke_grant()
        .key_id(&arn)
        .grant_id("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "InvalidGrantIdException");

    // A grantee holding RetireGrant retires its own grant by key and id.
    let g = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::RetireGrant)
        .send()
        .await
        .unwrap();
    alice
        .retire_grant()
        .key_id(&arn)
        .grant_id(g.grant_id().unwrap())
        .send()
        .await
        .unwrap();
    let left = root.list_grants().key_id(&arn).send().await.unwrap();
    assert!(left.grants().is_empty());

    // Bad requests.
    let e = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::from("Frobnicate"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ValidationException");
    let e = root
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::Decrypt)
        .dry_run(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "DryRunOperationException");
    assert!(
        root.list_grants()
            .key_id(&arn)
            .send()
            .await
            .unwrap()
            .grants()
            .is_empty(),
        "a dry run creates nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_deny_beats_a_grant() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let alice = kms.client(&kms.add_user("alice"));
    let alice_arn = kms.user_arn("alice");
    let arn = create_key_arn(&root).await;
    let blob = blob_for(&root, &arn, &[]).await;
    root.create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::Decrypt)
        .send()
        .await
        .unwrap();
    decrypt(&alice, &blob, &[], None).await.unwrap();

    let policy = root
        .get_key_policy()
        .key_id(&arn)
        .policy_name("default")
        .send()
        .await
        .unwrap();
    let mut doc: Value = serde_json::from_str(policy.policy().unwrap()).unwrap();
    doc["Statement"].as_array_mut().unwrap().push(json!({
        "Sid": "NoAlice",
        "Effect": "Deny",
        "Principal": {"AWS": alice_arn},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }));
    root.put_key_policy()
        .key_id(&arn)
        .policy_name("default")
        .policy(doc.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        decrypt(&alice, &blob, &[], None).await.unwrap_err(),
        "AccessDeniedException"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_made_through_a_grant_cannot_widen_it() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let alice = kms.client(&kms.add_user("alice"));
    let carol = kms.client(&kms.add_user("carol"));
    let (alice_arn, carol_arn) = (kms.user_arn("alice"), kms.user_arn("carol"));
    let arn = create_key_arn(&root).await;
    root.create_grant()
        .key_id(&arn)
        .grantee_principal(&alice_arn)
        .operations(GrantOperation::Decrypt)
        .operations(GrantOperation::CreateGrant)
        .constraints(subset(&[("envol:volume", "v1")]))
        .send()
        .await
        .unwrap();

    let narrower = [("envol:volume", "v1"), ("envol:host", "h")];
    alice
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&carol_arn)
        .operations(GrantOperation::Decrypt)
        .constraints(subset(&narrower))
        .send()
        .await
        .expect("an equally strict or stricter grant");
    let blob = blob_for(&root, &arn, &narrower).await;
    decrypt(&carol, &blob, &narrower, None).await.unwrap();

    for (ops, constraint) in [
        (vec![GrantOperation::Encrypt], Some(subset(&narrower))),
        (vec![GrantOperation::Decrypt], None),
        (
            vec![GrantOperation::Decrypt],
            Some(subset(&[("envol:volume", "v2")])),
        ),
    ] {
        let e = alice
            .create_grant()
            .key_id(&arn)
            .grantee_principal(&carol_arn)
            .set_operations(Some(ops))
            .set_constraints(constraint)
            .send()
            .await
            .unwrap_err();
        assert_eq!(error_code(&e), "AccessDeniedException");
    }
}

/// The AWS CLI, as users drive grants: create-grant with a constraint,
/// list-grants, a grantee decrypting, retire-grant by token, revoke-grant.
#[test]
fn aws_cli_grants() {
    let kms = KmsServer::start();
    let alice = kms.add_user("alice");
    let alice_arn = kms.user_arn("alice");
    let work = tempfile::tempdir().unwrap();
    let aws = |creds: &common::Creds, args: &[&str]| -> Result<Value, String> {
        let out = std::process::Command::new("aws")
            .arg("kms")
            .args(args)
            .args(["--endpoint-url", &kms.endpoint, "--output", "json"])
            .args(["--region", common::REGION])
            .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
            .env("AWS_CONFIG_FILE", work.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", work.path().join("none"))
            .env_remove("AWS_PROFILE")
            .output()
            .expect("the AWS CLI (`aws`) must be installed: pip install awscli");
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let root = &kms.root;
    let key = aws(root, &["create-key"]).unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = work.path().join("plain");
    std::fs::write(&plain, b"secret").unwrap();
    let blob = aws(
        root,
        &[
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            &format!("fileb://{}", plain.display()),
            "--encryption-context",
            "envol:volume=v1",
        ],
    )
    .unwrap()["CiphertextBlob"]
        .as_str()
        .unwrap()
        .to_string();
    let blob_file = work.path().join("blob");
    std::fs::write(
        &blob_file,
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &blob).unwrap(),
    )
    .unwrap();
    let blob_arg = format!("fileb://{}", blob_file.display());
    let decrypt = |creds: &common::Creds| {
        aws(
            creds,
            &[
                "decrypt",
                "--ciphertext-blob",
                &blob_arg,
                "--encryption-context",
                "envol:volume=v1",
            ],
        )
    };
    assert!(
        decrypt(&alice)
            .unwrap_err()
            .contains("AccessDeniedException")
    );

    let g = aws(
        root,
        &[
            "create-grant",
            "--key-id",
            &key,
            "--grantee-principal",
            &alice_arn,
            "--operations",
            "Decrypt",
            "DescribeKey",
            "--constraints",
            r#"{"EncryptionContextSubset":{"envol:volume":"v1"}}"#,
            "--name",
            "cli-grant",
        ],
    )
    .unwrap();
    let token = g["GrantToken"].as_str().unwrap().to_string();
    let grant_id = g["GrantId"].as_str().unwrap().to_string();
    decrypt(&alice).expect("decrypt through the grant");
    aws(
        &alice,
        &["describe-key", "--key-id", &key, "--grant-tokens", &token],
    )
    .expect("DescribeKey through the grant (constraints do not apply to it)");

    let list = aws(root, &["list-grants", "--key-id", &key]).unwrap();
    let grants = list["Grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["GrantId"], grant_id.as_str());
    assert_eq!(grants[0]["Operations"], json!(["Decrypt", "DescribeKey"]));
    assert_eq!(
        grants[0]["Constraints"],
        json!({"EncryptionContextSubset": {"envol:volume": "v1"}})
    );

    // Retire by token as the account root; the grantee is refused again.
    aws(root, &["retire-grant", "--grant-token", &token]).unwrap();
    assert!(
        decrypt(&alice)
            .unwrap_err()
            .contains("AccessDeniedException")
    );

    let g = aws(
        root,
        &[
            "create-grant",
            "--key-id",
            &key,
            "--grantee-principal",
            &alice_arn,
            "--operations",
            "Decrypt",
        ],
    )
    .unwrap();
    decrypt(&alice).unwrap();
    aws(
        root,
        &[
            "revoke-grant",
            "--key-id",
            &key,
            "--grant-id",
            g["GrantId"].as_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(
        decrypt(&alice)
            .unwrap_err()
            .contains("AccessDeniedException")
    );
    let err = aws(
        root,
        &[
            "create-grant",
            "--key-id",
            &key,
            "--grantee-principal",
            &alice_arn,
            "--operations",
            "Decrypt",
            "--grant-tokens",
            "not a token!",
        ],
    )
    .unwrap_err();
    assert!(err.contains("InvalidGrantTokenException"), "{err}");
}
