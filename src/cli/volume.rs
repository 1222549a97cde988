//! `envol volume create | rewrap | reencrypt | grow | info | restore` (grow in `volume_grow.rs`).

use clap::Subcommand;
use serde_json::json;

use super::address::CephArgs;
use super::error::{CliError, CliResult};
use super::key_change::{key_version, print_key_change};
use super::runtime::runtime;
use super::s3::S3Args;
use super::target::{KmsArgs, human_size, parse_size};
use crate::envelope::{self, Attachers, NewVolume, VolumeAddress};
use crate::keys::aws::AwsKeyClient;
use crate::volume::{
    AttachMode, CHUNK_SIZE, Changes, Slot, StoredChanges, Superblock, SuperblockError,
};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an encrypted volume (a file, or an RBD image) whose data key is wrapped by a KMS key.
    Create {
        /// The volume file to create, or rbd:POOL/IMAGE for an RBD image in Ceph (a file whose name starts with `rbd:` is written ./rbd:...).
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Size of the volume: bytes or K/M/G/T (binary), e.g. 10G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// The master key: key id, key ARN, alias/NAME or alias ARN.
        #[arg(long)]
        key: String,
        /// Cipher sector size in bytes: 4096 (default) or 512.
        #[arg(long, default_value_t = 4096, value_parser = parse_sector_size)]
        sector_size: u32,
        /// Overwrite an existing file or image (its data is lost); refused while it is attached, except an rbd: image attached only read-only (`:ro` serves hold no RBD lock, so they are not seen: stop them first).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Re-wrap the data key under the newest version of its key, or under another key (data untouched).
    Rewrap {
        /// The volume whose data key to re-wrap: a file, or rbd:POOL/IMAGE (a file whose name starts with `rbd:` is written ./rbd:...).
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Move the volume to this key (default: stay on its key, newest version).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Re-encrypt every sector under a new data key from the KMS (a key rotation that covers the data, not only its wrapping), crash-safe and resumable: run it again after an interruption. A volume no server has attached is re-encrypted by the command (it takes the exclusive attachment; unthrottled by default); one a server has attached, inside that server while it serves (--control names it; 64 MiB/s by default), the command following its progress (Ctrl-C leaves it running there). Needs kms:GenerateDataKeyWithoutPlaintext and kms:Decrypt on the new key, kms:Decrypt on the current one.
    Reencrypt {
        /// The volume: a file, or rbd:POOL/IMAGE (a file whose name starts with `rbd:` is written ./rbd:...).
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Generate the new data key under this master key (key id, ARN, alias/NAME; default: the volume's key).
        #[arg(long)]
        key: Option<String>,
        /// At most this many bytes per second: bytes or K/M/G (binary), e.g. 200M (default: as fast as it goes offline, 64M inside a server).
        #[arg(long, value_name = "BYTES/S", value_parser = parse_size)]
        max_rate: Option<u64>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        ceph: CephArgs,
        #[command(flatten)]
        control: super::control::ControlArgs,
    },
    /// Restore a snapshot into a new volume (a file, or rbd:POOL/IMAGE) under the snapshot's key: chunks are copied as stored and verified (SHA-256, and the manifest's authentication, which needs kms:Decrypt on the key). With --key, under a new data key from that key instead: every chunk re-encrypted.
    Restore {
        /// The snapshot: s3://BUCKET[/PREFIX]/snap-ID, as `envol snapshot create` printed it.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// The new volume: a file, or rbd:POOL/IMAGE (refused if it exists).
        #[arg(long, value_name = "VOLUME")]
        to: String,
        /// Restore under a new data key generated under this master key (key id, ARN, alias/NAME): every chunk decrypted and re-encrypted, a new lineage. Needs kms:GenerateDataKeyWithoutPlaintext and kms:Decrypt on it.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Return at once, before any chunk is fetched (EBS-style): `envol serve VOLUME` serves it straight away, fetching a chunk the first time it is read or written and the rest in the background; `volume info` shows the progress. Same key only (not with --key).
        #[arg(long, conflicts_with = "key")]
        lazy: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        ceph: CephArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Grow a volume (a file or rbd:POOL/IMAGE) to a new size, attached or not: a volume a server has attached is grown through that server's control socket (--control). Shrinking is refused.
    Grow(super::volume_grow::GrowArgs),
    /// Show a volume's superblock, both of its copies, and who has it attached (no KMS call, no lock).
    Info {
        /// The volume: a file, or rbd:POOL/IMAGE (a file whose name starts with `rbd:` is written ./rbd:...).
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ceph: CephArgs,
    },
}

fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "4096" => Ok(4096),
        "512" => Ok(512),
        _ => Err(format!("sector size must be 4096 or 512, not {s:?}")),
    }
}

pub fn run(cmd: VolumeCommand) -> CliResult {
    match cmd {
        VolumeCommand::Create {
            volume,
            size,
            key,
            sector_size,
            force,
            kms,
            ceph,
        } => {
            let volume = ceph.volume(&volume)?;
            let rt = runtime()?;
            let sb = rt.block_on(async {
                let client = AwsKeyClient::new(&kms.target())
                    .await
                    .map_err(|e| CliError(e.to_string()))?;
                envelope::create(
                    &client,
                    NewVolume {
                        volume: &volume,
                        size,
                        sector_size,
                        key: &key,
                        force,
                    },
                )
                .await
                .map_err(CliError::from)
            })?;
            print_created(&volume, &sb);
            Ok(())
        }
        VolumeCommand::Rewrap {
            volume,
            key,
            kms,
            ceph,
        } => {
            let volume = ceph.volume(&volume)?;
            let rt = runtime()?;
            let done = rt.block_on(async {
                let client = AwsKeyClient::new(&kms.target())
                    .await
                    .map_err(|e| CliError(e.to_string()))?;
                envelope::rewrap(&client, &volume, key.as_deref())
                    .await
                    .map_err(CliError::from)
            })?;
            let sb = &done.superblock;
            say!("Re-wrapped the data key of {volume}");
            print_key_change(&done.old_key_arn, sb);
            say!("  superblock sequence {}; data untouched", sb.sequence);
            Ok(())
        }
        VolumeCommand::Reencrypt {
            volume,
            key,
            max_rate,
            quiet,
            kms,
            ceph,
            control,
        } => super::volume_reencrypt::run(super::volume_reencrypt::ReencryptArgs {
            volume: &ceph.volume(&volume)?,
            key: key.as_deref(),
            max_rate,
            quiet,
            kms: &kms,
            control: &control,
        }),
        VolumeCommand::Grow(args) => super::volume_grow::run(args),
        VolumeCommand::Info { volume, json, ceph } => info(&ceph.volume(&volume)?, json),
        VolumeCommand::Restore {
            snapshot,
            to,
            key,
            lazy,
            json,
            quiet,
            kms,
            ceph,
            s3,
        } => super::snapshot::restore(
            &snapshot,
            &to,
            key.as_deref(),
            lazy,
            json,
            quiet,
            &kms,
            &ceph,
            &s3,
        ),
    }
}

pub(crate) fn print_created(volume: &VolumeAddress, sb: &Superblock) {
    say!("Created volume {volume}");
    say!("  uuid:        {}", sb.uuid);
    say!("  size:        {} ({} bytes)", human_size(sb.size), sb.size);
    say!("  sector size: {}", sb.sector_size);
    say!("  key:         {}", sb.key_arn);
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| secs.to_string())
}

fn copy_json(slot: Slot, c: &Result<Superblock, SuperblockError>) -> serde_json::Value {
    match c {
        Ok(sb) => {
            json!({"offset": slot.offset(), "valid": true, "sequence": sb.sequence, "error": null})
        }
        Err(e) => {
            json!({"offset": slot.offset(), "valid": false, "sequence": null, "error": e.to_string()})
        }
    }
}

fn copy_text(c: &Result<Superblock, SuperblockError>) -> String {
    match c {
        Ok(sb) => format!("valid (sequence {})", sb.sequence),
        Err(e) => format!("INVALID: {e}"),
    }
}

/// `attached_by` in `volume info --json`: a file's holders by pid, an
/// image's lock owners by Ceph client address.
fn attachers_json(attachers: &Attachers) -> Vec<serde_json::Value> {
    match attachers {
        Attachers::Processes(holders) => holders
            .iter()
            .map(|h| {
                json!({
                    "pid": h.pid,
                    "read_only": h.mode == AttachMode::ReadOnly,
                    "command": h.command,
                })
            })
            .collect(),
        Attachers::CephClients(clients) => clients
            .iter()
            .map(|client| json!({"ceph_client": client, "read_only": false}))
            .collect(),
    }
}

/// The bytes `chunks` chunks of a volume of `size` bytes cover at most.
fn chunk_bytes(chunks: usize, size: u64) -> u64 {
    (chunks as u64).saturating_mul(CHUNK_SIZE).min(size)
}

/// `changes` in `volume info --json`.
fn changes_json(stored: Option<&StoredChanges>, attached: bool, size: u64) -> serde_json::Value {
    let Some(stored) = stored else {
        return serde_json::Value::Null;
    };
    match &stored.changes {
        Changes::Exact { base, chunks } => json!({
            "exact": true,
            "base": base,
            "chunks": chunks.len(),
            "bytes": chunk_bytes(chunks.len(), size),
            "chunk_size": CHUNK_SIZE,
        }),
        Changes::Unknown { reason } => json!({
            "exact": false,
            "reason": reason,
            "tracked_by_attached_server": attached && stored.open_since.is_some(),
            "since": stored.open_since,
        }),
    }
}

/// The `changes:` line of `volume info`.
fn changes_text(stored: &StoredChanges, attached: bool, size: u64) -> String {
    match (&stored.changes, &stored.open_since) {
        (Changes::Exact { base, chunks }, _) => {
            let since = match base {
                Some(b) => format!("since {b}"),
                None => "since creation".into(),
            };
            let n = chunks.len();
            let unit = if n == 1 { "chunk" } else { "chunks" };
            format!("{since}: {n} {unit} ({})", human_size(chunk_bytes(n, size)))
        }
        // Open because a server has it now: exact in that server's memory.
        (Changes::Unknown { .. }, Some(since)) if attached => {
            format!("tracked by the attached server ({since}); recorded when it detaches cleanly")
        }
        (Changes::Unknown { reason }, _) => {
            format!("unknown ({reason}): the next snapshot compares chunk hashes")
        }
    }
}

/// A re-encryption in progress, for `volume info`: bytes done, the rate
/// since it began and the time left at that rate.
fn transition_numbers(sb: &Superblock) -> Option<(u64, f64, Option<f64>)> {
    let t = sb.transition.as_ref()?;
    let done = t.watermark * u64::from(sb.sector_size);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let elapsed = now.saturating_sub(t.started).max(1) as f64;
    let rate = done as f64 / elapsed;
    let eta = (rate > 0.0).then(|| (sb.size - done) as f64 / rate);
    Some((done, rate, eta))
}

fn transition_json(sb: &Superblock) -> serde_json::Value {
    let (Some(t), Some((done, rate, eta))) = (&sb.transition, transition_numbers(sb)) else {
        return serde_json::Value::Null;
    };
    json!({
        "new_key_arn": t.new_key_arn,
        "started": rfc3339(t.started),
        "done_bytes": done,
        "total_bytes": sb.size,
        "hotzone_sectors": t.hotzone.len(),
        "rate_bytes_per_sec": rate,
        "eta_seconds": eta,
    })
}

fn info(volume: &VolumeAddress, as_json: bool) -> CliResult {
    use base64::Engine;
    let inspection = envelope::inspect_with_changes(volume)?;
    let set = &inspection.copies;
    let attachers = envelope::attached_by(volume)?;
    let attached = !attachers.is_empty();
    let sb = set.best().map_err(|e| CliError(format!("{volume}: {e}")))?;
    let wrapped = base64::engine::general_purpose::STANDARD.encode(&sb.wrapped_key);
    let hydration = envelope::hydrate::inspect_hydration(volume)?;
    if as_json {
        let v = json!({
            "path": volume.to_string(),
            "uuid": sb.uuid.to_string(),
            "size": sb.size,
            "sector_size": sb.sector_size,
            "cipher": sb.cipher,
            "data_offset": sb.data_offset,
            "key_arn": sb.key_arn,
            "key_version": key_version(&sb.wrapped_key),
            "encryption_context": sb.encryption_context,
            "wrapped_key": wrapped,
            "created": rfc3339(sb.created),
            "superblocks": {
                "primary": copy_json(Slot::Primary, &set.primary),
                "secondary": copy_json(Slot::Secondary, &set.secondary),
            },
            "attached_by": attachers_json(&attachers),
            "changes": changes_json(inspection.changes.as_ref(), attached, sb.size),
            "reencryption": transition_json(sb),
            "lazy_restore": hydration.as_ref().map(|r| {
                let (fetched, total) = r.progress();
                json!({"snapshot": r.header.source.snapshot, "chunks_fetched": fetched, "chunks": total})
            }),
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    say!("volume {volume}");
    say!("  uuid:        {}", sb.uuid);
    say!("  size:        {} ({} bytes)", human_size(sb.size), sb.size);
    say!("  sector size: {}", sb.sector_size);
    say!("  cipher:      {}", sb.cipher);
    say!("  data offset: {}", sb.data_offset);
    say!("  key:         {}", sb.key_arn);
    if let Some(v) = key_version(&sb.wrapped_key) {
        say!("  key version: {v}");
    }
    let ctx: Vec<String> = sb
        .encryption_context
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    say!("  context:     {}", ctx.join(", "));
    say!("  wrapped key: {wrapped}");
    say!("  created:     {}", rfc3339(sb.created));
    say!(
        "  superblocks: {} {}",
        Slot::Primary,
        copy_text(&set.primary)
    );
    say!(
        "               {} {}",
        Slot::Secondary,
        copy_text(&set.secondary)
    );
    if attachers.is_empty() {
        say!("  attached:    no");
    }
    match &attachers {
        Attachers::Processes(holders) => {
            for h in holders {
                let mode = h.mode.describe();
                match &h.command {
                    Some(command) => say!("  attached:    {mode} by pid {} ({command})", h.pid),
                    None => say!("  attached:    {mode} by pid {}", h.pid),
                }
            }
        }
        // An image's exclusive lock is a writer's: readers hold none.
        Attachers::CephClients(clients) => {
            for client in clients {
                say!("  attached:    read-write by Ceph client {client}");
            }
        }
    }
    if let Some(stored) = &inspection.changes {
        say!("  changes:     {}", changes_text(stored, attached, sb.size));
    }
    if let (Some(t), Some((done, rate, eta))) = (&sb.transition, transition_numbers(sb)) {
        let pct = done as f64 * 100.0 / sb.size as f64;
        say!(
            "  re-encrypting: {} of {} ({pct:.1} %) under a new data key since {}",
            human_size(done),
            human_size(sb.size),
            rfc3339(t.started)
        );
        say!("  new key:     {}", t.new_key_arn);
        let eta = eta.map_or("unknown".to_string(), |s| format!("{s:.0} s"));
        say!(
            "  rate:        {}/s on average since it began; ETA {eta} (`envol volume reencrypt {volume}` continues it)",
            human_size(rate as u64)
        );
    }
    if let Some(r) = &hydration {
        let (fetched, total) = r.progress();
        say!(
            "  restoring:   {fetched} of {total} chunks fetched ({:.1} %) from {} (lazily: `envol serve {volume}` fetches the rest)",
            fetched as f64 * 100.0 / total.max(1) as f64,
            r.header.source.snapshot
        );
    }
    if let Some((slot, _)) = set.damaged() {
        say!(
            "  warning:     the {slot} is invalid; the next read-write attach (`envol serve`) rewrites it from the other copy"
        );
    }
    Ok(())
}
