//! The test S3 server: radosgw of the test run's Ceph cluster (started by
//! scripts/test.sh with `WITH_RGW=1`, named by `ENVOL_TEST_S3_ENDPOINT`,
//! `ENVOL_TEST_S3_ACCESS_KEY`, `ENVOL_TEST_S3_SECRET_KEY`), driven from the
//! tests with the AWS CLI — a real client, independent of envol's. Without
//! it the tests fail with an instruction: they never skip.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::volume::{Fixture, output_with_timeout};

/// The AWS profile the tests write for envol's S3 client (`--s3-profile`).
pub const S3_PROFILE: &str = "envol-test-s3";

/// radosgw, as the test user.
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// An object as the AWS CLI lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

impl S3 {
    /// The S3 server of this test run; panics with what to do when there is none.
    pub fn from_env() -> S3 {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        match (
            var("ENVOL_TEST_S3_ENDPOINT"),
            var("ENVOL_TEST_S3_ACCESS_KEY"),
            var("ENVOL_TEST_S3_SECRET_KEY"),
        ) {
            (Some(endpoint), Some(access_key), Some(secret_key)) => S3 {
                endpoint,
                access_key,
                secret_key,
            },
            _ => panic!(
                "no test S3 server: start a cluster with `WITH_RGW=1 scripts/micro-ceph.sh up DIR`, source DIR/env (ENVOL_TEST_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY), or run scripts/test.sh"
            ),
        }
    }

    /// The same user at another endpoint (a radosgw of the test's own).
    pub fn at(&self, endpoint: &str) -> S3 {
        S3 {
            endpoint: endpoint.to_string(),
            ..self.clone()
        }
    }

    /// `aws --endpoint-url … ARGS` as the test user, nothing else from the
    /// environment. Checksums only where required: radosgw 16 refuses the
    /// trailers newer clients add by default.
    pub fn aws(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("aws");
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
            .env("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["--endpoint-url", &self.endpoint])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = output_with_timeout(&mut self.aws(args), Duration::from_secs(120));
        assert!(
            out.status.success(),
            "aws {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A new bucket no other test uses.
    pub fn new_bucket(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let bucket = format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id());
        self.run(&["s3api", "create-bucket", "--bucket", &bucket]);
        bucket
    }

    /// Every object under `prefix` (all pages).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Listed> {
        let out = self.run(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            bucket,
            "--prefix",
            prefix,
            "--output",
            "json",
        ]);
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("list-objects-v2 output: {e}"));
        v["Contents"]
            .as_array()
            .map(|objects| {
                objects
                    .iter()
                    .map(|o| Listed {
                        key: o["Key"].as_str().unwrap().to_string(),
                        size: o["Size"].as_u64().unwrap(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The object's bytes.
    pub fn get(&self, bucket: &str, key: &str, scratch: &Path) -> Vec<u8> {
        self.run(&[
            "s3api",
            "get-object",
            "--bucket",
            bucket,
            "--key",
            key,
            scratch.to_str().unwrap(),
        ]);
        std::fs::read(scratch).unwrap()
    }

    /// Replaces the object's bytes.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8], scratch: &Path) {
        std::fs::write(scratch, body).unwrap();
        self.run(&[
            "s3api",
            "put-object",
            "--bucket",
            bucket,
            "--key",
            key,
            "--body",
            scratch.to_str().unwrap(),
        ]);
    }

    /// Appends a profile with the test user's keys to an AWS credentials
    /// file (envol's `--s3-profile`; the KMS keeps its own profiles there).
    pub fn write_profile(&self, credentials_file: &Path) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(credentials_file)
            .unwrap();
        write!(
            f,
            "\n[{S3_PROFILE}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key, self.secret_key
        )
        .unwrap();
    }

    /// envol's S3 flags for this server.
    pub fn envol_args(&self) -> Vec<String> {
        vec![
            "--endpoint-url".into(),
            self.endpoint.clone(),
            "--s3-profile".into(),
            S3_PROFILE.into(),
        ]
    }
}

/// What every snapshot test starts from: a KMS fixture with a key, the
/// test cluster's radosgw (its credentials written as the fixture's AWS
/// profile for S3) and a new bucket named from `bucket_prefix`.
pub fn fixture_with_bucket(bucket_prefix: &str) -> (Fixture, S3, String) {
    let fx = Fixture::new();
    let s3 = S3::from_env();
    s3.write_profile(&fx.aws_home.path().join("credentials"));
    let bucket = s3.new_bucket(bucket_prefix);
    (fx, s3, bucket)
}
