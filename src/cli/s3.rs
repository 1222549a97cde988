//! Flags of every command that talks to the object store holding snapshots.

use clap::Args;

use crate::snapshot::S3Options;
use crate::snapshot::object_store::DEFAULT_CONCURRENCY;

/// Where the object store is, whose credentials to use, and how many
/// requests at once. Unset flags fall back to the AWS defaults:
/// `AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`, `AWS_REGION`, the shared files.
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// S3 endpoint URL, for radosgw, MinIO, … (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url, or AWS S3); path-style requests when set.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS profile whose credentials sign the S3 requests (only its credentials; default: the AWS default chain). The KMS keeps --profile.
    #[arg(long, value_name = "NAME")]
    pub s3_profile: Option<String>,
    /// S3 region (default: AWS_REGION, the profile's region, or us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// S3 requests (chunk uploads or downloads) in flight at once, 1-256.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY, value_parser = parse_concurrency)]
    pub concurrency: usize,
}

impl S3Args {
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint_url: self.endpoint_url.clone(),
            profile: self.s3_profile.clone(),
            region: self.s3_region.clone(),
            concurrency: self.concurrency,
        }
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: must be a whole number from 1 to 256")),
    }
}
