//! One S3 bucket, as the snapshot layer uses it: put, get, head, list,
//! delete, with bounded concurrency and retries, and one-line errors that
//! name the bucket, the key and the endpoint.
//!
//! On the official `aws-sdk-s3`: the same smithy / aws-config stack as the
//! KMS client (one HTTP and TLS stack in the binary; the `object_store`
//! crate would bring reqwest beside it). It works against AWS S3, Ceph
//! radosgw, MinIO and the like:
//!
//! - **Where**: `--endpoint-url`, else `AWS_ENDPOINT_URL_S3`,
//!   `AWS_ENDPOINT_URL` or the profile's `endpoint_url` (the SDK's own
//!   lookup), else AWS. With an endpoint, requests use path-style
//!   addressing (`http://host/bucket/key`), which radosgw and MinIO serve
//!   without wildcard DNS.
//! - **Who**: `--s3-profile NAME` uses that profile's credentials only (as
//!   the AWS CLI's `--profile` beats the environment): the object store's
//!   user and the KMS's may differ (a radosgw user beside envol's KMS).
//!   Without it, the AWS default chain (environment, `AWS_PROFILE` or the
//!   default profile, web identity, ECS, the instance role on EC2).
//! - **Retries**: transient failures (connection refused or reset,
//!   timeouts, HTTP 500/502/503/504, throttling) are retried by the SDK's
//!   standard strategy, [`MAX_ATTEMPTS`] attempts with exponential backoff
//!   and jitter from [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`]; then the
//!   error is reported, once, in one line.
//! - **Checksums**: only where an operation requires one. Newer SDKs add
//!   CRC32 trailers (`aws-chunked` bodies) to every upload by default, which
//!   radosgw before Reef and older MinIO refuse; integrity is envol's own:
//!   a chunk's key is its SHA-256, checked on every restore.
//! - **Concurrency**: at most [`ObjectStore::concurrency`] requests at once
//!   (a semaphore every operation takes), so callers may start work freely.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::Semaphore;

/// Attempts per request (the first included) before an error is reported.
pub const MAX_ATTEMPTS: u32 = 5;
/// Backoff before the first retry; doubles (with full jitter) up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long a TCP (and TLS) connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt may take: a 1 MiB chunk over a slow link, with margin.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests in flight at once, unless the user says otherwise (`--concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Region when neither a flag, the environment nor the profile names one.
const DEFAULT_REGION: &str = "us-east-1";

/// How to reach the object store (from the command line).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `--endpoint-url`: radosgw, MinIO, … (default: the AWS lookup, then AWS).
    pub endpoint_url: Option<String>,
    /// `--s3-profile`: whose credentials sign the requests.
    pub profile: Option<String>,
    /// `--s3-region` (default: AWS_REGION, the profile's region, us-east-1).
    pub region: Option<String>,
    /// Requests in flight at once (≥ 1).
    pub concurrency: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint_url: None,
            profile: None,
            region: None,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// What kind of failure, for callers that act on it (a missing manifest is
/// "no such snapshot"; a missing chunk is a damaged snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectErrorKind {
    /// No such key (or HEAD's bare 404).
    NotFound,
    NoSuchBucket,
    AccessDenied,
    /// No credentials, or the store refused them.
    Credentials,
    /// Could not reach the store (after the retries).
    Unreachable,
    /// Larger than the caller's limit (a GET refuses to hold it).
    TooLarge,
    Other,
}

/// A failed request: one line naming what was asked, of which store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ObjectStoreError {
    pub kind: ObjectErrorKind,
    pub message: String,
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// A bucket in an S3-compatible store.
#[derive(Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// "http://127.0.0.1:7480" or "AWS S3 (us-east-1)", for messages.
    endpoint: String,
    permits: Arc<Semaphore>,
    concurrency: usize,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl ObjectStore {
    /// A client for `bucket`. Resolves the credentials once, so that having
    /// none is one line saying where they were looked for; sends nothing.
    pub async fn connect(
        options: &S3Options,
        bucket: &str,
    ) -> Result<ObjectStore, ObjectStoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region_chain(options))
            .credentials_provider(credentials(options.profile.as_deref()))
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(p) = &options.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &options.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        let bad_bundle = |e: crate::keys::KeyError| ObjectStoreError {
            kind: ObjectErrorKind::Credentials,
            message: e.message,
        };
        if let Some(client) = crate::keys::aws::ca_bundle_client().map_err(bad_bundle)? {
            loader = loader.http_client(client);
        }
        let shared = loader.load().await;
        let endpoint = options
            .endpoint_url
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| shared.endpoint_url().map(str::to_string));
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| DEFAULT_REGION.into());
        let describe = match &endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({region})"),
        };
        check_credentials(&shared, options.profile.as_deref(), &describe).await?;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(endpoint.is_some())
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        let concurrency = options.concurrency.max(1);
        Ok(ObjectStore {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_string(),
            endpoint: describe,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The store, for messages: its endpoint URL, or "AWS S3 (REGION)".
    pub fn describe(&self) -> &str {
        &self.endpoint
    }

    /// Requests in flight at most.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        // Never closed: the semaphore lives as long as `self`.
        self.permits
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    /// Whether the bucket exists and these credentials may use it (HeadBucket):
    /// a missing bucket is one line before any work starts.
    pub async fn check_bucket(&self) -> Result<(), ObjectStoreError> {
        let _permit = self.permit().await;
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err = self.explain("reach bucket", None, e);
                // HeadBucket has no body: its 404 is a bare NotFound.
                if err.kind == ObjectErrorKind::NotFound {
                    err.kind = ObjectErrorKind::NoSuchBucket;
                    err.message =
                        format!("bucket {} does not exist at {}", self.bucket, self.endpoint);
                }
                Err(err)
            }
        }
    }

    /// Writes `body` as `key` (replacing any object there).
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ObjectStoreError> {
        let _permit = self.permit().await;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.explain("put", Some(key), e))
    }

    /// The whole object `key`, if it is at most `limit` bytes (`TooLarge`
    /// otherwise).
    pub async fn get(&self, key: &str, limit: usize) -> Result<Vec<u8>, ObjectStoreError> {
        let _permit = self.permit().await;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.explain("get", Some(key), e))?;
        // A bucket is not trusted: an object larger than any envol writes
        // there is refused before (by its length) or while (by what has
        // arrived) it is read, never held in memory whole.
        let too_large = || ObjectStoreError {
            kind: ObjectErrorKind::TooLarge,
            message: format!(
                "{} is larger than the {limit} bytes such an object can be",
                self.url(key)
            ),
        };
        if out
            .content_length()
            .is_some_and(|len| u64::try_from(len).is_ok_and(|len| len > limit as u64))
        {
            return Err(too_large());
        }
        let mut body = out.body;
        let mut data = Vec::new();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| ObjectStoreError {
                kind: ObjectErrorKind::Unreachable,
                message: format!(
                    "cannot get {} from {}: the download broke off: {}",
                    self.url(key),
                    self.endpoint,
                    crate::keys::aws::innermost(&e)
                ),
            })?;
            if data.len() + piece.len() > limit {
                return Err(too_large());
            }
            data.extend_from_slice(&piece);
        }
        Ok(data)
    }

    /// The object's size and date, or `None` if there is no such key.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ObjectStoreError> {
        let _permit = self.permit().await;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: out.last_modified().and_then(to_system_time),
            })),
            Err(e) => {
                let err = self.explain("head", Some(key), e);
                match err.kind {
                    ObjectErrorKind::NotFound => Ok(None),
                    _ => Err(err),
                }
            }
        }
    }

    /// Every object whose key starts with `prefix`, in key order (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectStoreError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let _permit = self.permit().await;
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.explain("list", Some(prefix), e))?;
            for o in out.contents() {
                if let Some(key) = o.key() {
                    objects.push(ObjectInfo {
                        key: key.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        last_modified: o.last_modified().and_then(to_system_time),
                    });
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(objects)
    }

    /// Deletes `key` (deleting a missing key is not an error, as in S3).
    pub async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        let _permit = self.permit().await;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.explain("delete", Some(key), e))
    }

    /// `s3://BUCKET/KEY`, for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// An SDK error as one line: what was asked, of which object, at which
    /// store, and the store's answer (or why there was none).
    fn explain<E>(
        &self,
        op: &str,
        key: Option<&str>,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> ObjectStoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let what = match key {
            Some(k) => format!("cannot {op} {}", self.url(k)),
            None => format!("cannot {op} s3://{}", self.bucket),
        };
        let at = &self.endpoint;
        let (kind, why) = match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = err.code().map(str::to_string);
                let message = err
                    .message()
                    .map(|m| crate::keys::aws::innermost(&StrError(m.to_string())))
                    .unwrap_or_default();
                let kind = match (code.as_deref(), status) {
                    (Some("NoSuchBucket"), _) => ObjectErrorKind::NoSuchBucket,
                    (Some("NoSuchKey" | "NotFound"), _) | (None, 404) => ObjectErrorKind::NotFound,
                    (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, 403) => {
                        ObjectErrorKind::AccessDenied
                    }
                    (
                        Some(
                            "InvalidAccessKeyId"
                            | "SignatureDoesNotMatch"
                            | "ExpiredToken"
                            | "InvalidToken"
                            | "RequestTimeTooSkewed",
                        ),
                        _,
                    ) => ObjectErrorKind::Credentials,
                    (_, s) if s >= 500 => ObjectErrorKind::Unreachable,
                    _ => ObjectErrorKind::Other,
                };
                let why = match (code, message.is_empty()) {
                    (Some(c), true) => c,
                    (Some(c), false) => format!("{c}: {message}"),
                    (None, _) => format!("HTTP {status}"),
                };
                let why = match kind {
                    ObjectErrorKind::NoSuchBucket => {
                        format!("{why} (bucket {} does not exist there)", self.bucket)
                    }
                    ObjectErrorKind::Unreachable => {
                        format!("{why} (after {MAX_ATTEMPTS} attempts)")
                    }
                    _ => why,
                };
                (kind, why)
            }
            SdkError::TimeoutError(_) => (
                ObjectErrorKind::Unreachable,
                format!("timed out (after {MAX_ATTEMPTS} attempts)"),
            ),
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => (
                ObjectErrorKind::Unreachable,
                format!(
                    "cannot reach it: {} (after {MAX_ATTEMPTS} attempts)",
                    crate::keys::aws::innermost(&err)
                ),
            ),
            _ => (ObjectErrorKind::Other, crate::keys::aws::innermost(&err)),
        };
        ObjectStoreError {
            kind,
            message: format!("{what} at {at}: {why}").replace('\n', " "),
        }
    }
}

/// A message as an error, to run it through the one-line cleanup.
#[derive(Debug)]
struct StrError(String);
impl std::fmt::Display for StrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StrError {}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// `--s3-region`, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the
/// profile's `region`, then us-east-1 (never the instance metadata service:
/// off EC2 it is a stall and three warnings).
fn region_chain(options: &S3Options) -> aws_config::meta::region::RegionProviderChain {
    use aws_config::meta::region::RegionProviderChain;
    let flag = options.region.clone().map(aws_config::Region::new);
    let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = &options.profile {
        profile = profile.profile_name(p);
    }
    RegionProviderChain::first_try(flag)
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(profile.build())
        .or_else(DEFAULT_REGION)
}

/// An explicit profile's credentials only; else the AWS default chain (as
/// the KMS client uses it).
fn credentials(profile: Option<&str>) -> aws_config::meta::credentials::CredentialsProviderChain {
    use aws_config::meta::credentials::CredentialsProviderChain;
    match profile {
        Some(p) => CredentialsProviderChain::first_try(
            "Profile",
            aws_config::profile::ProfileFileCredentialsProvider::builder()
                .profile_name(p)
                .build(),
        ),
        None => crate::keys::aws::credentials_chain(None),
    }
}

async fn check_credentials(
    shared: &aws_config::SdkConfig,
    profile: Option<&str>,
    describe: &str,
) -> Result<(), ObjectStoreError> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_credential_types::provider::error::CredentialsError;
    let Some(provider) = shared.credentials_provider() else {
        return Ok(());
    };
    let message = match provider.provide_credentials().await {
        Ok(_) => return Ok(()),
        Err(CredentialsError::CredentialsNotLoaded(_)) => match profile {
            Some(p) => format!(
                "no S3 credentials for {describe}: profile {p} has none (see AWS_SHARED_CREDENTIALS_FILE / ~/.aws/credentials)"
            ),
            None => format!(
                "no S3 credentials for {describe}: none in the environment (AWS_ACCESS_KEY_ID) and no default profile; pass --s3-profile NAME"
            ),
        },
        Err(e) => format!(
            "cannot load the S3 credentials{}: {}",
            profile
                .map(|p| format!(" of profile {p}"))
                .unwrap_or_default(),
            crate::keys::aws::innermost(&e)
        ),
    };
    Err(ObjectStoreError {
        kind: ObjectErrorKind::Credentials,
        message,
    })
}
