//! Flags shared by every command that talks to a KMS, and volume sizes.

use clap::Args;

use crate::keys::aws::KmsTarget;

/// Where the KMS is and whose credentials to use. Unset flags fall back to
/// the AWS defaults: `AWS_ENDPOINT_URL_KMS`, `AWS_PROFILE`, `AWS_REGION`,
/// the shared config and credentials files.
#[derive(Debug, Args, Clone)]
pub struct KmsArgs {
    /// KMS endpoint URL (default: AWS_ENDPOINT_URL_KMS, the profile's endpoint_url, or AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// AWS profile whose credentials sign the requests (default: AWS_PROFILE).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Region (default: AWS_REGION, the profile's region, or us-east-1).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

impl KmsArgs {
    pub fn target(&self) -> KmsTarget {
        KmsTarget {
            endpoint: self.endpoint.clone(),
            profile: self.profile.clone(),
            region: self.region.clone(),
        }
    }
}

/// Parses `10G`, `512M`, `4096`, `1T`, `64K` (binary units; an optional
/// trailing `iB`/`B` is accepted: `10GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use bytes or a K/M/G/T suffix, e.g. 10G"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {s:?}: must be positive and below 16 EiB"))
}

/// `1073741824` → `1 GiB`, for people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
