//! Writing credentials as an AWS profile, so the AWS CLI, boto3, the SDKs
//! and envol's own key client find them by `--profile NAME`.
//!
//! Honours `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` as the AWS
//! tools do (defaults `~/.aws/credentials` and `~/.aws/config`). The named
//! section is replaced if present, appended otherwise; every other line of
//! the files is kept as it was. Files are replaced atomically (write to a
//! temporary file, then rename) and the credentials file is mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::iam::AccessKey;

/// Where a profile was written.
#[derive(Debug)]
pub struct WrittenProfile {
    pub credentials_file: PathBuf,
    pub config_file: PathBuf,
}

fn home() -> Result<PathBuf, String> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| "HOME is not set: cannot find ~/.aws".to_string())
}

pub fn credentials_path() -> Result<PathBuf, String> {
    match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(home()?.join(".aws").join("credentials")),
    }
}

pub fn config_path() -> Result<PathBuf, String> {
    match std::env::var_os("AWS_CONFIG_FILE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(home()?.join(".aws").join("config")),
    }
}

/// Profile names end up in INI section headers: keep them simple.
pub fn validate_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@+".contains(&b))
    {
        return Err(format!(
            "invalid profile name {name:?}: use 1-64 of A-Z a-z 0-9 _ - . @ +"
        ));
    }
    Ok(())
}

/// Writes `access` as profile `name` (with `region`, and `endpoint_url` when
/// given) into the shared credentials and config files.
pub fn write_profile(
    name: &str,
    access: &AccessKey,
    region: &str,
    endpoint: Option<&str>,
) -> Result<WrittenProfile, String> {
    validate_profile_name(name)?;
    let credentials_file = credentials_path()?;
    let config_file = config_path()?;
    let creds = vec![
        format!("aws_access_key_id = {}", access.access_key_id),
        format!(
            "aws_secret_access_key = {}",
            access.secret_access_key.as_str()
        ),
    ];
    upsert_section(&credentials_file, name, &creds)?;
    let mut conf = vec![format!("region = {region}")];
    if let Some(e) = endpoint {
        conf.push(format!("endpoint_url = {e}"));
    }
    let section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    upsert_section(&config_file, &section, &conf)?;
    Ok(WrittenProfile {
        credentials_file,
        config_file,
    })
}

/// Replaces (or appends) `[section]` with `lines` in an INI file.
fn upsert_section(path: &Path, section: &str, lines: &[String]) -> Result<(), String> {
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let new = replace_section(&old, section, lines);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("envol-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

fn section_name(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

fn replace_section(old: &str, section: &str, lines: &[String]) -> String {
    let mut out = String::new();
    let mut in_target = false;
    let mut written = false;
    for line in old.lines() {
        if let Some(name) = section_name(line) {
            in_target = name == section;
            if in_target {
                if written {
                    continue; // a duplicate section: drop it
                }
                out.push_str(&format!("[{section}]\n"));
                for l in lines {
                    out.push_str(l);
                    out.push('\n');
                }
                written = true;
                continue;
            }
        }
        if !in_target {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !written {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(&format!("[{section}]\n"));
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_named_section() {
        let old = "[default]\nregion = eu-west-1\n\n[profile a]\nregion = x\nfoo = 1\n[profile b]\nregion = y\n";
        let new = replace_section(old, "profile a", &["region = us-east-1".into()]);
        assert_eq!(
            new,
            "[default]\nregion = eu-west-1\n\n[profile a]\nregion = us-east-1\n[profile b]\nregion = y\n"
        );
        let appended = replace_section(old, "profile c", &["region = z".into()]);
        assert!(appended.starts_with(old));
        assert!(appended.ends_with("\n[profile c]\nregion = z\n"));
        assert_eq!(replace_section("", "x", &["k = v".into()]), "[x]\nk = v\n");
    }
}
