//! Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom: the operations that use
//! master-key material.
//!
//! Order of checks, as AWS: resolve the key, authorize (the policy sees the
//! encryption context), then the key's state, then the cryptography. A caller
//! the policy refuses learns nothing about the key's state or the blob.

use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::super::audit::AuditNote;
use super::super::blob::{self, BlobHeader};
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::grant;
use super::super::store::KeyRow;
use super::request::{
    Blob, EncryptionContext, authorized_key, b64, check_algorithm, check_context, dry_run_error,
};

/// AWS's limit for Encrypt's plaintext.
const MAX_PLAINTEXT: usize = 4096;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct EncryptRequest {
    key_id: String,
    plaintext: Blob,
    encryption_context: EncryptionContext,
    encryption_algorithm: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
}

fn seal_with_newest(
    kms: &Kms,
    key_id: &str,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let (version, material) = kms.newest_material(key_id)?;
    let id =
        Uuid::parse_str(key_id).map_err(|_| KmsError::internal("stored key id is not a UUID"))?;
    Ok(blob::seal(
        BlobHeader {
            key_id: id,
            key_version: version,
        },
        &material,
        context,
        plaintext,
    ))
}

pub(super) fn encrypt(
    kms: &Kms,
    caller: &Caller<'_>,
    req: EncryptRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    check_context(&req.encryption_context)?;
    grant::check_tokens(req.grant_tokens.as_deref())?;
    note.encryption_context = Some(req.encryption_context.clone());
    let key = authorized_key(
        kms,
        caller,
        &req.key_id,
        "kms:Encrypt",
        &req.encryption_context,
        note,
    )?;
    kms.require_enabled(&key)?;
    check_algorithm(req.encryption_algorithm.as_deref())?;
    let n = req.plaintext.0.len();
    if n == 0 || n > MAX_PLAINTEXT {
        return Err(KmsError::validation(format!(
            "Plaintext must be 1-{MAX_PLAINTEXT} bytes (got {n})"
        )));
    }
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let blob = seal_with_newest(kms, &key.key_id, &req.encryption_context, &req.plaintext.0)?;
    Ok(json!({
        "CiphertextBlob": b64(&blob),
        "KeyId": key.arn,
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct DecryptRequest {
    ciphertext_blob: Blob,
    encryption_context: EncryptionContext,
    key_id: Option<String>,
    encryption_algorithm: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
}

pub(super) fn decrypt(
    kms: &Kms,
    caller: &Caller<'_>,
    req: DecryptRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    note.encryption_context = Some(req.encryption_context.clone());
    check_algorithm(req.encryption_algorithm.as_deref())?;
    grant::check_tokens(req.grant_tokens.as_deref())?;
    let header =
        blob::parse_header(&req.ciphertext_blob.0).map_err(|_| KmsError::invalid_ciphertext())?;
    let key = key_of_blob(kms, &header)?;
    note.key_arn = Some(key.arn.clone());
    if let Some(requested) = req.key_id.as_deref() {
        let wanted = kms.resolve_key(requested)?;
        if wanted.key_id != key.key_id {
            return Err(incorrect_key());
        }
    }
    kms.authorize(caller, &key, "kms:Decrypt", &req.encryption_context)?;
    kms.require_enabled(&key)?;
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let material = kms
        .material(&key.key_id, header.key_version)?
        .ok_or_else(KmsError::invalid_ciphertext)?;
    let plaintext = blob::open(&req.ciphertext_blob.0, &material, &req.encryption_context)
        .map_err(|_| KmsError::invalid_ciphertext())?;
    let encoded = Zeroizing::new(b64(&plaintext));
    Ok(json!({
        "KeyId": key.arn,
        "Plaintext": encoded.as_str(),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ReEncryptRequest {
    ciphertext_blob: Blob,
    source_encryption_context: EncryptionContext,
    source_key_id: Option<String>,
    destination_key_id: String,
    destination_encryption_context: EncryptionContext,
    source_encryption_algorithm: Option<String>,
    destination_encryption_algorithm: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
}

/// Decrypts under the source key and encrypts under the newest version of
/// the destination key (which may be the same key: re-wrapping after a
/// rotation). Needs kms:ReEncryptFrom on the source with the source context
/// and kms:ReEncryptTo on the destination with the destination context. The
/// plaintext exists only inside this function, in zeroized memory.
pub(super) fn re_encrypt(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ReEncryptRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    check_context(&req.source_encryption_context)?;
    check_context(&req.destination_encryption_context)?;
    check_algorithm(req.source_encryption_algorithm.as_deref())?;
    check_algorithm(req.destination_encryption_algorithm.as_deref())?;
    grant::check_tokens(req.grant_tokens.as_deref())?;
    if req.destination_key_id.is_empty() {
        return Err(KmsError::validation(
            "1 validation error detected: Value null at 'destinationKeyId' failed to satisfy constraint: Member must not be null",
        ));
    }
    note.encryption_context = Some(req.source_encryption_context.clone());
    let header =
        blob::parse_header(&req.ciphertext_blob.0).map_err(|_| KmsError::invalid_ciphertext())?;
    let source = key_of_blob(kms, &header)?;
    note.key_arn = Some(source.arn.clone());
    if let Some(requested) = req.source_key_id.as_deref() {
        let wanted = kms.resolve_key(requested)?;
        if wanted.key_id != source.key_id {
            return Err(incorrect_key());
        }
    }
    let destination = kms.resolve_key(&req.destination_key_id)?;
    note.destination_key_arn = Some(destination.arn.clone());
    kms.authorize(
        caller,
        &source,
        "kms:ReEncryptFrom",
        &req.source_encryption_context,
    )?;
    kms.authorize(
        caller,
        &destination,
        "kms:ReEncryptTo",
        &req.destination_encryption_context,
    )?;
    kms.require_enabled(&source)?;
    kms.require_enabled(&destination)?;
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let material = kms
        .material(&source.key_id, header.key_version)?
        .ok_or_else(KmsError::invalid_ciphertext)?;
    let plaintext = blob::open(
        &req.ciphertext_blob.0,
        &material,
        &req.source_encryption_context,
    )
    .map_err(|_| KmsError::invalid_ciphertext())?;
    drop(material);
    let out = seal_with_newest(
        kms,
        &destination.key_id,
        &req.destination_encryption_context,
        &plaintext,
    )?;
    Ok(json!({
        "CiphertextBlob": b64(&out),
        "SourceKeyId": source.arn,
        "KeyId": destination.arn,
        "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }))
}

/// The key a blob names; a blob naming no key we hold is NotFound, as AWS.
fn key_of_blob(kms: &Kms, header: &BlobHeader) -> Result<KeyRow, KmsError> {
    let key_id = header.key_id.to_string();
    kms.store.key(&key_id)?.ok_or_else(|| {
        KmsError::not_found(format!("Key '{}' does not exist", kms.key_arn(&key_id)))
    })
}

fn incorrect_key() -> KmsError {
    KmsError::new(
        ErrorKind::IncorrectKey,
        "The key ID in the request does not identify a KMS key that can perform this operation.",
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct GenerateDataKeyRequest {
    key_id: String,
    encryption_context: EncryptionContext,
    number_of_bytes: Option<i64>,
    key_spec: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
}

/// Exactly one of KeySpec (AES_128, AES_256) and NumberOfBytes (1-1024).
fn data_key_length(req: &GenerateDataKeyRequest) -> Result<usize, KmsError> {
    match (req.key_spec.as_deref(), req.number_of_bytes) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "Please specify either number of bytes or key spec, not both.",
        )),
        (None, None) => Err(KmsError::validation(
            "Please specify either number of bytes or key spec.",
        )),
        (Some("AES_256"), None) => Ok(32),
        (Some("AES_128"), None) => Ok(16),
        (Some(other), None) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
        ))),
        (None, Some(n)) if (1..=1024).contains(&n) => Ok(n as usize),
        (None, Some(n)) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
        ))),
    }
}

pub(super) fn generate_data_key(
    kms: &Kms,
    caller: &Caller<'_>,
    req: GenerateDataKeyRequest,
    note: &mut AuditNote,
    with_plaintext: bool,
) -> Result<Value, KmsError> {
    check_context(&req.encryption_context)?;
    grant::check_tokens(req.grant_tokens.as_deref())?;
    note.encryption_context = Some(req.encryption_context.clone());
    let action = if with_plaintext {
        "kms:GenerateDataKey"
    } else {
        "kms:GenerateDataKeyWithoutPlaintext"
    };
    let key = authorized_key(
        kms,
        caller,
        &req.key_id,
        action,
        &req.encryption_context,
        note,
    )?;
    kms.require_enabled(&key)?;
    let len = data_key_length(&req)?;
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let mut data_key = Zeroizing::new(vec![0u8; len]);
    rand::rngs::OsRng.fill_bytes(&mut data_key);
    let blob = seal_with_newest(kms, &key.key_id, &req.encryption_context, &data_key)?;
    let mut out = json!({
        "CiphertextBlob": b64(&blob),
        "KeyId": key.arn,
    });
    if with_plaintext {
        let encoded = Zeroizing::new(b64(&data_key));
        out["Plaintext"] = json!(encoded.as_str());
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct GenerateRandomRequest {
    number_of_bytes: Option<i64>,
    custom_key_store_id: Option<String>,
}

/// Account-level: any authenticated principal may ask for random bytes.
pub(super) fn generate_random(req: GenerateRandomRequest) -> Result<Value, KmsError> {
    if req.custom_key_store_id.is_some() {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            "custom key stores are not supported",
        ));
    }
    let n = match req.number_of_bytes {
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(KmsError::validation(format!(
                "NumberOfBytes must be between 1 and 1024 (got {n})"
            )));
        }
        None => {
            return Err(KmsError::validation("NumberOfBytes is required"));
        }
    };
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Ok(json!({ "Plaintext": b64(&bytes) }))
}
