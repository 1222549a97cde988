//! The KMS core called in-process, as the account root (`envol up`).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::json;
use zeroize::Zeroizing;

use super::{KeyError, KeyService, WrappedKey};
use crate::kms::iam::Principal;
use crate::kms::{Kms, RequestContext};

pub struct EmbeddedKeys {
    kms: Arc<Kms>,
    principal: Principal,
}

impl EmbeddedKeys {
    pub fn as_root(kms: Arc<Kms>) -> Self {
        let principal = kms.root_principal();
        EmbeddedKeys { kms, principal }
    }

    /// Calls one operation; errors come back exactly as over the wire.
    pub fn call(
        &self,
        operation: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, KeyError> {
        let ctx = RequestContext {
            principal: self.principal.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
            source: Some("in-process".into()),
            // No network between this caller and the KMS: nothing for TLS
            // to protect, so a key policy's `aws:SecureTransport` deny (meant
            // for plain HTTP) does not lock `envol up` out of its own keys.
            secure_transport: true,
        };
        self.kms
            .handle(&ctx, operation, body.to_string().as_bytes())
            .map_err(|e| KeyError::from_code(e.kind.aws_type(), e.message))
    }
}

fn b64d(v: &serde_json::Value, field: &str) -> Result<Vec<u8>, KeyError> {
    v[field]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| KeyError::from_code("InvalidResponse", format!("no {field} in the reply")))
}

impl KeyService for EmbeddedKeys {
    async fn generate_wrapped_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        bytes: usize,
    ) -> Result<WrappedKey, KeyError> {
        let out = self.call(
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": key, "NumberOfBytes": bytes, "EncryptionContext": context}),
        )?;
        Ok(WrappedKey {
            blob: b64d(&out, "CiphertextBlob")?,
            key_arn: out["KeyId"].as_str().unwrap_or(key).to_string(),
        })
    }

    async fn unwrap_key(
        &self,
        key: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut out = self.call(
            "Decrypt",
            json!({
                "KeyId": key,
                "CiphertextBlob": base64::engine::general_purpose::STANDARD.encode(blob),
                "EncryptionContext": context,
            }),
        )?;
        let plaintext = Zeroizing::new(
            out["Plaintext"]
                .as_str()
                .map(|s| Zeroizing::new(s.to_string()))
                .ok_or_else(|| KeyError::from_code("InvalidResponse", "no Plaintext"))?,
        );
        // Scrub the JSON copy of the plaintext too.
        if let Some(serde_json::Value::String(s)) = out.get_mut("Plaintext") {
            zeroize::Zeroize::zeroize(s);
        }
        base64::engine::general_purpose::STANDARD
            .decode(plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| KeyError::from_code("InvalidResponse", "Plaintext is not base64"))
    }

    async fn rewrap_key(
        &self,
        source: &str,
        blob: &[u8],
        destination: &str,
        source_context: &BTreeMap<String, String>,
        destination_context: &BTreeMap<String, String>,
    ) -> Result<WrappedKey, KeyError> {
        let out = self.call(
            "ReEncrypt",
            json!({
                "CiphertextBlob": base64::engine::general_purpose::STANDARD.encode(blob),
                "SourceKeyId": source,
                "SourceEncryptionContext": source_context,
                "DestinationKeyId": destination,
                "DestinationEncryptionContext": destination_context,
            }),
        )?;
        Ok(WrappedKey {
            blob: b64d(&out, "CiphertextBlob")?,
            key_arn: out["KeyId"].as_str().unwrap_or(destination).to_string(),
        })
    }

    fn describe(&self) -> String {
        "the embedded KMS".to_string()
    }
}
