//! `envol up`: everything on one machine in one command — an embedded KMS,
//! a default master key, a default volume, served over NBD.
//!
//! A second run finds and reuses all of it.
//!
//! The KMS's AWS API is served on loopback too ([`DEFAULT_KMS_ADDR`]), and
//! the account root's access key is written as an AWS profile
//! ([`UP_PROFILE`] by default) whose `endpoint_url` is that listener, so
//! `aws kms list-keys --profile envol-up` works right after `up`. The secret
//! is never printed: the profile file (0600) is where it lives. Each run
//! rewrites the profile from the KMS (the secret is sealed in its database),
//! so it keeps working when the port changes or the file was edited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::error::{CliError, CliResult};
use super::kms_limits::UpKmsLimitArgs;
use super::metrics::MetricsArgs;
use super::runtime::{runtime, shutdown_signal};
use super::serve::{
    DEFAULT_NBD_ADDR, LimitArgs, TlsArgs, TransmissionArg, attach_all, serve_exports,
};
use super::target::parse_size;
use crate::envelope::{self, NewVolume};
use crate::keys::KeyErrorKind;
use crate::keys::aws::UP_PROFILE;
use crate::keys::embedded::EmbeddedKeys;
use crate::kms::clock::SystemClock;
use crate::kms::datadir::DataDir;
use crate::kms::iam::AccessKey;
use crate::kms::{Kms, profile};
use crate::nbd::{Listeners, Server, TlsMode};

pub const DEFAULT_ALIAS: &str = "alias/envol-default";
const EXPORT: &str = "default";
/// Where `up` serves its KMS's AWS API: loopback, next to `envol kms serve`'s
/// 4599 so both can run at once.
pub const DEFAULT_KMS_ADDR: &str = "127.0.0.1:4598";

/// `--kms-listen`: an address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsListen {
    Off,
    At(SocketAddr),
}

fn parse_kms_listen(s: &str) -> Result<KmsListen, String> {
    if s == "none" {
        return Ok(KmsListen::Off);
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:4598, nor `none`"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to serve the KMS on {addr} without TLS: use a loopback address"
        ));
    }
    Ok(KmsListen::At(addr))
}

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
    /// Serve the embedded KMS's AWS API here (loopback only; port 0 picks a free one), or `none`.
    #[arg(long, value_name = "ADDR|none", default_value = DEFAULT_KMS_ADDR, value_parser = parse_kms_listen)]
    pub kms_listen: KmsListen,
    /// The AWS profile to write with the KMS's root credentials and endpoint (not written with --kms-listen none).
    #[arg(long, value_name = "NAME", default_value = UP_PROFILE)]
    pub profile: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Which loop serves connections: `threaded` (the fast path) or `async` (for comparison, as `serve --transmission`).
    #[arg(long, value_enum, value_name = "LOOP", default_value_t = TransmissionArg::Threaded)]
    pub transmission: TransmissionArg,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub kms_limits: UpKmsLimitArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics: the exports' and the embedded KMS's, on one endpoint (HTTPS with --tls-cert/--tls-key); a non-loopback address needs TLS or --insecure-plaintext.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
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

/// Opens the embedded KMS, creating it on first run. Its root credentials
/// are not printed: [`write_root_profile`] puts them where tools find them.
fn open_kms(dir: &Path) -> Result<Arc<Kms>, CliError> {
    let data = DataDir::new(dir);
    if data.database().exists() {
        return Ok(Arc::new(Kms::open(&data, Arc::new(SystemClock))?));
    }
    let (kms, _root_access) = Kms::init(&data, "us-east-1", Arc::new(SystemClock))?;
    say!(
        "Created the embedded KMS in {} (account {})",
        dir.display(),
        kms.account_id()
    );
    Ok(Arc::new(kms))
}

/// Writes the account root's access key as AWS profile `name`, pointing at
/// `endpoint`. The secret comes from the KMS's database (sealed under its
/// root key), so every run can rewrite the profile without printing it.
fn write_root_profile(kms: &Kms, name: &str, endpoint: &str) -> CliResult {
    let root = kms
        .list_principals()?
        .into_iter()
        .find(|p| p.name == crate::kms::iam::ROOT_NAME)
        .and_then(|p| p.access_key_ids.into_iter().next())
        .ok_or_else(|| CliError("the embedded KMS has no root access key".into()))?;
    let (_, secret) = kms
        .credentials(&root)?
        .ok_or_else(|| CliError("the embedded KMS has no root access key".into()))?;
    let access = AccessKey {
        access_key_id: root,
        secret_access_key: secret,
    };
    let written =
        profile::write_profile(name, &access, kms.region(), Some(endpoint)).map_err(|e| {
            CliError(format!(
                "cannot write AWS profile {name}: {e} (or pass --kms-listen none)"
            ))
        })?;
    say!(
        "AWS profile {name} (the embedded KMS's root) is in {} and {}",
        written.credentials_file.display(),
        written.config_file.display()
    );
    Ok(())
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
    profile::validate_profile_name(&args.profile).map_err(CliError)?;
    // NBD over TLS as `serve` offers it (required unless `--tls optional`);
    // without it, plaintext beyond loopback only when asked for.
    let tls = args.tls.config()?;
    let tls_required = tls.as_ref().is_some_and(|t| t.mode() == TlsMode::Require);
    args.limits
        .check_plaintext(Some(args.listen), tls_required)?;
    let metrics = MetricsArgs {
        metrics: args.metrics,
    }
    .plan(
        args.tls
            .tls_cert
            .as_deref()
            .zip(args.tls.tls_key.as_deref()),
        args.limits.insecure_plaintext,
    )?;
    // One open-file limit for the whole process, raised once, before the
    // embedded KMS sizes its connection cap by it: the NBD socket and TCP
    // listeners, and the KMS's connections.
    let kms_connections = match args.kms_listen {
        KmsListen::Off => 0,
        KmsListen::At(_) => args.kms_limits.kms_max_connections as u64,
    };
    args.limits.ensure_descriptors(2, kms_connections);
    let data = match &args.data {
        Some(d) => d.clone(),
        None => default_data_dir()?,
    };
    private_dir(&data)?;
    let kms = open_kms(&data.join("kms"))?;
    kms.set_audit_rotation(args.kms_limits.rotation());
    let keys = EmbeddedKeys::as_root(kms.clone());
    let key_arn = ensure_default_key(&keys)?;
    let volumes_dir = data.join("volumes");
    private_dir(&volumes_dir)?;
    let volume_path = volumes_dir.join("default.vol");
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| data.join("envol.sock"));
    let rt = runtime()?;
    rt.block_on(async move {
        let volume_address = envelope::VolumeAddress::from(volume_path.clone());
        let default_volume = [super::serve::VolumeArg {
            volume: volume_address.clone(),
            name: EXPORT.to_string(),
            read_only: false,
        }];
        // A volume that exists is attached (and so locked) before anything
        // is bound, written or served: a second `up` on this data directory
        // is refused here, naming the first, not by a busy port, and before
        // it rewrites the profile.
        let attached = match volume_path.exists() {
            true => Some(attach_all(&keys, &default_volume, &Default::default()).await?),
            false => None,
        };
        // Then bind: on a first run, a busy port is refused before the
        // volume is created.
        let kms_listener = match args.kms_listen {
            KmsListen::Off => None,
            KmsListen::At(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError(format!(
                    "cannot serve the embedded KMS's API on {addr}: {e} (another `envol up`?): pass --kms-listen ADDR, or --kms-listen none"
                ))
            })?),
        };
        let metrics = match metrics {
            Some(plan) => {
                let mut registry = super::metrics::registry();
                registry.register_collector(Box::new(kms.metrics()));
                Some((plan.bind().await?, registry))
            }
            None => None,
        };
        let (exports, _certified) = match attached {
            Some(exports) => exports,
            None => {
                let sb = envelope::create(
                    &keys,
                    NewVolume {
                        volume: &volume_address,
                        size: args.size,
                        sector_size: 4096,
                        key: &key_arn,
                        force: false,
                    },
                )
                .await?;
                super::volume::print_created(&volume_address, &sb);
                attach_all(&keys, &default_volume, &Default::default()).await?
            }
        };
        if let Some(listener) = kms_listener {
            let endpoint = format!("http://{}", listener.local_addr()?);
            write_root_profile(&kms, &args.profile, &endpoint)?;
            say!(
                "The embedded KMS's AWS API is at {endpoint}: aws kms list-keys --profile {}",
                args.profile
            );
            let kms = kms.clone();
            let shutdown = shutdown_signal();
            let limits = args.kms_limits.limits();
            tokio::spawn(async move {
                if let Err(e) = crate::kms::http::serve(kms, listener, None, limits, shutdown).await {
                    tracing::error!("embedded KMS API stopped: {e}");
                }
            });
        }
        let server = Server::new(exports)?.with_transmission_loop(args.transmission.into());
        serve_exports(
            server,
            &args.limits,
            Some(&socket),
            Some(args.listen),
            tls,
            metrics,
            |l| print_how_to_attach(l, &volume_path),
        )
        .await
    })
}
