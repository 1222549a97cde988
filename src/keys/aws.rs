//! The key client on the official AWS SDK for Rust.
//!
//! Configuration follows the AWS tools exactly: `--endpoint` overrides
//! `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL` / the profile's
//! `endpoint_url`; `--profile` overrides `AWS_PROFILE`; credentials come from
//! the environment, the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`) or any other provider of the SDK's default
//! chain. The same client therefore works against `envol kms serve` and real
//! AWS KMS.
//!
//! Two deliberate differences from the SDK's defaults, both so that a
//! newcomer's mistake is one clear line rather than a stall and a screenful:
//! the instance metadata service (IMDS) is asked for credentials only on EC2
//! (detected locally) and never for the region (`--region`, `AWS_REGION`, the
//! profile's `region`, else us-east-1); and the credentials are resolved once
//! before the first request, so "none configured" is reported as such.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::{KeyError, KeyErrorKind, KeyService, WrappedKey};

/// Region used when neither a flag, the environment nor the profile names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Attempts per KMS call (the first one included) before giving up.
pub const KMS_MAX_ATTEMPTS: u32 = 3;
/// Backoff before the first retry; it doubles (with full jitter) up to
/// [`KMS_MAX_BACKOFF`].
pub const KMS_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const KMS_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a TCP (and TLS) connection to the KMS may take.
pub const KMS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt (connect, send, answer) may take.
pub const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole call, retries and backoff included, may take.
pub const KMS_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Where to find the KMS and whose credentials to use.
#[derive(Debug, Clone, Default)]
pub struct KmsTarget {
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
}

pub struct AwsKeyClient {
    client: aws_sdk_kms::Client,
    endpoint: Option<String>,
    profile: Option<String>,
}

impl AwsKeyClient {
    pub async fn new(target: &KmsTarget) -> Result<AwsKeyClient, KeyError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(p) = &target.profile {
            loader = loader.profile_name(p);
        }
        // Region and credentials come from the environment and the profile
        // files only, never from the instance metadata service off EC2: a
        // laptop without credentials used to probe 169.254.169.254, log three
        // warnings and send a request toward real AWS.
        loader = loader
            .region(region_chain(target))
            .credentials_provider(credentials_chain(target.profile.as_deref()));
        if let Some(e) = &target.endpoint {
            loader = loader.endpoint_url(e);
        }
        if let Some(client) = ca_bundle_client()? {
            loader = loader.http_client(client);
        }
        // Explicit and bounded. The SDK's defaults retry 3 times with up to
        // 20 s of backoff and set only a connect timeout, so a KMS that
        // accepts connections and never answers hung `envol serve` forever
        // at attach (issue 7 §5). Now a call gives up after at most
        // KMS_OPERATION_TIMEOUT with a one-line "unreachable" error.
        loader = loader
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(KMS_MAX_ATTEMPTS)
                    .with_initial_backoff(KMS_INITIAL_BACKOFF)
                    .with_max_backoff(KMS_MAX_BACKOFF),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(KMS_CONNECT_TIMEOUT)
                    .operation_attempt_timeout(KMS_ATTEMPT_TIMEOUT)
                    .operation_timeout(KMS_OPERATION_TIMEOUT)
                    .build(),
            );
        let shared = loader.load().await;
        let endpoint = target
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_string));
        let profile = target
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()));
        check_credentials(&shared, profile.as_deref(), endpoint.as_deref()).await?;
        let builder = aws_sdk_kms::config::Builder::from(&shared);
        Ok(AwsKeyClient {
            client: aws_sdk_kms::Client::from_conf(builder.build()),
            endpoint,
            profile,
        })
    }

    /// The SDK client, for calls beyond the [`KeyService`] ones (`envol key`).
    pub fn sdk(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// A failed SDK call as a one-line [`KeyError`] that names this KMS when
    /// it could not be reached.
    pub fn explain<E>(&self, err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> KeyError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        key_error(err, &self.describe())
    }
}

/// `--region`, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile's
/// `region`, then [`DEFAULT_REGION`].
fn region_chain(target: &KmsTarget) -> aws_config::meta::region::RegionProviderChain {
    use aws_config::meta::region::RegionProviderChain;
    let flag = target.region.clone().map(aws_config::Region::new);
    let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = &target.profile {
        profile = profile.profile_name(p);
    }
    RegionProviderChain::first_try(flag)
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(profile.build())
        .or_else(DEFAULT_REGION)
}

/// The AWS default credential chain — environment, profile (static keys,
/// SSO, assume-role, credential_process), web identity, ECS — and the EC2
/// instance role only on EC2.
pub(crate) fn credentials_chain(
    profile: Option<&str>,
) -> aws_config::meta::credentials::CredentialsProviderChain {
    use aws_config::meta::credentials::CredentialsProviderChain;
    let mut from_profile = aws_config::profile::ProfileFileCredentialsProvider::builder();
    if let Some(p) = profile {
        from_profile = from_profile.profile_name(p);
    }
    let chain = CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else("Profile", from_profile.build())
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder().build(),
    )
    .or_else(
        "EcsContainer",
        aws_config::ecs::EcsCredentialsProvider::builder().build(),
    );
    if on_ec2() {
        chain.or_else(
            "Ec2InstanceMetadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
        )
    } else {
        chain
    }
}

/// Whether this machine is an EC2 instance, from what the hypervisor tells
/// the kernel (no network): DMI's vendor on Nitro, the Xen uuid before it.
/// `AWS_EC2_METADATA_DISABLED=true` says no, as it does to the AWS tools.
fn on_ec2() -> bool {
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    read("/sys/devices/virtual/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/devices/virtual/dmi/id/board_vendor").trim() == "Amazon EC2"
        || read("/sys/hypervisor/uuid").starts_with("ec2")
}

/// Resolves the credentials once before any request, so that having none is
/// one line that says where to get them, not a failed call.
async fn check_credentials(
    shared: &aws_config::SdkConfig,
    profile: Option<&str>,
    endpoint: Option<&str>,
) -> Result<(), KeyError> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_credential_types::provider::error::CredentialsError;
    let Some(provider) = shared.credentials_provider() else {
        return Ok(());
    };
    let failed = |message: String| KeyError {
        kind: KeyErrorKind::Credentials,
        code: None,
        message,
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(CredentialsError::CredentialsNotLoaded(_)) => {
            let searched = match profile {
                Some(p) => format!("no AWS credentials: none in the environment and none for profile {p}"),
                None => "no AWS credentials: none in the environment (AWS_ACCESS_KEY_ID) and no default profile".to_string(),
            };
            let files = match crate::kms::profile::credentials_path() {
                Ok(f) => format!(" in {}", f.display()),
                Err(_) => String::new(),
            };
            let target = match endpoint {
                Some(_) => String::new(),
                None => "; no KMS endpoint is configured either, so requests would go to AWS KMS — point at envol's KMS with --endpoint URL or a profile's endpoint_url".to_string(),
            };
            Err(failed(format!(
                "{searched}{files}: pass --profile NAME or set AWS_PROFILE (`envol up` writes profile {UP_PROFILE} for its KMS; `envol kms init|user add --profile NAME --endpoint URL` writes one for `envol kms serve`){target}"
            )))
        }
        Err(e) => {
            let what = match profile {
                Some(p) => format!("cannot load the credentials of profile {p}"),
                None => "cannot load AWS credentials".to_string(),
            };
            Err(failed(format!("{what}: {}", innermost(&e))))
        }
    }
}

/// The profile `envol up` writes for its embedded KMS.
pub const UP_PROFILE: &str = "envol-up";

/// `AWS_CA_BUNDLE`, as the AWS CLI and boto3 honour it: extra certificates
/// (PEM) to trust besides the system's, e.g. a KMS's self-signed one.
pub(crate) fn ca_bundle_client() -> Result<Option<aws_sdk_kms::config::SharedHttpClient>, KeyError>
{
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let bad = |why: String| KeyError {
        kind: KeyErrorKind::Credentials,
        code: None,
        message: format!(
            "AWS_CA_BUNDLE={}: {why}",
            std::path::Path::new(&path).display()
        ),
    };
    let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let context = TlsContext::builder()
        .with_trust_store(
            TrustStore::empty()
                .with_native_roots(true)
                .with_pem_certificate(pem),
        )
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https();
    Ok(Some(client))
}

/// A reply's CiphertextBlob and KeyId as a `WrappedKey`; `requested` stands
/// in for a KMS that does not echo the key's ARN.
fn wrapped_key(
    blob: Option<&Blob>,
    key_id: Option<&str>,
    requested: &str,
) -> Result<WrappedKey, KeyError> {
    let blob = blob
        .ok_or_else(|| KeyError::from_code("InvalidResponse", "no CiphertextBlob in the reply"))?
        .as_ref()
        .to_vec();
    let key_arn = key_id.unwrap_or(requested).to_string();
    Ok(WrappedKey { blob, key_arn })
}

fn to_hash_map(context: &BTreeMap<String, String>) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Turns an SDK error into a one-line, actionable `KeyError`; `describe`
/// names the KMS ("the KMS at http://...") for transport failures.
fn key_error<E>(
    err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
    describe: &str,
) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let unreachable = |why: String| KeyError {
        kind: KeyErrorKind::Unreachable,
        code: None,
        message: format!("cannot reach {describe}: {why}"),
    };
    match &err {
        // An answer without an AWS error code (a proxy's or a load
        // balancer's 5xx, say) used to be reported as just "UnknownError".
        SdkError::ServiceError(se) if err.code().is_none() => {
            let status = se.raw().status().as_u16();
            KeyError {
                kind: if status >= 500 {
                    KeyErrorKind::Unreachable
                } else {
                    KeyErrorKind::Other
                },
                code: None,
                message: format!("{describe} answered HTTP {status} without an AWS error"),
            }
        }
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("UnknownError").to_string();
            let message = err.message().unwrap_or_default().to_string();
            KeyError::from_code(&code, message)
        }
        SdkError::DispatchFailure(d) => {
            let cause = innermost(&err);
            if d.is_timeout() {
                unreachable(format!(
                    "no connection within {KMS_CONNECT_TIMEOUT:?} ({cause})"
                ))
            } else if d.is_io() {
                unreachable(cause)
            } else if error_chain(&err)
                .to_ascii_lowercase()
                .contains("credentials")
            {
                KeyError {
                    kind: KeyErrorKind::Credentials,
                    code: None,
                    message: format!("cannot sign the request: {cause}"),
                }
            } else {
                KeyError {
                    kind: KeyErrorKind::Other,
                    code: None,
                    message: format!("cannot send the request to {describe}: {cause}"),
                }
            }
        }
        SdkError::TimeoutError(_) => unreachable(format!(
            "no answer within {KMS_ATTEMPT_TIMEOUT:?} per attempt, {KMS_OPERATION_TIMEOUT:?} in all"
        )),
        SdkError::ResponseError(_) => KeyError {
            kind: KeyErrorKind::Other,
            code: None,
            message: format!(
                "{describe} sent an answer that is not an AWS KMS reply: {}",
                innermost(&err)
            ),
        },
        _ => KeyError {
            kind: KeyErrorKind::Other,
            code: None,
            message: one_line(&error_chain(&err)),
        },
    }
}

/// The deepest cause of an error, which is the one a person can act on
/// ("Connection refused"), without the `(os error 111)` tail.
pub(crate) fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = one_line(&last.to_string());
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// The error and its causes, `a: b: c`, without the Debug dump that
/// `DisplayErrorContext` appends (a connection refused read as a screenful).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl KeyService for AwsKeyClient {
    async fn generate_wrapped_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        bytes: usize,
    ) -> Result<WrappedKey, KeyError> {
        let out = self
            .client
            .generate_data_key_without_plaintext()
            .key_id(key)
            .number_of_bytes(bytes as i32)
            .set_encryption_context(Some(to_hash_map(context)))
            .send()
            .await
            .map_err(|e| self.explain(e))?;
        wrapped_key(out.ciphertext_blob(), out.key_id(), key)
    }

    async fn unwrap_key(
        &self,
        key: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let out = self
            .client
            .decrypt()
            .key_id(key)
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .set_encryption_context(Some(to_hash_map(context)))
            .send()
            .await
            .map_err(|e| self.explain(e))?;
        // The SDK's Blob does not zeroize; take the bytes out of it at once
        // into a zeroizing buffer.
        let mut out = out;
        let plaintext = out
            .plaintext
            .take()
            .ok_or_else(|| KeyError::from_code("InvalidResponse", "no Plaintext in the reply"))?;
        Ok(Zeroizing::new(plaintext.into_inner()))
    }

    async fn rewrap_key(
        &self,
        source: &str,
        blob: &[u8],
        destination: &str,
        source_context: &BTreeMap<String, String>,
        destination_context: &BTreeMap<String, String>,
    ) -> Result<WrappedKey, KeyError> {
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .source_key_id(source)
            .set_source_encryption_context(Some(to_hash_map(source_context)))
            .destination_key_id(destination)
            .set_destination_encryption_context(Some(to_hash_map(destination_context)))
            .send()
            .await
            .map_err(|e| self.explain(e))?;
        wrapped_key(out.ciphertext_blob(), out.key_id(), destination)
    }

    fn describe(&self) -> String {
        let at = match &self.endpoint {
            Some(e) => format!("the KMS at {e}"),
            None => "AWS KMS".to_string(),
        };
        match &self.profile {
            Some(p) => format!("{at} (profile {p})"),
            None => at,
        }
    }
}
