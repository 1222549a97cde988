//! `envol serve`: attach volumes through the KMS and serve them over NBD.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::address::CephArgs;
use super::error::{CliError, CliResult};
use super::metrics::MetricsArgs;
use super::parse::{parse_connections, parse_duration};
use super::runtime::{raise_open_file_limit, runtime, shutdown_signal};
use super::target::{KmsArgs, parse_size};
use crate::control::{
    self, Attacher, Attachment, ControlSocket, Controller, NewDataKey, Planned, ReencryptionJob,
    TakeOverMode, VolumeInfo,
};
use crate::envelope::reencrypt::{self, WrappedNewKey};
use crate::envelope::{self, AttachOptions, VolumeAddress};
use crate::keys::KeyService;
use crate::keys::aws::AwsKeyClient;
use crate::metrics::MetricsEndpoint;
use crate::nbd::{
    Export, Listeners, MAX_CONNECTIONS, MAX_INFLIGHT_BYTES, Server, TlsConfig, TlsMode,
    TransmissionLoop, descriptors_needed,
};
use crate::volume::rbd::TakeOver;
use crate::volume::reencryption::Progress;
use crate::volume::{BlockDevice, KEY_CHECK_LEN, Volume};
use prometheus_client::registry::Registry;

/// The NBD port, as registered with IANA.
pub const DEFAULT_NBD_ADDR: &str = "127.0.0.1:10809";

/// Descriptors kept, beyond the connection caps, for everything else the
/// process opens (volumes, the runtime, logs).
const SPARE_DESCRIPTORS: u64 = 64;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Volumes to serve, each as VOLUME[=NAME][:ro]: a file, or rbd:POOL/IMAGE for an RBD image in Ceph (a file whose name starts with `rbd:` is written ./rbd:...); default name: the file stem or image name; `:ro` exports it read-only.
    #[arg(required_unless_present = "config", value_name = "VOLUME[=NAME][:ro]")]
    pub volumes: Vec<String>,
    /// Read settings from this TOML file (every key is one of these flags: see contrib/envol.toml); flags given here override it, VOLUME arguments replace its exports.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The exports of --config's file, resolved (when no VOLUME is given).
    #[arg(skip)]
    pub(crate) file_exports: Vec<VolumeArg>,
    /// Serve on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The control socket (`envol attach`, `detach`, `status`), owner-only. Default: with --socket, that path with `.control` appended; otherwise $XDG_RUNTIME_DIR/envol/nbd-IP-PORT.control (/run/envol for root, /tmp/envol-UID without XDG_RUNTIME_DIR).
    #[arg(long, value_name = "PATH", env = "ENVOL_CONTROL")]
    pub control: Option<PathBuf>,
    /// Serve on this TCP address (default 127.0.0.1:10809 when no --socket is given).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Export every volume read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Take rbd: volumes over from a server that holds them but that Ceph no longer sees alive (its watch expired); a live holder is refused. The old server's Ceph client is blocklisted: it can never write again.
    #[arg(long)]
    pub take_over: bool,
    /// With --take-over: take the volumes over at once, alive or not (the holder is blocklisted, and exits when it notices).
    #[arg(long, requires = "take_over")]
    pub force: bool,
    #[command(flatten)]
    pub ceph: CephArgs,
    /// Which loop serves connections, plain and TLS: `threaded` (the fast path) or `async` (for comparison).
    #[arg(long, value_enum, value_name = "LOOP", default_value_t = TransmissionArg::Threaded)]
    pub transmission: TransmissionArg,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub kms: KmsArgs,
}

/// What a stranger can hold of the NBD server.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Bytes buffered for in-flight requests across all connections of each listener (Unix socket and TCP each have their own; each connection also has its own 64 MiB); requests beyond wait their turn.
    #[arg(long, value_name = "SIZE", default_value_t = MAX_INFLIGHT_BYTES, value_parser = parse_size)]
    pub max_inflight: u64,
    /// Connections served at once per listener (Unix socket and TCP counted apart); more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNECTIONS, value_parser = parse_connections)]
    pub max_connections: usize,
    /// A request that has started arriving may not stall this long (threaded loop: no bytes; async loop: not complete), nor a reply go untaken; else the connection is closed (idle connections are never closed). E.g. 30s, 500ms.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Allow plaintext NBD (no TLS) on a non-loopback address: anyone who can reach it can read and write the decrypted volume.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl LimitArgs {
    /// At start-up, before anything else sizes itself by the open-file
    /// limit: raises it to what `listeners` NBD listeners at
    /// `--max-connections` need, plus `others` (in `envol up`, the
    /// embedded KMS's connections) and a spare; warns if the hard limit
    /// does not allow that.
    pub(crate) fn ensure_descriptors(&self, listeners: usize, others: u64) {
        let needed = descriptors_needed(self.max_connections, listeners)
            .saturating_add(others)
            .saturating_add(SPARE_DESCRIPTORS);
        if let Some(limit) = raise_open_file_limit(needed) {
            tracing::warn!(
                descriptor_limit = limit,
                needed,
                max_connections = self.max_connections,
                "the open-file limit is below what the connection caps need: raise `ulimit -n` or lower --max-connections"
            );
        }
    }

    pub(crate) fn apply(&self, server: Server) -> Server {
        server
            .with_max_inflight(self.max_inflight)
            .with_max_connections(self.max_connections)
            .with_request_timeout(self.request_timeout)
    }

    /// Refuses plaintext NBD on a non-loopback address unless the operator
    /// said `--insecure-plaintext` (then warns). `tls_required`: every
    /// client must start TLS, so nothing is served in the clear.
    pub(crate) fn check_plaintext(
        &self,
        tcp: Option<SocketAddr>,
        tls_required: bool,
    ) -> Result<(), CliError> {
        let Some(addr) = tcp.filter(|a| !a.ip().is_loopback() && !tls_required) else {
            return Ok(());
        };
        if !self.insecure_plaintext {
            return Err(CliError(format!(
                "refusing to serve plaintext NBD on {addr}, which is not a loopback address: anyone who can reach it could read and write the decrypted volume; use --tls-cert/--tls-key (TLS required), a loopback address or --socket, or pass --insecure-plaintext"
            )));
        }
        tracing::warn!(
            "serving plaintext NBD on {addr} (--insecure-plaintext): anyone who can reach it can read and write the decrypted volume"
        );
        Ok(())
    }
}

/// NBD over TLS (NBD_OPT_STARTTLS).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Offer TLS with this server certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM).
    // Not `requires = "tls_cert"`: the certificate may come from --config's
    // file; `config` refuses a CA or mode without one.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// `require` (the default with a certificate) refuses every client that
    /// does not start TLS; `optional` also serves plaintext clients.
    #[arg(long = "tls", value_enum, value_name = "MODE")]
    pub tls_mode: Option<TlsModeArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransmissionArg {
    Threaded,
    Async,
}

impl From<TransmissionArg> for TransmissionLoop {
    fn from(arg: TransmissionArg) -> Self {
        match arg {
            TransmissionArg::Threaded => TransmissionLoop::Threaded,
            TransmissionArg::Async => TransmissionLoop::Async,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsModeArg {
    Require,
    Optional,
}

impl TlsArgs {
    /// The TLS configuration, if a certificate was given. A certificate
    /// means TLS is required unless `--tls optional` says otherwise: a
    /// server that bothers with TLS should not quietly accept plaintext.
    pub fn config(&self) -> Result<Option<TlsConfig>, CliError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_ca.is_some() || self.tls_mode.is_some() {
                return Err(CliError(
                    "--tls-ca and --tls need a certificate: give --tls-cert and --tls-key (or [tls] cert and key in --config's file)".into(),
                ));
            }
            return Ok(None);
        };
        let mode = match self.tls_mode {
            Some(TlsModeArg::Optional) => TlsMode::Optional,
            Some(TlsModeArg::Require) | None => TlsMode::Require,
        };
        TlsConfig::from_pem_files(cert, key, self.tls_ca.as_deref(), mode)
            .map(Some)
            .map_err(|e| CliError(format!("TLS: {e}")))
    }
}

/// One volume to serve, from `VOLUME[=NAME][:ro]`.
#[derive(Debug, Clone)]
pub(crate) struct VolumeArg {
    pub volume: VolumeAddress,
    pub name: String,
    pub read_only: bool,
}

/// Splits `VOLUME[=NAME][:ro]` (VOLUME a path or `rbd:POOL/IMAGE`, in the
/// cluster `ceph` names); the name defaults to the file stem or the image
/// name, and a trailing `:ro` exports that one volume read-only. So
/// `rbd:pool/img=name:ro` is image `img` of pool `pool`, exported
/// read-only as `name`.
pub(crate) fn split_volume_arg(arg: &str, ceph: &CephArgs) -> Result<VolumeArg, CliError> {
    let (spec, read_only) = match arg.strip_suffix(":ro") {
        Some(rest) if !rest.is_empty() => (rest, true),
        _ => (arg, false),
    };
    check_rbd_spec(arg, spec)?;
    let (volume, name) = match spec.rsplit_once('=') {
        Some((v, n)) if !v.is_empty() => (ceph.volume(v)?, n.to_string()),
        _ => {
            let volume = ceph.volume(spec)?;
            let name = volume.default_export_name();
            (volume, name)
        }
    };
    if name.is_empty() {
        return Err(CliError(format!("{arg}: the export name is empty")));
    }
    Ok(VolumeArg {
        volume,
        name,
        read_only,
    })
}

/// The one form an RBD volume argument takes.
const RBD_SPEC_FORM: &str = "rbd:POOL/IMAGE[=NAME][:ro]";

/// Refuses what the address parser would otherwise take too literally in
/// an `rbd:` argument (`spec`: `arg` without its `:ro`): a `:` left over
/// (`rbd:p/img:ro=name` would be image `img:ro`), a second `=`
/// (`rbd:p/img=a=b` would be image `img=a`), or a snapshot
/// (`rbd:p/img@snap`): each would end in a confusing "does not exist".
/// A file's path may hold any of these; it is left alone.
fn check_rbd_spec(arg: &str, spec: &str) -> Result<(), CliError> {
    let Some(rest) = spec.strip_prefix(crate::envelope::RBD_PREFIX) else {
        return Ok(());
    };
    let address = rest.split_once('=').map_or(rest, |(address, _)| address);
    if address.contains('@') {
        return Err(CliError(format!(
            "{arg}: snapshots are not volumes (an RBD snapshot is read-only and has no lock); expected {RBD_SPEC_FORM}"
        )));
    }
    if rest.contains(':') || rest.matches('=').count() > 1 {
        return Err(CliError(format!(
            "{arg}: ambiguous volume argument: expected {RBD_SPEC_FORM} (an export name after `=`, then `:ro` last; neither `:` nor `=` in pool, image or name)"
        )));
    }
    Ok(())
}

/// What `serve` does about RBD locks: take them over, and hear when
/// another server took one from it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fencing {
    pub take_over: Option<TakeOver>,
    /// Told the volume's address when its server has been fenced off it.
    pub fenced: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Fencing {
    fn attach_options(&self, volume: &VolumeAddress, read_only: bool) -> AttachOptions {
        let on_fenced = self.fenced.clone().map(|sender| {
            let address = volume.to_string();
            Box::new(move || {
                let _ = sender.send(address.clone());
            }) as Box<dyn Fn() + Send + Sync>
        });
        AttachOptions {
            read_only,
            take_over: self.take_over,
            on_fenced,
        }
    }
}

/// `--take-over [--force]` as a policy; refused for file volumes before
/// anything else happens (their lock is released when the holder dies, so
/// there is nothing to take over).
fn take_over_policy(args: &ServeArgs, volumes: &[VolumeArg]) -> Result<Option<TakeOver>, CliError> {
    if !args.take_over {
        return Ok(None);
    }
    let policy = match args.force {
        true => TakeOver::Force,
        false => TakeOver::IfHolderDead,
    };
    check_take_over(policy, args.read_only, volumes)?;
    Ok(Some(policy))
}

/// Whether `volumes` may be taken over: rbd: volumes attached read-write
/// only (`read_only_all`: `serve --read-only`).
fn check_take_over(
    _policy: TakeOver,
    read_only_all: bool,
    volumes: &[VolumeArg],
) -> Result<(), CliError> {
    if let Some(file) = volumes.iter().find(|v| v.volume.rbd_image().is_none()) {
        return Err(CliError(format!(
            "{}: --take-over applies to rbd: volumes only (a file's lock is released when its holder dies)",
            file.volume
        )));
    }
    // Before the KMS client is built: a reader takes nobody's place.
    if read_only_all {
        return Err(CliError(
            "--take-over is for read-write attachments, not with --read-only".into(),
        ));
    }
    if let Some(reader) = volumes.iter().find(|v| v.read_only) {
        return Err(CliError(format!(
            "{}: --take-over is for read-write attachments, not a read-only (:ro) one",
            reader.volume
        )));
    }
    Ok(())
}

pub fn run(mut args: ServeArgs) -> CliResult {
    let mut volumes = std::mem::take(&mut args.file_exports);
    if !args.volumes.is_empty() {
        volumes.clear();
        for v in &args.volumes {
            volumes.push(split_volume_arg(v, &args.ceph)?);
        }
    }
    let take_over = take_over_policy(&args, &volumes)?;
    let tcp = match (&args.socket, args.listen) {
        (None, None) => Some(
            DEFAULT_NBD_ADDR
                .parse()
                .map_err(|e| CliError(format!("{e}")))?,
        ),
        (_, tcp) => tcp,
    };
    // Before the KMS is asked for anything: a bad certificate or a refused
    // address is a usage error, and no key should be unwrapped for a
    // server that cannot start.
    let tls = args.tls.config()?;
    let tls_required = tls.as_ref().is_some_and(|t| t.mode() == TlsMode::Require);
    args.limits.check_plaintext(tcp, tls_required)?;
    let metrics = args.metrics.plan(
        args.tls
            .tls_cert
            .as_deref()
            .zip(args.tls.tls_key.as_deref()),
        args.limits.insecure_plaintext,
    )?;
    let listeners = usize::from(args.socket.is_some()) + usize::from(tcp.is_some());
    args.limits.ensure_descriptors(listeners, 0);
    let rt = runtime()?;
    rt.block_on(async move {
        // Before any key is unwrapped: a server that cannot listen (an
        // address or control socket in use) must not have asked the KMS.
        let (listeners, control) =
            bind(args.socket.as_deref(), tcp, args.control.as_deref()).await?;
        let metrics = match metrics {
            Some(plan) => Some(plan.bind().await?),
            None => None,
        };
        let keys = AwsKeyClient::new(&args.kms.target())
            .await
            .map_err(|e| CliError(e.to_string()))?;
        if args.read_only {
            for v in &mut volumes {
                v.read_only = true;
            }
        }
        let (fenced_tx, mut fenced_rx) = tokio::sync::mpsc::unbounded_channel();
        let fencing = Fencing {
            take_over,
            fenced: Some(fenced_tx.clone()),
        };
        let attached = attach_volumes(&keys, &volumes, &fencing).await?;
        let known: Vec<(String, VolumeInfo)> = attached
            .iter()
            .map(|a| (a.export.name.clone(), a.info.clone()))
            .collect();
        let handles: Vec<(String, std::sync::Weak<Volume>)> = attached
            .iter()
            .map(|a| (a.export.name.clone(), a.volume.clone()))
            .collect();
        let certified: Vec<(String, String)> = attached
            .iter()
            .map(|a| (a.export.name.clone(), a.certified_description.clone()))
            .collect();
        let exports = attached.into_iter().map(|a| a.export).collect();
        let mut server = Server::new(exports)?.with_transmission_loop(args.transmission.into());
        for (name, description) in certified {
            server = server.with_certified_description(&name, description)?;
        }
        let mut server = args.limits.apply(server);
        if let Some(tls) = tls {
            server = server.with_tls(tls);
        }
        let shutdown = shutdown_signal();
        announce(&server, &listeners, &control);
        let attacher = ServeAttacher {
            keys: Arc::new(keys),
            ceph: args.ceph.clone(),
            read_only: args.read_only,
            fenced: fenced_tx,
        };
        let uris = Box::new(listeners.uri_maker(server.tls_required()));
        let controller = Arc::new(
            Controller::new(server.clone(), attacher, uris, known).with_volume_handles(handles),
        );
        if let Some(endpoint) = metrics {
            let mut registry = super::metrics::registry();
            registry.register_collector(Box::new(server.metrics()));
            registry.register_collector(Box::new(controller.task_metrics()));
            super::metrics::spawn(endpoint, registry)?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = async {
            let nbd = server.serve(listeners, async {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            let mut stop = stop_rx;
            let control = control.serve(controller.clone(), async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
            tokio::join!(nbd, control).0
        };
        let fenced = tokio::select! {
            served = serving => {
                served.map_err(|e| CliError(format!("while shutting down: {e}")))?;
                tracing::info!("stopped; data keys dropped");
                return Ok(());
            }
            Some(volume) = fenced_rx.recv() => volume,
        };
        // The server is dropped by now: its listeners closed, its
        // connections aborted (they drop their handles on the volumes).
        // What it still exports is closed here, the fenced ones excepted.
        let held = controller
            .volumes()
            .into_iter()
            .map(|(address, export)| (address, export.device))
            .collect();
        drop(controller);
        drop(server);
        exit_fenced(fenced, fenced_rx, held).await
    })
}

/// Binds the NBD listeners and the control socket; the process umask is
/// 077 from here on (the sockets give whoever opens them the plaintext
/// volumes).
async fn bind(
    socket: Option<&Path>,
    tcp: Option<SocketAddr>,
    control: Option<&Path>,
) -> Result<(Listeners, ControlSocket), CliError> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let listeners = Listeners::bind(socket, tcp)
        .await
        .map_err(|e| CliError(format!("cannot listen: {e}")))?;
    let control_path = match (control, listeners.unix_path(), listeners.tcp_addr()) {
        (Some(path), _, _) => path.to_path_buf(),
        (None, Some(nbd_socket), _) => control::path::beside_socket(nbd_socket),
        (None, None, Some(addr)) => control::path::for_tcp(addr)
            .map_err(|e| CliError(format!("cannot place the control socket: {e}")))?,
        (None, None, None) => return Err(CliError("no listener".into())),
    };
    let control = ControlSocket::bind(&control_path)
        .await
        .map_err(|e| CliError(format!("cannot open the control socket: {e}")))?;
    Ok((listeners, control))
}

/// Prints where to connect: every export's URIs, and the control socket.
fn announce(server: &Server, listeners: &Listeners, control: &ControlSocket) {
    for export in server.exports() {
        for uri in listeners.uris_with_tls(&export.name, server.tls_required()) {
            say!("export {}: {uri}", export.name);
        }
    }
    say!("control: {}", control.path().display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Attaches volumes for the control socket as start-up does: the same
/// argument syntax, the server's own KMS client, Ceph cluster, `--read-only`
/// and fencing.
struct ServeAttacher {
    keys: Arc<AwsKeyClient>,
    ceph: CephArgs,
    read_only: bool,
    fenced: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Attacher for ServeAttacher {
    type Plan = (VolumeArg, Fencing);

    fn plan(
        &self,
        volume: &str,
        take_over: Option<TakeOverMode>,
    ) -> Result<Planned<Self::Plan>, String> {
        let mut arg = split_volume_arg(volume, &self.ceph).map_err(|e| e.0)?;
        arg.read_only |= self.read_only;
        let take_over = take_over.map(|mode| match mode {
            TakeOverMode::IfHolderDead => TakeOver::IfHolderDead,
            TakeOverMode::Force => TakeOver::Force,
        });
        if let Some(policy) = take_over {
            check_take_over(policy, self.read_only, std::slice::from_ref(&arg)).map_err(|e| e.0)?;
        }
        let fencing = Fencing {
            take_over,
            fenced: Some(self.fenced.clone()),
        };
        Ok(Planned {
            name: arg.name.clone(),
            volume: arg.volume.to_string(),
            plan: (arg, fencing),
        })
    }

    async fn attach(&self, (arg, fencing): Self::Plan) -> Result<Attachment, String> {
        let options = fencing.attach_options(&arg.volume, arg.read_only);
        let prepared = envelope::prepare_attach(&*self.keys, &arg.volume, options)
            .await
            .map_err(|e| e.to_string())?;
        // Locking (and for rbd:, opening the image and perhaps fencing its
        // holder) waits for storage: not on the runtime's threads, which
        // serve every other export's handshakes and the control socket.
        let volume = super::serve_hydrate::complete(&arg.volume, prepared).await?;
        let attached = attached_volume(volume, &arg);
        Ok(Attachment {
            export: attached.export,
            certified_description: attached.certified_description,
            info: attached.info,
            volume: attached.volume,
        })
    }

    /// With the server's own KMS client: it unwraps both keys again (the
    /// caller already proved its own permissions on them).
    async fn begin_reencryption(
        &self,
        volume: &str,
        handle: &Arc<Volume>,
        new_key: Option<NewDataKey>,
    ) -> Result<u64, String> {
        let address = self.ceph.volume(volume).map_err(|e| e.0)?;
        let new_key = new_key.map(|k| decode_new_key(volume, k)).transpose()?;
        reencrypt::begin_online(&*self.keys, &address, handle, new_key)
            .await
            .map_err(|e| e.to_string())
    }

    fn run_reencryption(
        &self,
        volume: String,
        handle: Arc<Volume>,
        max_rate: Option<u64>,
        job: Arc<ReencryptionJob>,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let keys = self.keys.clone();
        let address = self.ceph.volume(&volume);
        async move {
            let address = address.map_err(|e| e.0)?;
            let reporter = job.clone();
            let mut on_step = move |p: Progress| reporter.record(p.done_bytes(), p.total_bytes());
            let stop = move || job.stop_requested();
            let rate = Some(max_rate.unwrap_or(reencrypt::ONLINE_DEFAULT_RATE));
            reencrypt::run_online(&*keys, &address, &handle, rate, &mut on_step, &stop)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

/// The new key of a `reencrypt` request, as the envelope layer takes it.
fn decode_new_key(volume: &str, key: NewDataKey) -> Result<WrappedNewKey, String> {
    use base64::Engine;
    let bad = |what: &str| format!("{volume}: the request's new key has an invalid {what}");
    let wrapped_key = base64::engine::general_purpose::STANDARD
        .decode(key.wrapped_key.as_bytes())
        .map_err(|_| bad("wrapped key (expected base64)"))?;
    let key_check = hex::decode(key.key_check.as_bytes())
        .ok()
        .and_then(|b| <[u8; KEY_CHECK_LEN]>::try_from(b).ok())
        .ok_or_else(|| {
            bad(&format!(
                "key check value (expected {KEY_CHECK_LEN} bytes in hex)"
            ))
        })?;
    Ok(WrappedNewKey {
        key_arn: key.key_arn,
        wrapped_key,
        key_check,
    })
}

/// Another server took `volume` over and Ceph blocklisted this one: every
/// write to it from now on fails, so there is nothing left to serve, nor
/// to flush. Exits without the graceful shutdown (which would wait for
/// clients, and flush a volume that can no longer be written) — the new
/// server has the volume and every write this one acknowledged. The other
/// volumes (each has a Ceph client of its own, which was not fenced) are
/// closed first, within [`RELEASE_DEADLINE`], so that their locks are
/// released rather than left for a `--take-over`; the fenced ones are left
/// alone (closing would try to write back to them).
async fn exit_fenced(
    first: String,
    mut more: tokio::sync::mpsc::UnboundedReceiver<String>,
    held: Vec<(String, Arc<dyn BlockDevice>)>,
) -> ! {
    let mut fenced = vec![first];
    let deadline = tokio::time::Instant::now() + RELEASE_DEADLINE;
    let mut open = held;
    loop {
        while let Ok(volume) = more.try_recv() {
            fenced.push(volume);
        }
        // Never closed: the process exits with them open.
        let (gone, rest): (Vec<_>, Vec<_>) = open
            .into_iter()
            .partition(|(address, _)| fenced.contains(address));
        std::mem::forget(gone);
        // A volume only this function still holds is closed now (its
        // lock released); one a connection still holds waits for it.
        let (closable, busy): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(_, device)| Arc::strong_count(device) == 1);
        for (address, device) in closable {
            let closed = tokio::time::timeout_at(
                deadline,
                tokio::task::spawn_blocking(move || drop(device)),
            )
            .await;
            if closed.is_err() {
                tracing::warn!("{address}: not closed in time; its lock may need --take-over");
            }
        }
        open = busy;
        if open.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RELEASE_POLL).await;
    }
    for (address, device) in open {
        tracing::warn!("{address}: still in use, not closed; its lock may need --take-over");
        std::mem::forget(device);
    }
    eprintln!(
        "envol: fenced: another server took over {}; exiting",
        fenced.join(", ")
    );
    // Not `std::process::exit`: its atexit handlers run librados's static
    // destructors under the fenced clients' still-running threads.
    crate::volume::rbd::exit_immediately(FENCED_EXIT_CODE)
}

/// How long a fenced server spends closing its other volumes before it
/// exits anyway.
const RELEASE_DEADLINE: Duration = Duration::from_secs(3);

/// How often it looks whether its connections have let go of them.
const RELEASE_POLL: Duration = Duration::from_millis(20);

/// The exit status of a fenced server (as `main`'s for any other error).
const FENCED_EXIT_CODE: i32 = 1;

/// A volume attached and ready to export.
pub(crate) struct AttachedVolume {
    pub export: Export,
    /// What clients authenticated by a TLS client certificate see as its
    /// description.
    pub certified_description: String,
    pub info: VolumeInfo,
    /// The volume, for snapshots through the server (the export owns it).
    pub volume: std::sync::Weak<Volume>,
}

/// Attaches every volume, all or nothing: a refusal stops before any
/// listener opens, and before any holder is fenced: every volume is opened
/// and its key unwrapped and checked first, and only then is each taken
/// over (with `--take-over`) and locked. (What only the take-over itself
/// can find out — that a holder is still alive, under `--take-over`
/// without `--force` — may still refuse a later volume after an earlier
/// one was taken over.)
pub(crate) async fn attach_volumes<K: KeyService>(
    keys: &K,
    volumes: &[VolumeArg],
    fencing: &Fencing,
) -> Result<Vec<AttachedVolume>, CliError> {
    let mut prepared = Vec::with_capacity(volumes.len());
    for VolumeArg {
        volume: address,
        read_only,
        ..
    } in volumes
    {
        let options = fencing.attach_options(address, *read_only);
        prepared.push(envelope::prepare_attach(keys, address, options).await?);
    }
    let mut attached = Vec::new();
    for (prepared, arg) in prepared.into_iter().zip(volumes) {
        let volume = super::serve_hydrate::complete(&arg.volume, prepared)
            .await
            .map_err(CliError)?;
        attached.push(attached_volume(volume, arg));
    }
    Ok(attached)
}

/// [`attach_volumes`] as exports, and for each export (by name) the
/// description that clients authenticated by a TLS client certificate see.
pub(crate) async fn attach_all<K: KeyService>(
    keys: &K,
    volumes: &[VolumeArg],
    fencing: &Fencing,
) -> Result<(Vec<Export>, Vec<(String, String)>), CliError> {
    let attached = attach_volumes(keys, volumes, fencing).await?;
    Ok(attached
        .into_iter()
        .map(|a| {
            let certified = (a.export.name.clone(), a.certified_description);
            (a.export, certified)
        })
        .unzip())
}

/// The export of an attached volume, its descriptions, and what status
/// shows of it.
fn attached_volume(volume: Volume, arg: &VolumeArg) -> AttachedVolume {
    let VolumeArg {
        volume: address,
        name,
        read_only,
    } = arg;
    let sb = volume.superblock();
    // Any client can read this (NBD_OPT_LIST, INFO, GO), so it names
    // neither the volume's uuid nor its key; only a client with a
    // verified TLS client certificate is told those.
    let description = format!(
        "envol volume ({}, {}-byte sectors)",
        sb.cipher, sb.sector_size
    );
    let certified_description = format!(
        "envol volume {} ({}, {}-byte sectors, key {})",
        sb.uuid, sb.cipher, sb.sector_size, sb.key_arn
    );
    let info = VolumeInfo {
        volume: address.to_string(),
        volume_uuid: sb.uuid.to_string(),
        key_arn: sb.key_arn.to_string(),
    };
    tracing::info!("attached {address} as export {name:?}");
    let volume = Arc::new(volume);
    AttachedVolume {
        volume: Arc::downgrade(&volume),
        export: Export {
            name: name.clone(),
            description,
            device: volume,
            read_only: *read_only,
        },
        certified_description,
        info,
    }
}

/// Binds, prints where to connect, and serves until SIGINT/SIGTERM.
pub(crate) async fn serve_exports(
    server: Server,
    limits: &LimitArgs,
    socket: Option<&Path>,
    tcp: Option<SocketAddr>,
    tls: Option<TlsConfig>,
    metrics: Option<(MetricsEndpoint, Registry)>,
    on_ready: impl FnOnce(&Listeners),
) -> CliResult {
    let server = limits.apply(server);
    serve_with(server, socket, tcp, tls, metrics, on_ready).await
}

/// [`serve_exports`] with a configured `server`, offering TLS when `tls`
/// is given.
async fn serve_with(
    mut server: Server,
    socket: Option<&Path>,
    tcp: Option<SocketAddr>,
    tls: Option<TlsConfig>,
    metrics: Option<(MetricsEndpoint, Registry)>,
    on_ready: impl FnOnce(&Listeners),
) -> CliResult {
    let shutdown = shutdown_signal();
    let names: Vec<String> = server.exports().iter().map(|e| e.name.clone()).collect();
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    // Print the TLS URIs only when plaintext would be refused; with
    // optional TLS both work and the plain ones are the simpler to use.
    let tls_uris = server.tls_required();
    // The socket gives whoever can open it the plaintext volume: owner only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let listeners = Listeners::bind(socket, tcp)
        .await
        .map_err(|e| CliError(format!("cannot listen: {e}")))?;
    for name in &names {
        for uri in listeners.uris_with_tls(name, tls_uris) {
            say!("export {name}: {uri}");
        }
    }
    // The server's metrics join what the caller registered (`up`: its
    // embedded KMS's).
    if let Some((endpoint, mut registry)) = metrics {
        registry.register_collector(Box::new(server.metrics()));
        super::metrics::spawn(endpoint, registry)?;
    }
    on_ready(&listeners);
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    server
        .serve(listeners, shutdown)
        .await
        .map_err(|e| CliError(format!("while shutting down: {e}")))?;
    tracing::info!("stopped; data keys dropped");
    Ok(())
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
