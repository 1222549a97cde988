//! `envol up`: everything on one machine in one command — an embedded KMS,
//! a default master key, a default volume, served over NBD.
//!
//! A second run finds and reuses all of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::serve::{DEFAULT_NBD_ADDR, attach_all, serve_exports};
use super::target::parse_size;
use super::{CliError, CliResult, runtime, shutdown_signal};
use crate::envelope::{self, NewVolume};
use crate::keys::KeyErrorKind;
use crate::keys::embedded::EmbeddedKeys;
use crate::kms::Kms;
use crate::kms::clock::SystemClock;
use crate::kms::datadir::DataDir;
use crate::nbd::Listeners;

pub const DEFAULT_ALIAS: &str = "alias/envol-default";
const EXPORT: &str = "default";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Data directory (default: $XDG_DATA_HOME/envol or ~/.local/share/envol).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Size of the default volume when it is first created.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Unix socket to serve on (default: DIR/envol.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TCP address to serve NBD on.
    #[arg(long, default_value = DEFAULT_NBD_ADDR, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Also serve the embedded KMS's AWS API here (loopback only), for the AWS CLI.
    #[arg(long, value_name = "ADDR")]
    pub kms_listen: Option<SocketAddr>,
}

fn default_data_dir() -> Result<PathBuf, CliError> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("envol"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/envol"))
        .ok_or_else(|| CliError("neither XDG_DATA_HOME nor HOME is set: pass --data DIR".into()))
}

fn private_dir(dir: &Path) -> CliResult {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))
}

/// Opens the embedded KMS, creating it on first run.
fn open_kms(dir: &Path) -> Result<Arc<Kms>, CliError> {
    let data = DataDir::new(dir);
    if data.database().exists() {
        return Ok(Arc::new(Kms::open(&data, Arc::new(SystemClock))?));
    }
    let (kms, access) = Kms::init(&data, "us-east-1", Arc::new(SystemClock))?;
    say!("Created the embedded KMS in {}", dir.display());
    say!(
        "  account {} — root access key (shown once):",
        kms.account_id()
    );
    say!("  aws_access_key_id     = {}", access.access_key_id);
    say!(
        "  aws_secret_access_key = {}",
        access.secret_access_key.as_str()
    );
    Ok(Arc::new(kms))
}

/// Makes sure the default key and its alias exist.
fn ensure_default_key(keys: &EmbeddedKeys) -> Result<String, CliError> {
    match keys.call("DescribeKey", json!({ "KeyId": DEFAULT_ALIAS })) {
        Ok(v) => Ok(v["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap_or_default()
            .to_string()),
        Err(e) if e.kind == KeyErrorKind::NotFound => {
            let created = keys
                .call(
                    "CreateKey",
                    json!({ "Description": "envol default volume key (envol up)" }),
                )
                .map_err(|e| CliError(format!("creating the default key: {e}")))?;
            let id = created["KeyMetadata"]["KeyId"].as_str().unwrap_or_default();
            keys.call(
                "CreateAlias",
                json!({ "AliasName": DEFAULT_ALIAS, "TargetKeyId": id }),
            )
            .map_err(|e| CliError(format!("creating {DEFAULT_ALIAS}: {e}")))?;
            say!("Created master key {DEFAULT_ALIAS}");
            Ok(created["KeyMetadata"]["Arn"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        }
        Err(e) => Err(CliError(format!("{DEFAULT_ALIAS}: {e}"))),
    }
}

fn print_how_to_attach(listeners: &Listeners, volume: &Path) {
    let unix = listeners.unix_path().map(|p| p.display().to_string());
    let tcp = listeners.tcp_addr();
    say!("");
    say!(
        "envol is up: volume {} is served as export {EXPORT:?}.",
        volume.display()
    );
    say!("Attach it with any NBD client:");
    if let Some(addr) = tcp {
        say!(
            "  kernel:   sudo modprobe nbd && sudo nbd-client {} {} /dev/nbd0 -N {EXPORT}",
            addr.ip(),
            addr.port()
        );
        say!("            sudo mkfs.ext4 /dev/nbd0 && sudo mount /dev/nbd0 /mnt");
    }
    if let Some(sock) = &unix {
        say!("  qemu:     qemu-img info 'nbd+unix:///{EXPORT}?socket={sock}'");
        say!(
            "            qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///{EXPORT}?socket={sock}'"
        );
        say!(
            "  nbdfuse:  mkdir -p /tmp/envol && nbdfuse /tmp/envol/disk 'nbd+unix:///{EXPORT}?socket={sock}' &"
        );
        say!("            (then losetup / mkfs / mount /tmp/envol/disk)");
    }
    say!("Stop with Ctrl-C: in-flight requests finish, data is flushed, the data key is wiped.");
}

pub fn run(args: UpArgs) -> CliResult {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => default_data_dir()?,
    };
    private_dir(&data)?;
    let kms = open_kms(&data.join("kms"))?;
    let keys = EmbeddedKeys::as_root(kms.clone());
    let key_arn = ensure_default_key(&keys)?;
    let volumes_dir = data.join("volumes");
    private_dir(&volumes_dir)?;
    let volume_path = volumes_dir.join("default.vol");
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| data.join("envol.sock"));
    if let Some(addr) = args.kms_listen
        && !addr.ip().is_loopback()
    {
        return Err(CliError(format!(
            "refusing to serve the KMS on {addr} without TLS: use a loopback address"
        )));
    }
    let rt = runtime()?;
    rt.block_on(async move {
        if !volume_path.exists() {
            let sb = envelope::create(
                &keys,
                NewVolume {
                    path: &volume_path,
                    size: args.size,
                    sector_size: 4096,
                    key: &key_arn,
                    force: false,
                },
            )
            .await?;
            super::volume::print_created(&volume_path, &sb);
        }
        if let Some(addr) = args.kms_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError(format!("cannot listen on {addr}: {e}")))?;
            say!(
                "The embedded KMS's AWS API is at http://{}",
                listener.local_addr()?
            );
            let kms = kms.clone();
            let shutdown = shutdown_signal();
            tokio::spawn(async move {
                if let Err(e) = crate::kms::http::serve(kms, listener, None, shutdown).await {
                    tracing::error!("embedded KMS API stopped: {e}");
                }
            });
        }
        let exports = attach_all(
            &keys,
            &[super::serve::VolumeArg {
                path: volume_path.clone(),
                name: EXPORT.to_string(),
                read_only: false,
            }],
        )
        .await?;
        serve_exports(exports, Some(&socket), Some(args.listen), |l| {
            print_how_to_attach(l, &volume_path)
        })
        .await
    })
}
