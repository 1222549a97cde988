//! `envol snapshot create | list | describe | delete`, and the `volume
//! restore` that `volume.rs` hands over.

use clap::Subcommand;
use serde_json::json;

use super::address::CephArgs;
use super::control::ControlArgs;
use super::error::{CliError, CliResult};
use super::runtime::runtime;
use super::s3::S3Args;
use super::snapshot_attached::{DEFAULT_COPY_LIMIT_MIB, ThroughControlSocket};
use super::target::{KmsArgs, human_size};
use crate::envelope::VolumeAddress;
use crate::keys::aws::AwsKeyClient;
use crate::snapshot::catalog::{self, Deleted, Listed};
use crate::snapshot::{
    self, Created, Manifest, Method, ObjectStore, Place, Restored, SnapshotError, SnapshotUrl,
};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of a volume into S3 (incremental: only chunks changed since the volume's last snapshot there are uploaded); prints its URL.
    Create {
        /// The volume: a file, or rbd:POOL/IMAGE. If a server has it attached, the snapshot is taken through that server's control socket (one point in time; writes go on meanwhile).
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Where to keep it: s3://BUCKET[/PREFIX] (every snapshot there shares chunks).
        #[arg(long, value_name = "S3_URL")]
        to: String,
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
        /// The control socket of the server that has the volume attached (as `envol serve` printed it; the default as for `envol attach`).
        #[command(flatten)]
        control: ControlArgs,
        /// For a file volume attached by a server: the most MiB of chunks the server copies aside for writes during the upload; more stops the snapshot (never a write).
        #[arg(long, value_name = "MIB", default_value_t = DEFAULT_COPY_LIMIT_MIB)]
        copy_limit: u64,
    },
    /// List the complete snapshots in s3://BUCKET[/PREFIX], oldest first (what their manifests say; no KMS call).
    List {
        /// The place: s3://BUCKET[/PREFIX].
        #[arg(value_name = "S3_URL")]
        place: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Show a snapshot's manifest (no KMS call: not authenticated; a restore is).
    Describe {
        /// s3://BUCKET[/PREFIX]/snap-ID, as `snapshot create` printed it.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Copy a snapshot into another place (bucket or prefix) under the same data key, or with --key under a new one (every chunk re-encrypted: a new lineage); prints the copy's URL.
    Copy(super::snapshot_copy::CopyArgs),
    /// Delete a snapshot; chunks other snapshots still reference stay, the rest are deleted.
    Delete {
        /// s3://BUCKET[/PREFIX]/snap-ID.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        s3: S3Args,
    },
}

pub fn run(cmd: SnapshotCommand) -> CliResult {
    let rt = runtime()?;
    match cmd {
        SnapshotCommand::Create {
            volume,
            to,
            json,
            quiet,
            kms,
            ceph,
            s3,
            control,
            copy_limit,
        } => {
            let volume = ceph.volume(&volume)?;
            let servers = ThroughControlSocket {
                control: &control,
                copy_limit: copy_limit.saturating_mul(1 << 20),
            };
            let place = Place::parse(&to).map_err(SnapshotError::from)?;
            let created = rt.block_on(async {
                let store = ObjectStore::connect(&s3.options(), &place.bucket)
                    .await
                    .map_err(SnapshotError::from)?;
                let keys = AwsKeyClient::new(&kms.target())
                    .await
                    .map_err(|e| CliError(e.to_string()))?;
                snapshot::create::create(&keys, &volume, &place, &store, quiet || json, &servers)
                    .await
                    .map_err(CliError::from)
            })?;
            print_created(&volume, &created, json);
            Ok(())
        }
        SnapshotCommand::List { place, json, s3 } => {
            let place = Place::parse(&place).map_err(SnapshotError::from)?;
            let listed = rt.block_on(async {
                let store = ObjectStore::connect(&s3.options(), &place.bucket).await?;
                catalog::list(&store, &place).await
            })?;
            print_list(&place, &listed, json);
            Ok(())
        }
        SnapshotCommand::Describe { snapshot, json, s3 } => {
            let url = SnapshotUrl::parse(&snapshot).map_err(SnapshotError::from)?;
            let manifest = rt.block_on(async {
                let store = ObjectStore::connect(&s3.options(), &url.place.bucket).await?;
                store.check_bucket().await?;
                catalog::fetch_manifest(&store, &url).await
            })?;
            print_described(&url, &manifest, json);
            Ok(())
        }
        SnapshotCommand::Copy(args) => super::snapshot_copy::run(&rt, args),
        SnapshotCommand::Delete { snapshot, json, s3 } => {
            let url = SnapshotUrl::parse(&snapshot).map_err(SnapshotError::from)?;
            let deleted = rt.block_on(async {
                let store = ObjectStore::connect(&s3.options(), &url.place.bucket).await?;
                catalog::delete(&store, &url).await
            })?;
            print_deleted(&url, &deleted, json);
            Ok(())
        }
    }
}

/// `envol volume restore SNAPSHOT --to VOLUME`.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    snapshot: &str,
    to: &str,
    key: Option<&str>,
    lazy: bool,
    json: bool,
    quiet: bool,
    kms: &KmsArgs,
    ceph: &CephArgs,
    s3: &S3Args,
) -> CliResult {
    let url = SnapshotUrl::parse(snapshot).map_err(SnapshotError::from)?;
    let target = ceph.volume(to)?;
    let rt = runtime()?;
    let restored = rt.block_on(async {
        let store = ObjectStore::connect(&s3.options(), &url.place.bucket)
            .await
            .map_err(SnapshotError::from)?;
        let keys = AwsKeyClient::new(&kms.target())
            .await
            .map_err(|e| CliError(e.to_string()))?;
        match lazy {
            true => snapshot::lazy::restore_lazy(&keys, &store, &url, &target, &s3.options()).await,
            false => {
                snapshot::restore::restore_with(&keys, &store, &url, &target, key, quiet || json)
                    .await
            }
        }
        .map_err(CliError::from)
    })?;
    print_restored(&url, &target, &restored, json);
    if lazy && !json {
        say!(
            "  lazily:      no chunk fetched yet; `envol serve {target}` serves it at once and fetches the rest in the background"
        );
    }
    Ok(())
}

fn method_name(method: &Method) -> &'static str {
    match method {
        Method::ChangeTracking => "change-tracking",
        Method::HashCompare { .. } => "hash-compare",
        Method::Full => "full",
    }
}

fn print_created(volume: &VolumeAddress, created: &Created, as_json: bool) {
    let m = &created.manifest;
    if as_json {
        let v = json!({
            "id": m.id,
            "url": created.url.to_string(),
            "volume": volume.to_string(),
            "volume_uuid": m.volume_uuid,
            "created": m.created,
            "parent": m.parent,
            "method": method_name(&created.method),
            "chunks": m.chunks.len(),
            "chunks_read": created.chunks_read,
            "stored_bytes": m.stored_bytes(),
            "objects_added": m.objects_added,
            "bytes_added": m.bytes_added,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    say!("{}", created.url);
    let how = match &created.method {
        Method::ChangeTracking => "changed chunks only (change tracking)",
        Method::HashCompare { .. } => "every chunk compared by hash",
        Method::Full => "full",
    };
    eprintln!(
        "  {} chunks ({}) in the snapshot; uploaded {} objects, {} ({how}; parent {})",
        m.chunks.len(),
        human_size(m.stored_bytes()),
        m.objects_added,
        human_size(m.bytes_added),
        m.parent.as_deref().unwrap_or("none"),
    );
}

fn summary_json(url: &SnapshotUrl, m: &Manifest) -> serde_json::Value {
    json!({
        "id": m.id,
        "url": url.to_string(),
        "created": m.created,
        "volume_uuid": m.volume_uuid,
        "size": m.size,
        "sector_size": m.sector_size,
        "cipher": m.cipher,
        "key_arn": m.key_arn,
        "encryption_context": m.encryption_context,
        "parent": m.parent,
        "chunk_size": m.chunk_size,
        "chunks": m.chunks.len(),
        "stored_bytes": m.stored_bytes(),
        "objects_added": m.objects_added,
        "bytes_added": m.bytes_added,
    })
}

fn print_list(place: &Place, listed: &[Listed], as_json: bool) {
    if as_json {
        let v: Vec<_> = listed
            .iter()
            .map(|l| summary_json(&l.url, &l.manifest))
            .collect();
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if listed.is_empty() {
        say!("no snapshots in {place}");
        return;
    }
    say!(
        "{:<21} {:<20} {:<36} {:>9} {:>7} {:>17} PARENT",
        "ID",
        "CREATED",
        "VOLUME",
        "SIZE",
        "CHUNKS",
        "ADDED"
    );
    for l in listed {
        let m = &l.manifest;
        say!(
            "{:<21} {:<20} {:<36} {:>9} {:>7} {:>17} {}",
            m.id,
            m.created,
            m.volume_uuid,
            human_size(m.size),
            m.chunks.len(),
            format!("{} / {}", m.objects_added, human_size(m.bytes_added)),
            m.parent.as_deref().unwrap_or("-"),
        );
    }
}

fn print_described(url: &SnapshotUrl, m: &Manifest, as_json: bool) {
    if as_json {
        say!(
            "{}",
            serde_json::to_string_pretty(&summary_json(url, m)).unwrap_or_default()
        );
        return;
    }
    say!("snapshot {url}");
    say!("  created:     {}", m.created);
    say!("  volume:      {}", m.volume_uuid);
    say!("  size:        {} ({} bytes)", human_size(m.size), m.size);
    say!("  sector size: {}", m.sector_size);
    say!("  cipher:      {}", m.cipher);
    say!("  key:         {}", m.key_arn);
    say!("  parent:      {}", m.parent.as_deref().unwrap_or("none"));
    say!(
        "  chunks:      {} of {} ({} stored; chunk size {})",
        m.chunks.len(),
        m.chunk_count(),
        human_size(m.stored_bytes()),
        human_size(m.chunk_size)
    );
    say!(
        "  added:       {} objects, {}",
        m.objects_added,
        human_size(m.bytes_added)
    );
}

fn print_deleted(url: &SnapshotUrl, d: &Deleted, as_json: bool) {
    let held: Vec<String> = d.held_by.iter().map(|id| id.to_string()).collect();
    if as_json {
        let v = json!({
            "url": url.to_string(),
            "manifest_deleted": d.manifest,
            "chunks_deleted": d.chunks_deleted,
            "bytes_deleted": d.bytes_deleted,
            "chunks_kept": d.chunks_kept,
            "collection_held_by": held,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if d.manifest {
        say!("Deleted {url}");
    } else {
        say!("Deleted the unfinished upload {url}");
    }
    say!(
        "  chunks deleted: {} ({}); kept (referenced by other snapshots): {}",
        d.chunks_deleted,
        human_size(d.bytes_deleted),
        d.chunks_kept
    );
    if !held.is_empty() {
        say!(
            "  unreferenced chunks not collected: an upload is in progress in the place ({}); if it was interrupted, run its create again or delete it",
            held.join(", ")
        );
    }
}

fn print_restored(url: &SnapshotUrl, target: &VolumeAddress, r: &Restored, as_json: bool) {
    let sb = &r.superblock;
    if as_json {
        let v = json!({
            "volume": target.to_string(),
            "uuid": sb.uuid.to_string(),
            "snapshot": url.to_string(),
            "size": sb.size,
            "sector_size": sb.sector_size,
            "key_arn": sb.key_arn,
            "chunks": r.manifest.chunks.len(),
            "bytes": r.manifest.stored_bytes(),
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    say!("Restored {url} into {target}");
    say!("  uuid:        {}", sb.uuid);
    say!("  size:        {} ({} bytes)", human_size(sb.size), sb.size);
    say!("  sector size: {}", sb.sector_size);
    say!("  key:         {}", sb.key_arn);
    say!(
        "  chunks:      {} ({})",
        r.manifest.chunks.len(),
        human_size(r.manifest.stored_bytes())
    );
}
