//! `envol key list` and `key describe`: the key inventory. Per key: its
//! versions (ListKeyRotations, plus the original material), its monthly
//! cost at the price model (`kms::price`), and — where the KMS's data
//! directory is on this machine — its last use and uses in the last 30
//! days, counted from the audit log (`kms::usage`).

use std::path::PathBuf;

use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::operation::list_key_rotations::ListKeyRotationsError;
use aws_sdk_kms::types::{KeyMaterialState, KeyMetadata, RotationsListEntry};
use clap::Args;
use serde_json::{Value, json};

use super::error::CliError;
use crate::kms::datadir::DataDir;
use crate::kms::key_state::KeyState;
use crate::kms::price::{USD_PER_KEY_VERSION_MONTH, monthly_cost_usd};
use crate::kms::usage::{KeyUsage, USAGE_WINDOW_DAYS, UsageReport, key_usage};

/// The price model, in words, for `--json` readers and the table's footer.
const PRICE_MODEL: &str =
    "USD 1 a month per key and per rotated key version; keys pending deletion are not charged";

/// Where usage is read from: the KMS's audit log, on this machine.
#[derive(Debug, Args, Clone)]
pub struct UsageArg {
    /// The KMS's data directory (where `envol kms serve --data` keeps it), to count each key's uses from its audit log; without it, usage is not shown.
    #[arg(long, value_name = "DIR", env = "ENVOL_KMS_DATA")]
    pub kms_data: Option<PathBuf>,
}

/// One version of a key's material.
#[derive(Debug, Clone)]
pub(super) struct Version {
    /// 1 is the original material; each rotation adds one.
    number: usize,
    created: Option<String>,
    /// `None` for the original; `AUTOMATIC` or `ON_DEMAND`.
    rotation_type: Option<String>,
    current: bool,
}

#[derive(Debug)]
pub(super) struct KeyRow {
    meta: KeyMetadata,
    aliases: Vec<String>,
    /// `None`: the caller may not list the key's rotations.
    versions: Option<Vec<Version>>,
    /// `None`: unknown versions, or a state the price model does not know.
    cost_usd: Option<u64>,
    usage: Option<KeyUsage>,
}

#[derive(Debug, Default)]
pub(super) struct Inventory {
    rows: Vec<KeyRow>,
}

fn rfc3339_secs(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339())
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

/// Every rotation of `key_id` (all pages), oldest first.
pub(super) async fn versions_of(
    client: &aws_sdk_kms::Client,
    key_id: &str,
) -> Result<
    Vec<RotationsListEntry>,
    SdkError<ListKeyRotationsError, aws_sdk_kms::config::http::HttpResponse>,
> {
    let mut all = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_key_rotations()
            .key_id(key_id)
            .set_marker(marker.clone())
            .send()
            .await?;
        all.extend(page.rotations().iter().cloned());
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_string);
    }
    all.sort_by_key(|r| r.rotation_date().map(|d| d.secs()));
    Ok(all)
}

/// The key's usage from `--kms-data DIR`'s audit log, if given.
pub(super) fn read_usage(arg: &UsageArg) -> Result<Option<UsageReport>, CliError> {
    let Some(dir) = &arg.kms_data else {
        return Ok(None);
    };
    key_usage(&DataDir::new(dir), chrono::Utc::now().timestamp_millis())
        .map(Some)
        .map_err(|e| CliError(e.to_string()))
}

fn versions(meta: &KeyMetadata, rotations: &[RotationsListEntry]) -> Vec<Version> {
    let named_current = rotations
        .iter()
        .any(|r| r.key_material_state() == Some(&KeyMaterialState::Current));
    let mut out = vec![Version {
        number: 1,
        created: meta.creation_date().and_then(|d| rfc3339_secs(d.secs())),
        rotation_type: None,
        current: rotations.is_empty(),
    }];
    for (i, r) in rotations.iter().enumerate() {
        let last = i + 1 == rotations.len();
        out.push(Version {
            number: i + 2,
            created: r.rotation_date().and_then(|d| rfc3339_secs(d.secs())),
            rotation_type: r.rotation_type().map(|t| t.as_str().to_string()),
            // A KMS that does not say which is current: the newest is.
            current: match named_current {
                true => r.key_material_state() == Some(&KeyMaterialState::Current),
                false => last,
            },
        });
    }
    out
}

/// The key's metadata as `--json` shows it everywhere.
pub(super) fn meta_json(m: &KeyMetadata, aliases: &[String]) -> Value {
    json!({
        "KeyId": m.key_id(),
        "Arn": m.arn(),
        "Aliases": aliases,
        "KeyState": m.key_state().map(|s| s.as_str()),
        "Enabled": m.enabled(),
        "Description": m.description(),
        "CreationDate": m.creation_date().map(|d| d.secs()),
        "DeletionDate": m.deletion_date().map(|d| d.secs()),
    })
}

impl Inventory {
    pub(super) fn add(
        &mut self,
        meta: KeyMetadata,
        aliases: Vec<String>,
        rotations: Option<Vec<RotationsListEntry>>,
        usage: Option<&UsageReport>,
    ) {
        let versions = rotations.map(|r| versions(&meta, &r));
        let state = meta
            .key_state()
            .and_then(|s| s.as_str().parse::<KeyState>().ok());
        let cost_usd = match (state, &versions) {
            (Some(state), Some(v)) => Some(monthly_cost_usd(state, v.len() as u64)),
            _ => None,
        };
        let usage = usage.map(|u| u.of(meta.arn().unwrap_or_default()));
        self.rows.push(KeyRow {
            meta,
            aliases,
            versions,
            cost_usd,
            usage,
        });
    }

    fn total_usd(&self) -> u64 {
        self.rows.iter().filter_map(|r| r.cost_usd).sum()
    }

    fn unpriced(&self) -> usize {
        self.rows.iter().filter(|r| r.cost_usd.is_none()).count()
    }

    /// Row `i`: the metadata, versions, cost and use.
    pub(super) fn key_json(&self, i: usize, usage: Option<&UsageReport>) -> Value {
        let Some(r) = self.rows.get(i) else {
            return Value::Null;
        };
        let mut v = meta_json(&r.meta, &r.aliases);
        v["KeyVersions"] = json!(r.versions.as_ref().map(Vec::len));
        v["Versions"] = match &r.versions {
            Some(list) => Value::Array(
                list.iter()
                    .map(|v| {
                        json!({
                            "Version": v.number,
                            "CreationDate": v.created,
                            "RotationType": v.rotation_type,
                            "Current": v.current,
                        })
                    })
                    .collect(),
            ),
            None => Value::Null,
        };
        v["MonthlyCostUSD"] = json!(r.cost_usd);
        if usage.is_some() {
            let u = r.usage.unwrap_or_default();
            v["LastUsed"] = json!(u.last_used_ms.and_then(rfc3339_ms));
            v["UsesLast30Days"] = json!(u.uses_in_window);
        }
        v
    }

    /// `key list --json`: the keys, the total and what it assumes.
    pub(super) fn json(&self, usage: Option<&UsageReport>) -> Value {
        let keys: Vec<Value> = (0..self.rows.len())
            .map(|i| self.key_json(i, usage))
            .collect();
        let mut v = json!({
            "Keys": keys,
            "TotalMonthlyCostUSD": self.total_usd(),
            "UnpricedKeys": self.unpriced(),
            "PriceModel": PRICE_MODEL,
        });
        if let Some(u) = usage {
            v["UsageWindowDays"] = json!(USAGE_WINDOW_DAYS);
            v["AuditLogStarts"] = json!(u.log_starts_ms.and_then(rfc3339_ms));
        }
        v
    }
}

fn dollars(cost: Option<u64>) -> String {
    cost.map_or_else(|| "?".to_string(), |c| format!("${c}"))
}

fn last_use(u: &KeyUsage) -> String {
    u.last_used_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "never".to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
}

/// Says from when uses are counted if the log starts inside the window.
fn usage_note(usage: &UsageReport) {
    let window_start = chrono::Utc::now().timestamp_millis() - USAGE_WINDOW_DAYS * 86_400_000;
    if let Some(start) = usage.log_starts_ms.filter(|s| *s > window_start) {
        say!(
            "Uses are counted from {}, the oldest line the audit log keeps.",
            rfc3339_ms(start).unwrap_or_default()
        );
    }
}

/// `key list`: one line per key, then the total.
pub(super) fn print_inventory(inv: &Inventory, usage: Option<&UsageReport>) {
    let with_usage = usage.is_some();
    let mut header = format!(
        "{:<36}  {:<15}  {:>8}  {:>7}",
        "KEY ID", "STATE", "VERSIONS", "$/MONTH"
    );
    if with_usage {
        header.push_str(&format!("  {:<16}  {:>8}", "LAST USE", "USES/30D"));
    }
    header.push_str("  ALIASES");
    say!("{header}");
    for r in &inv.rows {
        let mut line = format!(
            "{:<36}  {:<15}  {:>8}  {:>7}",
            r.meta.key_id(),
            r.meta.key_state().map(|s| s.as_str()).unwrap_or("-"),
            r.versions
                .as_ref()
                .map_or_else(|| "?".to_string(), |v| v.len().to_string()),
            dollars(r.cost_usd),
        );
        if with_usage {
            let u = r.usage.unwrap_or_default();
            line.push_str(&format!("  {:<16}  {:>8}", last_use(&u), u.uses_in_window));
        }
        line.push_str(&format!("  {}", r.aliases.join(",")));
        say!("{}", line.trim_end());
    }
    let versions: usize = inv
        .rows
        .iter()
        .filter_map(|r| r.versions.as_ref().map(Vec::len))
        .sum();
    say!(
        "Total: ${} a month for {} keys with {versions} key versions (${USD_PER_KEY_VERSION_MONTH} a month per key and per rotated version; keys pending deletion are free).",
        inv.total_usd(),
        inv.rows.len() - inv.unpriced(),
    );
    if inv.unpriced() > 0 {
        say!(
            "{} keys are not priced: their versions could not be listed (kms:ListKeyRotations) or their state is not one the price model knows.",
            inv.unpriced()
        );
    }
    match usage {
        Some(u) => usage_note(u),
        None => say!(
            "Last use and uses in {USAGE_WINDOW_DAYS} days: give --kms-data DIR (the KMS's data directory, read as its user)."
        ),
    }
}

/// `key describe`: the versions of row `i`, its cost and use.
pub(super) fn print_versions(inv: &Inventory, i: usize, usage: Option<&UsageReport>) {
    let Some(r) = inv.rows.get(i) else { return };
    if let Some(list) = &r.versions {
        say!(
            "  versions:    {} ({} a month)",
            list.len(),
            dollars(r.cost_usd)
        );
        for v in list {
            let line = format!(
                "    {:>3}  {:<25}  {:<9}{}",
                v.number,
                v.created.as_deref().unwrap_or("?"),
                v.rotation_type.as_deref().unwrap_or("ORIGINAL"),
                if v.current { "  current" } else { "" }
            );
            say!("{}", line.trim_end());
        }
    }
    if let (Some(u), Some(report)) = (r.usage, usage) {
        say!("  last use:    {}", last_use(&u));
        say!("  uses in {USAGE_WINDOW_DAYS} days: {}", u.uses_in_window);
        usage_note(report);
    }
}
