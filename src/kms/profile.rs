//! Writing credentials as an AWS profile, so the AWS CLI, boto3, the SDKs
//! and envol's own key client find them by `--profile NAME`.
//!
//! Honours `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` as the AWS
//! tools do (defaults `~/.aws/credentials` and `~/.aws/config`). The named
//! section is replaced if present, appended otherwise; every other line of
//! the files is kept as it was. Files are replaced atomically (write to a
//! temporary file, then rename) and the credentials file is mode 0600.
//!
//! A profile is removed by its access key: when a user goes, so do the
//! profiles holding that user's keys (`envol kms user remove`).

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
    upsert_section(&config_file, &config_section(name), &conf)?;
    Ok(WrittenProfile {
        credentials_file,
        config_file,
    })
}

/// The config-file section of profile `name` (`[default]` is the exception
/// to `[profile NAME]`).
fn config_section(name: &str) -> String {
    if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    }
}

/// Removes every profile whose `aws_access_key_id` is one of `key_ids`: its
/// section in the credentials file and its section in the config file.
/// Returns the names of the profiles removed (none if the files are absent).
pub fn remove_profiles_with_keys(key_ids: &[String]) -> Result<Vec<String>, String> {
    let credentials_file = credentials_path()?;
    let creds = read_or_empty(&credentials_file)?;
    let names: Vec<String> = sections(&creds)
        .into_iter()
        .filter(|(_, body)| {
            body.iter().any(|line| {
                line.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "aws_access_key_id" && key_ids.iter().any(|id| id == v.trim())
                })
            })
        })
        .map(|(name, _)| name)
        .collect();
    if names.is_empty() {
        return Ok(names);
    }
    let mut new_creds = creds;
    for name in &names {
        new_creds = remove_section(&new_creds, name);
    }
    write_atomically(&credentials_file, &new_creds)?;
    let config_file = config_path()?;
    let config = read_or_empty(&config_file)?;
    let mut new_config = config.clone();
    for name in &names {
        new_config = remove_section(&new_config, &config_section(name));
    }
    if new_config != config {
        write_atomically(&config_file, &new_config)?;
    }
    Ok(names)
}

fn read_or_empty(path: &Path) -> Result<String, String> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Each `[section]` of an INI file with its lines.
fn sections(text: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = section_name(line) {
            out.push((name.to_string(), Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line);
        }
    }
    out
}

/// `old` without `[section]` and its lines.
fn remove_section(old: &str, section: &str) -> String {
    let mut out = String::new();
    let mut in_target = false;
    for line in old.lines() {
        if let Some(name) = section_name(line) {
            in_target = name == section;
            // The blank line written before an appended section goes with it.
            while in_target && out.ends_with("\n\n") {
                out.pop();
            }
        }
        if !in_target {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Replaces (or appends) `[section]` with `lines` in an INI file.
fn upsert_section(path: &Path, section: &str, lines: &[String]) -> Result<(), String> {
    let old = read_or_empty(path)?;
    let new = replace_section(&old, section, lines);
    write_atomically(path, &new)
}

/// Replaces `path` by `content` (mode 0600): a temporary file, synced, then
/// renamed over it, so a crash leaves the old file or the new one.
fn write_atomically(path: &Path, content: &str) -> Result<(), String> {
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
        f.write_all(content.as_bytes())?;
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

    #[test]
    fn removes_only_the_named_section() {
        let old = "# mine\n[default]\nregion = eu-west-1\n[profile a]\nregion = x\n[profile b]\nregion = y\n";
        assert_eq!(
            remove_section(old, "profile a"),
            "# mine\n[default]\nregion = eu-west-1\n[profile b]\nregion = y\n"
        );
        assert_eq!(remove_section(old, "profile c"), old);
        let found = sections(old);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1], ("profile a".to_string(), vec!["region = x"]));
    }
}
