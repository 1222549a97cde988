//! The KMS driven by the official `aws-sdk-kms` crate against a real
//! `envol kms serve` process.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use common::{Creds, KmsServer, error_code, sdk_client};

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create_key_with_alias(client: &aws_sdk_kms::Client, alias: &str) -> String {
    let key = client
        .create_key()
        .description("test key")
        .send()
        .await
        .expect("CreateKey");
    let meta = key.key_metadata().expect("metadata");
    assert_eq!(meta.key_state().map(|s| s.as_str()), Some("Enabled"));
    let arn = meta.arn().expect("arn").to_string();
    client
        .create_alias()
        .alias_name(alias)
        .target_key_id(meta.key_id())
        .send()
        .await
        .expect("CreateAlias");
    arn
}

#[tokio::test(flavor = "multi_thread")]
async fn data_key_round_trip_and_context_binding() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let arn = create_key_with_alias(&root, "alias/DemoKey").await;

    let c = ctx(&[("envol:volume", "1b4e28ba-2fa1-11d2-883f-0016a3cacafe")]);
    let generated = root
        .generate_data_key_without_plaintext()
        .key_id("alias/DemoKey")
        .number_of_bytes(64)
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect("GenerateDataKeyWithoutPlaintext");
    assert_eq!(
        generated.key_id(),
        Some(arn.as_str()),
        "KeyId is the key ARN"
    );
    let blob = generated.ciphertext_blob().expect("blob").clone();

    let dec = root
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect("Decrypt with the same context");
    assert_eq!(dec.plaintext().expect("plaintext").as_ref().len(), 64);
    assert_eq!(dec.key_id(), Some(arn.as_str()));

    // KeyId given and matching (by alias) is fine; a different key is not.
    root.decrypt()
        .ciphertext_blob(blob.clone())
        .key_id("alias/DemoKey")
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect("Decrypt naming the right key");
    let other = create_key_with_alias(&root, "alias/Other").await;
    let e = root
        .decrypt()
        .ciphertext_blob(blob.clone())
        .key_id(other)
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect_err("Decrypt naming another key");
    assert_eq!(error_code(&e), "IncorrectKeyException");

    for wrong in [
        ctx(&[("envol:volume", "1b4e28ba-2fa1-11d2-883f-0016a3cacaff")]),
        ctx(&[("envol:Volume", "1b4e28ba-2fa1-11d2-883f-0016a3cacafe")]),
        ctx(&[]),
    ] {
        let e = root
            .decrypt()
            .ciphertext_blob(blob.clone())
            .set_encryption_context(Some(wrong.clone()))
            .send()
            .await
            .expect_err("wrong context must fail");
        assert_eq!(
            error_code(&e),
            "InvalidCiphertextException",
            "context {wrong:?}"
        );
    }

    // Tampering with any part of the blob fails.
    let bytes = blob.into_inner();
    for i in [0usize, 5, 22, 30, bytes.len() / 2, bytes.len() - 1] {
        let mut t = bytes.clone();
        t[i] ^= 0x40;
        let e = root
            .decrypt()
            .ciphertext_blob(Blob::new(t))
            .set_encryption_context(Some(c.clone()))
            .send()
            .await
            .expect_err("tampered blob must fail");
        let k = error_code(&e);
        assert!(
            k == "InvalidCiphertextException" || k == "NotFoundException",
            "byte {i}: {k}"
        );
    }

    // Encrypt / Decrypt of a small plaintext, and the size limit.
    let enc = root
        .encrypt()
        .key_id(&arn)
        .plaintext(Blob::new(b"attack at dawn".to_vec()))
        .send()
        .await
        .expect("Encrypt");
    let dec = root
        .decrypt()
        .ciphertext_blob(enc.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .expect("Decrypt");
    assert_eq!(dec.plaintext().unwrap().as_ref(), b"attack at dawn");
    let e = root
        .encrypt()
        .key_id(&arn)
        .plaintext(Blob::new(vec![1u8; 4097]))
        .send()
        .await
        .expect_err("4097-byte plaintext");
    assert_eq!(error_code(&e), "ValidationException");

    // GenerateDataKey returns a plaintext that decrypts from its blob.
    let gdk = root
        .generate_data_key()
        .key_id("alias/DemoKey")
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("GenerateDataKey");
    let dec = root
        .decrypt()
        .ciphertext_blob(gdk.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext(), gdk.plaintext());
    assert_eq!(gdk.plaintext().unwrap().as_ref().len(), 32);

    let rnd = root
        .generate_random()
        .number_of_bytes(48)
        .send()
        .await
        .unwrap();
    assert_eq!(rnd.plaintext().unwrap().as_ref().len(), 48);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_policy_is_enforced() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let key_arn = create_key_with_alias(&root, "alias/DemoKey").await;
    let demo = kms.add_user("S3DemoUser");
    let demo_client = kms.client(&demo);
    let demo_arn = kms.user_arn("S3DemoUser");

    let c = ctx(&[("envol:volume", "v1")]);
    let blob = root
        .generate_data_key_without_plaintext()
        .key_id("alias/DemoKey")
        .number_of_bytes(64)
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob()
        .unwrap()
        .clone();

    // Not in the default policy: refused, and the message names who, what, which key.
    let e = demo_client
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect_err("user not in policy");
    assert_eq!(error_code(&e), "AccessDeniedException");
    let msg = e.message().unwrap_or_default().to_string();
    assert!(msg.contains(&demo_arn), "{msg}");
    assert!(msg.contains("kms:Decrypt"), "{msg}");
    assert!(msg.contains(&key_arn), "{msg}");
    let e = demo_client
        .describe_key()
        .key_id("alias/DemoKey")
        .send()
        .await
        .expect_err("describe not allowed either");
    assert_eq!(error_code(&e), "AccessDeniedException");

    // Allow the user to decrypt, only for this volume's context.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{}:root", kms.account_id)},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "demo", "Effect": "Allow",
             "Principal": {"AWS": demo_arn},
             "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
             "Condition": {"StringEquals": {"kms:EncryptionContext:envol:volume": "v1"}}}
        ]
    });
    root.put_key_policy()
        .key_id("alias/DemoKey")
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .expect("PutKeyPolicy");
    let got = root.get_key_policy().key_id(&key_arn).send().await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(got.policy().unwrap()).unwrap(),
        policy
    );
    let dec = demo_client
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect("now allowed");
    assert_eq!(dec.plaintext().unwrap().as_ref().len(), 64);
    // The condition binds the context: another volume's context is refused.
    let e = demo_client
        .generate_data_key()
        .key_id("alias/DemoKey")
        .number_of_bytes(64)
        .send()
        .await
        .expect_err("GenerateDataKey not granted");
    assert_eq!(error_code(&e), "AccessDeniedException");

    // An explicit Deny wins over the Allow.
    let mut with_deny = policy.clone();
    with_deny["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Sid": "deny", "Effect": "Deny",
            "Principal": {"AWS": kms.user_arn("S3DemoUser")},
            "Action": "kms:Decrypt", "Resource": "*"
        }));
    root.put_key_policy()
        .key_id(&key_arn)
        .policy(with_deny.to_string())
        .send()
        .await
        .unwrap();
    let e = demo_client
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(c.clone()))
        .send()
        .await
        .expect_err("explicit deny");
    assert_eq!(error_code(&e), "AccessDeniedException");
    assert!(e.message().unwrap_or_default().contains("explicit deny"));

    // A malformed policy is refused and the old one stays.
    let e = root
        .put_key_policy()
        .key_id(&key_arn)
        .policy("{\"Statement\": [{\"Effect\": \"Perhaps\"}]}")
        .send()
        .await
        .expect_err("malformed policy");
    assert_eq!(error_code(&e), "MalformedPolicyDocumentException");

    // The user cannot lock the root out: root may always PutKeyPolicy.
    let lockout = serde_json::json!({
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": kms.user_arn("S3DemoUser")},
                       "Action": "kms:*", "Resource": "*"}]
    });
    root.put_key_policy()
        .key_id(&key_arn)
        .policy(lockout.to_string())
        .send()
        .await
        .unwrap();
    root.put_key_policy()
        .key_id(&key_arn)
        .policy(policy.to_string())
        .send()
        .await
        .expect("root can always repair the policy");
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_is_enforced() {
    let kms = KmsServer::start();
    let good = kms.client(&kms.root);
    good.list_keys().send().await.expect("signed request works");

    let wrong_secret = Creds {
        access_key_id: kms.root.access_key_id.clone(),
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
    };
    let e = kms
        .client(&wrong_secret)
        .list_keys()
        .send()
        .await
        .expect_err("wrong secret");
    assert_eq!(error_code(&e), "InvalidSignatureException");

    let unknown = Creds {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: kms.root.secret.clone(),
    };
    let e = kms
        .client(&unknown)
        .list_keys()
        .send()
        .await
        .expect_err("unknown key id");
    assert_eq!(error_code(&e), "UnrecognizedClientException");

    let old = SystemTime::now() - Duration::from_secs(20 * 60);
    let e = sdk_client(&kms.endpoint, &kms.root, Some(old))
        .list_keys()
        .send()
        .await
        .expect_err("20-minute-old signature");
    assert_eq!(error_code(&e), "RequestExpired");

    // A removed user's key stops working at once, while the server runs.
    let bob = kms.add_user("bob");
    let bob_client = kms.client(&bob);
    bob_client.list_keys().send().await.expect("bob works");
    common::run_ok(
        common::envol()
            .args(["kms", "user", "remove", "bob", "--data"])
            .arg(kms.data()),
    );
    let e = bob_client
        .list_keys()
        .send()
        .await
        .expect_err("removed user");
    assert_eq!(error_code(&e), "UnrecognizedClientException");

    // The server kept serving through all of that.
    good.list_keys().send().await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_survive_restart_and_nothing_secret_is_stored_in_clear() {
    let mut kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let arn = create_key_with_alias(&root, "alias/persistent").await;
    let mut handed_out = Vec::new();
    let mut blobs = Vec::new();
    for _ in 0..5 {
        let g = root
            .generate_data_key()
            .key_id("alias/persistent")
            .number_of_bytes(64)
            .send()
            .await
            .unwrap();
        handed_out.push(g.plaintext().unwrap().as_ref().to_vec());
        blobs.push(g.ciphertext_blob().unwrap().clone());
    }

    kms.restart();
    let root = kms.client(&kms.root);
    let d = root
        .describe_key()
        .key_id("alias/persistent")
        .send()
        .await
        .expect("alias survives restart");
    assert_eq!(d.key_metadata().unwrap().arn(), Some(arn.as_str()));
    for (blob, key) in blobs.iter().zip(&handed_out) {
        let p = root
            .decrypt()
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .expect("decrypts after restart");
        assert_eq!(p.plaintext().unwrap().as_ref(), key.as_slice());
    }
    let aliases = root.list_aliases().send().await.unwrap();
    assert!(
        aliases
            .aliases()
            .iter()
            .any(|a| a.alias_name() == Some("alias/persistent"))
    );

    kms.stop();
    // Scan every byte of every file in the data directory for any data key
    // handed out (raw, and as the base64 that went over the wire) and for
    // the root's secret access key.
    use base64::Engine;
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for k in &handed_out {
        needles.push(k.clone());
        needles.push(
            base64::engine::general_purpose::STANDARD
                .encode(k)
                .into_bytes(),
        );
    }
    needles.push(kms.root.secret.as_bytes().to_vec());
    let mut scanned = 0;
    for entry in std::fs::read_dir(kms.data()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "{} contains a secret in the clear",
                path.display()
            );
        }
    }
    assert!(scanned > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_paginates_and_aliases_move() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            root.create_key()
                .send()
                .await
                .unwrap()
                .key_metadata()
                .unwrap()
                .key_id()
                .to_string(),
        );
    }
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = root
            .list_keys()
            .limit(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        assert!(page.keys().len() <= 2);
        seen.extend(page.keys().iter().map(|k| k.key_id().unwrap().to_string()));
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_string);
    }
    ids.sort();
    seen.sort();
    assert_eq!(ids, seen);

    root.create_alias()
        .alias_name("alias/app")
        .target_key_id(&ids[0])
        .send()
        .await
        .unwrap();
    let e = root
        .create_alias()
        .alias_name("alias/app")
        .target_key_id(&ids[1])
        .send()
        .await
        .expect_err("duplicate alias");
    assert_eq!(error_code(&e), "AlreadyExistsException");
    let e = root
        .create_alias()
        .alias_name("alias/aws/reserved")
        .target_key_id(&ids[1])
        .send()
        .await
        .expect_err("reserved alias");
    // AWS refuses the reserved prefix as NotAuthorizedException.
    assert_eq!(error_code(&e), "NotAuthorizedException");
    root.update_alias()
        .alias_name("alias/app")
        .target_key_id(&ids[1])
        .send()
        .await
        .unwrap();
    let d = root
        .describe_key()
        .key_id("alias/app")
        .send()
        .await
        .unwrap();
    assert_eq!(d.key_metadata().unwrap().key_id(), ids[1]);
    let for_key = root.list_aliases().key_id(&ids[1]).send().await.unwrap();
    assert_eq!(for_key.aliases().len(), 1);
    root.delete_alias()
        .alias_name("alias/app")
        .send()
        .await
        .unwrap();
    let e = root
        .describe_key()
        .key_id("alias/app")
        .send()
        .await
        .expect_err("deleted alias");
    assert_eq!(error_code(&e), "NotFoundException");
    let e = root
        .describe_key()
        .key_id(format!(
            "arn:aws:kms:{}:{}:key/00000000-0000-0000-0000-000000000000",
            common::REGION,
            kms.account_id
        ))
        .send()
        .await
        .expect_err("missing key");
    assert_eq!(error_code(&e), "NotFoundException");
}
