//! `envol snapshot copy SNAPSHOT --to s3://BUCKET[/PREFIX] [--key KEY]`.

use clap::Args;
use serde_json::json;

use super::error::{CliError, CliResult};
use super::s3::S3Args;
use super::target::{KmsArgs, human_size};
use crate::keys::aws::AwsKeyClient;
use crate::snapshot::copy::{Copied, CopyRequest, copy};
use crate::snapshot::{ObjectStore, Place, SnapshotError, SnapshotUrl};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The snapshot: s3://BUCKET[/PREFIX]/snap-ID.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,
    /// Where the copy goes: s3://BUCKET[/PREFIX] (same endpoint and S3 credentials as the source).
    #[arg(long, value_name = "S3_URL")]
    to: String,
    /// Re-encrypt under a new data key generated under this master key (key id, ARN, alias/NAME): a new lineage. Needs kms:GenerateDataKeyWithoutPlaintext and kms:Decrypt on it. Default: the same data key (chunks copied as they are).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    kms: KmsArgs,
    #[command(flatten)]
    s3: S3Args,
}

pub fn run(rt: &tokio::runtime::Runtime, args: CopyArgs) -> CliResult {
    let source = SnapshotUrl::parse(&args.snapshot).map_err(SnapshotError::from)?;
    let destination = Place::parse(&args.to).map_err(SnapshotError::from)?;
    let copied = rt.block_on(async {
        let options = args.s3.options();
        let source_store = ObjectStore::connect(&options, &source.place.bucket)
            .await
            .map_err(SnapshotError::from)?;
        let destination_store = if destination.bucket == source.place.bucket {
            source_store.clone()
        } else {
            ObjectStore::connect(&options, &destination.bucket)
                .await
                .map_err(SnapshotError::from)?
        };
        let keys = AwsKeyClient::new(&args.kms.target())
            .await
            .map_err(|e| CliError(e.to_string()))?;
        copy(
            &keys,
            CopyRequest {
                source_store: &source_store,
                source: &source,
                destination_store: &destination_store,
                destination: &destination,
                new_key: args.key.as_deref(),
                quiet: args.quiet || args.json,
            },
        )
        .await
        .map_err(CliError::from)
    })?;
    print_copied(&source, &copied, args.json);
    Ok(())
}

fn print_copied(source: &SnapshotUrl, c: &Copied, as_json: bool) {
    let m = &c.manifest;
    if as_json {
        let v = json!({
            "id": m.id,
            "url": c.url.to_string(),
            "source": source.to_string(),
            "rekeyed": c.rekeyed,
            "key_arn": m.key_arn,
            "volume_uuid": m.volume_uuid,
            "parent": m.parent,
            "chunks": m.chunks.len(),
            "stored_bytes": m.stored_bytes(),
            "objects_added": m.objects_added,
            "bytes_added": m.bytes_added,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    say!("{}", c.url);
    let how = match c.rekeyed {
        true => format!("re-encrypted under {} (a new lineage)", m.key_arn),
        false => "same data key".to_string(),
    };
    eprintln!(
        "  {} chunks ({}); uploaded {} objects, {} ({how}; parent {})",
        m.chunks.len(),
        human_size(m.stored_bytes()),
        m.objects_added,
        human_size(m.bytes_added),
        m.parent.as_deref().unwrap_or("none"),
    );
}
