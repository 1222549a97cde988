//! ReEncrypt with the official `aws-sdk-kms` crate against a real
//! `envol kms serve`: moving a ciphertext between keys and contexts, the
//! ReEncryptFrom/ReEncryptTo permission split, and re-wrapping under the
//! newest version of the same key after a rotation.

mod common;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::GrantOperation;
use common::{KmsServer, allow_in_key_policy, create_key_arn, error_code};
use envol::kms::blob::parse_header;

#[tokio::test(flavor = "multi_thread")]
async fn re_encrypt_between_keys_and_contexts() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let src = create_key_arn(&root).await;
    let dst = create_key_arn(&root).await;
    let blob = root
        .encrypt()
        .key_id(&src)
        .plaintext(Blob::new(b"the data key".to_vec()))
        .encryption_context("envol:volume", "v1")
        .send()
        .await
        .unwrap()
        .ciphertext_blob()
        .unwrap()
        .clone();

    let out = root
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_encryption_context("envol:volume", "v1")
        .destination_key_id(&dst)
        .destination_encryption_context("envol:volume", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(out.source_key_id(), Some(src.as_str()));
    assert_eq!(out.key_id(), Some(dst.as_str()));
    assert_eq!(
        out.source_encryption_algorithm().map(|a| a.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    assert_eq!(
        out.destination_encryption_algorithm().map(|a| a.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    let moved = out.ciphertext_blob().unwrap().clone();
    let d = root
        .decrypt()
        .ciphertext_blob(moved.clone())
        .encryption_context("envol:volume", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(d.key_id(), Some(dst.as_str()));
    assert_eq!(d.plaintext().unwrap().as_ref(), b"the data key");
    let e = root
        .decrypt()
        .ciphertext_blob(moved)
        .encryption_context("envol:volume", "v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&e),
        "InvalidCiphertextException",
        "the new context binds"
    );

    // Wrong source context, wrong SourceKeyId, missing destination, dry run.
    let re = || {
        root.re_encrypt()
            .ciphertext_blob(blob.clone())
            .source_encryption_context("envol:volume", "v1")
            .destination_key_id(&dst)
    };
    let e = root
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_encryption_context("envol:volume", "other")
        .destination_key_id(&dst)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "InvalidCiphertextException");
    let e = re().source_key_id(&dst).send().await.unwrap_err();
    assert_eq!(error_code(&e), "IncorrectKeyException");
    re().source_key_id(&src)
        .send()
        .await
        .expect("matching SourceKeyId");
    let e = re().dry_run(true).send().await.unwrap_err();
    assert_eq!(error_code(&e), "DryRunOperationException");

    // A disabled destination refuses.
    root.disable_key().key_id(&dst).send().await.unwrap();
    let e = re().send().await.unwrap_err();
    assert_eq!(error_code(&e), "DisabledException");
    root.enable_key().key_id(&dst).send().await.unwrap();

    // Permission split: ReEncryptFrom on the source alone is not enough.
    let mover = kms.client(&kms.add_user("mover"));
    let mover_arn = kms.user_arn("mover");
    allow_in_key_policy(&root, &src, &mover_arn, &["kms:ReEncryptFrom"]).await;
    let by_mover = || {
        mover
            .re_encrypt()
            .ciphertext_blob(blob.clone())
            .source_encryption_context("envol:volume", "v1")
            .destination_key_id(&dst)
            .destination_encryption_context("envol:volume", "v2")
            .send()
    };
    let e = by_mover().await.unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");
    assert!(
        e.message().unwrap_or("").contains("kms:ReEncryptTo"),
        "names the missing permission: {:?}",
        e.message()
    );
    // ReEncryptTo on the destination through a grant completes it.
    root.create_grant()
        .key_id(&dst)
        .grantee_principal(&mover_arn)
        .operations(GrantOperation::ReEncryptTo)
        .send()
        .await
        .unwrap();
    by_mover()
        .await
        .expect("ReEncryptFrom by policy + ReEncryptTo by grant");
    // ...and a destination the mover holds nothing on is refused.
    let e = mover
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_encryption_context("envol:volume", "v1")
        .destination_key_id(&src)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "AccessDeniedException");
}

#[tokio::test(flavor = "multi_thread")]
async fn re_encrypt_under_the_newest_version_after_rotations() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let key = create_key_arn(&root).await;
    let blob = root
        .generate_data_key_without_plaintext()
        .key_id(&key)
        .number_of_bytes(64)
        .send()
        .await
        .unwrap()
        .ciphertext_blob()
        .unwrap()
        .clone();
    assert_eq!(parse_header(blob.as_ref()).unwrap().key_version, 1);
    for _ in 0..3 {
        root.rotate_key_on_demand()
            .key_id(&key)
            .send()
            .await
            .unwrap();
    }
    let out = root
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .destination_key_id(&key)
        .send()
        .await
        .unwrap();
    let rewrapped = out.ciphertext_blob().unwrap().clone();
    assert_eq!(parse_header(rewrapped.as_ref()).unwrap().key_version, 4);
    let a = root.decrypt().ciphertext_blob(blob).send().await.unwrap();
    let b = root
        .decrypt()
        .ciphertext_blob(rewrapped)
        .send()
        .await
        .unwrap();
    assert_eq!(
        a.plaintext(),
        b.plaintext(),
        "same data key, newer wrapping"
    );
}
