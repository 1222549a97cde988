//! `envol key ...`: thin clients of the KMS API for the key operations users
//! do most, with the same endpoint/profile handling as the key client.
//! Anything else: the AWS CLI works against the same endpoint.

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::KeyMetadata;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::error::{CliError, CliResult};
use super::key_inventory::{
    Inventory, UsageArg, meta_json, print_inventory, print_versions, read_usage, versions_of,
};
use super::runtime::runtime;
use super::target::KmsArgs;
use crate::keys::aws::AwsKeyClient;
use crate::keys::{KeyErrorKind, KeyService};

/// `--json`: print the result as one JSON object (or array, for `list`)
/// instead of text, for scripts.
#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print the result as JSON (one object; an array for `list`).
    #[arg(long)]
    pub json: bool,
}

/// The key a command acts on.
#[derive(Debug, Args, Clone)]
pub struct KeyArg {
    /// The key: key id, key ARN, alias/NAME or alias ARN.
    #[arg(value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a master key (optionally with an alias, and users allowed to use it for volumes).
    Create {
        /// Alias for the key: NAME or alias/NAME.
        #[arg(long)]
        alias: Option<String>,
        /// Free-text description stored with the key.
        #[arg(long, default_value = "")]
        description: String,
        /// Users (NAME or IAM ARN) allowed to create and attach volumes with this key.
        #[arg(long = "allow", value_name = "USER")]
        allow: Vec<String>,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// List keys: aliases, state, key versions, monthly cost (with the total) and, with --kms-data, last use and uses in 30 days.
    List {
        #[command(flatten)]
        usage: UsageArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Show one key, with its versions (creation dates, which is current) and monthly cost.
    Describe {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        usage: UsageArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Enable a disabled key.
    Enable {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Disable a key: every volume under it stops attaching until it is enabled.
    Disable {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Schedule a key's destruction after 7-30 days; then its volumes are unreadable forever.
    ScheduleDeletion {
        #[command(flatten)]
        key: KeyArg,
        /// Days until the key material is destroyed (7-30).
        #[arg(long, default_value_t = 30, value_name = "N")]
        days: i32,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Cancel a scheduled deletion (the key stays disabled until enabled).
    CancelDeletion {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Rotate a key now: new data keys are wrapped under fresh material; everything wrapped before still unwraps.
    Rotate {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Rotate a key automatically every N days (90-2560).
    EnableRotation {
        #[command(flatten)]
        key: KeyArg,
        /// Days between automatic rotations (90-2560).
        #[arg(long = "period-days", default_value_t = 365, value_name = "N")]
        period_days: i32,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        kms: KmsArgs,
    },
}

/// What a volume's users need on its key.
const VOLUME_ACTIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
];

/// One line: what failed, on which key, and why (the KMS's error code and
/// message, or why it could not be reached).
fn sdk_err<E>(
    client: &AwsKeyClient,
    what: &str,
    key: &str,
    e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> CliError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let error = client.explain(e);
    let hint = match error.kind {
        KeyErrorKind::Credentials => {
            format!(" (check the credentials used for {})", client.describe())
        }
        _ => String::new(),
    };
    CliError(format!("{what} {key}: {error}{hint}"))
}

fn alias_name(a: &str) -> String {
    if a.starts_with("alias/") {
        a.to_string()
    } else {
        format!("alias/{a}")
    }
}

fn print_meta(m: &KeyMetadata, aliases: &[String]) {
    say!("key {}", m.arn().unwrap_or_default());
    say!("  id:          {}", m.key_id());
    if !aliases.is_empty() {
        say!("  aliases:     {}", aliases.join(", "));
    }
    say!(
        "  state:       {}",
        m.key_state().map(|s| s.as_str()).unwrap_or("?")
    );
    if let Some(d) = m.description().filter(|d| !d.is_empty()) {
        say!("  description: {d}");
    }
    if let Some(d) = m.deletion_date() {
        let when = chrono::DateTime::from_timestamp(d.secs(), 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        say!("  deletion:    scheduled for {when}");
    }
}

pub fn run(cmd: KeyCommand) -> CliResult {
    let kms_args = match &cmd {
        KeyCommand::Create { kms, .. }
        | KeyCommand::List { kms, .. }
        | KeyCommand::Describe { kms, .. }
        | KeyCommand::Enable { kms, .. }
        | KeyCommand::Disable { kms, .. }
        | KeyCommand::ScheduleDeletion { kms, .. }
        | KeyCommand::CancelDeletion { kms, .. }
        | KeyCommand::Rotate { kms, .. }
        | KeyCommand::EnableRotation { kms, .. } => kms.clone(),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let client = AwsKeyClient::new(&kms_args.target())
            .await
            .map_err(|e| CliError(e.to_string()))?;
        run_with(&client, cmd).await
    })
}

async fn aliases_of(client: &aws_sdk_kms::Client, key_id: &str) -> Vec<String> {
    match client.list_aliases().key_id(key_id).send().await {
        Ok(out) => out
            .aliases()
            .iter()
            .filter_map(|a| a.alias_name().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn rfc3339(d: Option<&aws_sdk_kms::primitives::DateTime>) -> Option<String> {
    d.and_then(|d| chrono::DateTime::from_timestamp(d.secs(), 0))
        .map(|t| t.to_rfc3339())
}

/// The key's metadata after a state change, for `--json`.
async fn describe_json(client: &AwsKeyClient, key: &str) -> Result<Value, CliError> {
    let d = client
        .sdk()
        .describe_key()
        .key_id(key)
        .send()
        .await
        .map_err(|e| sdk_err(client, "cannot describe", key, e))?;
    let m = d
        .key_metadata()
        .ok_or_else(|| CliError("DescribeKey returned no metadata".into()))?;
    let aliases = aliases_of(client.sdk(), m.key_id()).await;
    Ok(meta_json(m, &aliases))
}

async fn run_with(kms: &AwsKeyClient, cmd: KeyCommand) -> CliResult {
    let client = kms.sdk();
    match cmd {
        KeyCommand::Create {
            alias,
            description,
            allow,
            out,
            ..
        } => {
            let created = client
                .create_key()
                .description(&description)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot create", "a key", e))?;
            let meta = created
                .key_metadata()
                .ok_or_else(|| CliError("CreateKey returned no metadata".into()))?;
            let arn = meta.arn().unwrap_or_default().to_string();
            if !allow.is_empty() {
                // The key ARN names the account: arn:aws:kms:REGION:ACCOUNT:key/ID.
                let account = arn.split(':').nth(4).unwrap_or_default().to_string();
                let policy = client
                    .get_key_policy()
                    .key_id(&arn)
                    .send()
                    .await
                    .map_err(|e| sdk_err(kms, "cannot read the policy of", &arn, e))?;
                let mut doc: Value = serde_json::from_str(policy.policy().unwrap_or("{}"))
                    .map_err(|e| CliError(format!("the key policy of {arn} is not JSON: {e}")))?;
                let users: Vec<String> = allow
                    .iter()
                    .map(|u| {
                        if u.starts_with("arn:") {
                            u.clone()
                        } else {
                            format!("arn:aws:iam::{account}:user/{u}")
                        }
                    })
                    .collect();
                let stmt = json!({
                    "Sid": "Allow use of the key for envol volumes",
                    "Effect": "Allow",
                    "Principal": {"AWS": users},
                    "Action": VOLUME_ACTIONS,
                    "Resource": "*",
                });
                match doc["Statement"].as_array_mut() {
                    Some(list) => list.push(stmt),
                    None => doc["Statement"] = json!([stmt]),
                }
                client
                    .put_key_policy()
                    .key_id(&arn)
                    .policy_name("default")
                    .policy(doc.to_string())
                    .send()
                    .await
                    .map_err(|e| sdk_err(kms, "cannot set the policy of", &arn, e))?;
            }
            let mut aliases = Vec::new();
            if let Some(a) = alias {
                let name = alias_name(&a);
                client
                    .create_alias()
                    .alias_name(&name)
                    .target_key_id(meta.key_id())
                    .send()
                    .await
                    .map_err(|e| sdk_err(kms, "cannot create alias", &name, e))?;
                aliases.push(name);
            }
            if out.json {
                say!("{}", meta_json(meta, &aliases));
            } else {
                print_meta(meta, &aliases);
                if !allow.is_empty() {
                    say!("  allowed:     {}", allow.join(", "));
                }
            }
            Ok(())
        }
        KeyCommand::List { usage, out, .. } => {
            let usage = read_usage(&usage)?;
            let mut inventory = Inventory::default();
            let mut marker = None;
            loop {
                let page = client
                    .list_keys()
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err(kms, "cannot list", "keys", e))?;
                for k in page.keys() {
                    let id = k.key_id().unwrap_or_default();
                    let aliases = aliases_of(client, id).await;
                    let meta = match client.describe_key().key_id(id).send().await {
                        Ok(d) => d.key_metadata().cloned(),
                        // Keys the caller may not describe are listed by id only.
                        Err(_) => None,
                    };
                    let meta = match meta {
                        Some(m) => m,
                        None => KeyMetadata::builder()
                            .key_id(id)
                            .set_arn(k.key_arn().map(str::to_string))
                            .build()
                            .map_err(|e| CliError(e.to_string()))?,
                    };
                    // Versions the caller may not list leave the key unpriced.
                    let versions = versions_of(client, id).await.ok();
                    inventory.add(meta, aliases, versions, usage.as_ref());
                }
                if !page.truncated() {
                    break;
                }
                marker = page.next_marker().map(str::to_string);
            }
            if out.json {
                say!("{}", inventory.json(usage.as_ref()));
            } else {
                print_inventory(&inventory, usage.as_ref());
            }
            Ok(())
        }
        KeyCommand::Describe {
            key: KeyArg { key },
            usage,
            out,
            ..
        } => {
            let usage = read_usage(&usage)?;
            let d = client
                .describe_key()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot describe", &key, e))?;
            let m = d
                .key_metadata()
                .ok_or_else(|| CliError("DescribeKey returned no metadata".into()))?;
            let aliases = aliases_of(client, m.key_id()).await;
            let versions = versions_of(client, m.key_id())
                .await
                .map_err(|e| sdk_err(kms, "cannot list the versions of", &key, e))?;
            let mut inventory = Inventory::default();
            inventory.add(m.clone(), aliases.clone(), Some(versions), usage.as_ref());
            if out.json {
                let mut v = meta_json(m, &aliases);
                if let (Some(obj), Value::Object(row)) =
                    (v.as_object_mut(), inventory.key_json(0, usage.as_ref()))
                {
                    obj.extend(row);
                }
                say!("{v}");
            } else {
                print_meta(m, &aliases);
                print_versions(&inventory, 0, usage.as_ref());
            }
            Ok(())
        }
        KeyCommand::Enable {
            key: KeyArg { key },
            out,
            ..
        } => {
            client
                .enable_key()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot enable", &key, e))?;
            if out.json {
                say!("{}", describe_json(kms, &key).await?);
            } else {
                say!("{key} is enabled.");
            }
            Ok(())
        }
        KeyCommand::Disable {
            key: KeyArg { key },
            out,
            ..
        } => {
            client
                .disable_key()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot disable", &key, e))?;
            if out.json {
                say!("{}", describe_json(kms, &key).await?);
            } else {
                say!(
                    "{key} is disabled: volumes under it cannot attach until it is enabled again (kms:EnableKey: `envol key enable {key}`)."
                );
            }
            Ok(())
        }
        KeyCommand::ScheduleDeletion {
            key: KeyArg { key },
            days,
            out,
            ..
        } => {
            let scheduled = client
                .schedule_key_deletion()
                .key_id(&key)
                .pending_window_in_days(days)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot schedule the deletion of", &key, e))?;
            let when = rfc3339(scheduled.deletion_date());
            if out.json {
                say!(
                    "{}",
                    json!({
                        "KeyId": scheduled.key_id(),
                        "KeyState": scheduled.key_state().map(|s| s.as_str()),
                        "DeletionDate": scheduled.deletion_date().map(|d| d.secs()),
                        "PendingWindowInDays": scheduled.pending_window_in_days(),
                    })
                );
            } else {
                say!(
                    "{key} will be destroyed at {}; every volume under it then becomes unreadable.",
                    when.as_deref().unwrap_or("(unknown)")
                );
                say!(
                    "Until then, a principal allowed kms:CancelKeyDeletion keeps it: `envol key cancel-deletion {key}`."
                );
            }
            Ok(())
        }
        KeyCommand::CancelDeletion {
            key: KeyArg { key },
            out,
            ..
        } => {
            client
                .cancel_key_deletion()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot cancel the deletion of", &key, e))?;
            if out.json {
                say!("{}", describe_json(kms, &key).await?);
            } else {
                say!(
                    "{key} is no longer scheduled for deletion; it stays disabled until enabled (kms:EnableKey: `envol key enable {key}`)."
                );
            }
            Ok(())
        }
        KeyCommand::Rotate {
            key: KeyArg { key },
            out,
            ..
        } => {
            let rotated = client
                .rotate_key_on_demand()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot rotate", &key, e))?;
            let arn = rotated.key_id().unwrap_or(&key).to_string();
            if out.json {
                say!("{}", json!({ "KeyId": arn, "Rotated": true }));
            } else {
                say!("{key} rotated: new data keys are wrapped under its new version.");
                say!(
                    "Volumes wrapped before still attach; `envol volume rewrap PATH` moves one to the new version."
                );
            }
            Ok(())
        }
        KeyCommand::EnableRotation {
            key: KeyArg { key },
            period_days,
            out,
            ..
        } => {
            client
                .enable_key_rotation()
                .key_id(&key)
                .rotation_period_in_days(period_days)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot enable rotation of", &key, e))?;
            let status = client
                .get_key_rotation_status()
                .key_id(&key)
                .send()
                .await
                .map_err(|e| sdk_err(kms, "cannot read the rotation status of", &key, e))?;
            let next = rfc3339(status.next_rotation_date());
            if out.json {
                say!(
                    "{}",
                    json!({
                        "KeyId": status.key_id(),
                        "KeyRotationEnabled": status.key_rotation_enabled(),
                        "RotationPeriodInDays": status.rotation_period_in_days(),
                        "NextRotationDate": next,
                    })
                );
            } else {
                say!(
                    "{key} rotates every {period_days} days; next rotation at {}.",
                    next.as_deref().unwrap_or("(unknown)")
                );
            }
            Ok(())
        }
    }
}
