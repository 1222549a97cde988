//! `envol attach`, `envol detach`, `envol status`: requests to a running
//! `envol serve` through its control socket.

use std::path::{Path, PathBuf};

use clap::Args;

use super::error::{CliError, CliResult};
use super::serve::DEFAULT_NBD_ADDR;
use super::target::human_size;
use crate::control::{self, ClientError, Command, ExportInfo, ReplyBody, TakeOverMode};
use crate::envelope::VolumeAddress;

/// Which server: its control socket.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The server's control socket (as `envol serve` printed it). Default: that of `envol serve` with its default listener (127.0.0.1:10809): $XDG_RUNTIME_DIR/envol/nbd-127.0.0.1-10809.control (/run/envol/... for root, /tmp/envol-UID/... without XDG_RUNTIME_DIR).
    #[arg(long, value_name = "PATH", env = "ENVOL_CONTROL")]
    pub control: Option<PathBuf>,
}

impl ControlArgs {
    pub(super) fn path(&self) -> Result<PathBuf, CliError> {
        if let Some(path) = &self.control {
            return Ok(path.clone());
        }
        let addr = DEFAULT_NBD_ADDR
            .parse()
            .map_err(|e| CliError(format!("{e}")))?;
        control::path::for_tcp(addr).map_err(|e| CliError(format!("no control socket: {e}")))
    }

    pub(super) fn call(&self, command: Command) -> Result<ReplyBody, CliError> {
        control::call(&self.path()?, command).map_err(|e| CliError(e.to_string()))
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The volume, as `envol serve` takes it: a file, or rbd:POOL/IMAGE (in the server's Ceph cluster); `=NAME` names the export, `:ro` exports it read-only.
    #[arg(value_name = "VOLUME[=NAME][:ro]")]
    pub volume: String,
    /// Take an rbd: volume over from a server that holds it but that Ceph no longer sees alive (see `envol serve --take-over`).
    #[arg(long)]
    pub take_over: bool,
    /// With --take-over: take it over at once, alive or not.
    #[arg(long, requires = "take_over")]
    pub force: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The export to detach.
    pub name: String,
    /// Do not wait for its clients to leave: flush it, answer their requests ESHUTDOWN from then on, and close their connections after 10 s.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON ({"exports": [...]}) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn attach(args: AttachArgs) -> CliResult {
    let take_over = match (args.take_over, args.force) {
        (false, _) => None,
        (true, false) => Some(TakeOverMode::IfHolderDead),
        (true, true) => Some(TakeOverMode::Force),
    };
    let command = Command::Attach {
        volume: absolute_volume(&args.volume)?,
        take_over,
    };
    match args.control.call(command)? {
        ReplyBody::Attached { export, uris } => {
            say!("attached {} as export {}", export.volume, export.name);
            for uri in uris {
                say!("export {}: {uri}", export.name);
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

pub fn detach(args: DetachArgs) -> CliResult {
    let command = Command::Detach {
        name: args.name,
        force: args.force,
    };
    match args.control.call(command)? {
        ReplyBody::Detached {
            name,
            forced,
            clients_at_start,
        } => {
            if forced && clients_at_start > 0 {
                say!("detached {name} ({clients_at_start} client(s) disconnected)");
            } else {
                say!("detached {name}");
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

pub fn status(args: StatusArgs) -> CliResult {
    let ReplyBody::Status { exports } = args.control.call(Command::Status)? else {
        return Err(CliError(
            "the server answered status with something else".into(),
        ));
    };
    if args.json {
        let json = serde_json::json!({ "exports": exports });
        say!("{json:#}");
        return Ok(());
    }
    if exports.is_empty() {
        say!("no exports");
    }
    for e in &exports {
        print_export(e);
    }
    Ok(())
}

fn print_export(e: &ExportInfo) {
    let mode = if e.read_only {
        "read-only"
    } else {
        "read-write"
    };
    say!(
        "{}: {} ({}, {mode}, {} bytes)",
        e.name,
        e.volume,
        e.state,
        e.size
    );
    say!("  volume uuid:    {}", e.volume_uuid);
    say!("  key:            {}", e.key_arn);
    say!("  clients:        {}", e.clients);
    say!("  in flight:      {}", e.in_flight);
    say!("  bytes read:     {}", e.bytes_read);
    say!("  bytes written:  {}", e.bytes_written);
    say!("  attached since: {}", e.attached_since);
    if let Some(r) = &e.reencryption {
        let pct = r.done_bytes as f64 * 100.0 / r.total_bytes.max(1) as f64;
        let eta = r.eta_seconds.map_or("unknown".into(), |s| format!("{s} s"));
        say!(
            "  re-encryption:  {} {} of {} ({pct:.1} %), {}/s, ETA {eta}; new key {}",
            r.state,
            human_size(r.done_bytes),
            human_size(r.total_bytes),
            human_size(r.rate_bytes_per_sec),
            r.new_key_arn
        );
        if let Some(message) = &r.message {
            say!("                  {message}");
        }
    }
    if let Some(s) = &e.snapshot {
        say!(
            "  snapshot:       to {} ({} chunks left, {} copied aside)",
            s.base,
            s.chunks_left,
            human_size(s.copied_bytes)
        );
    }
}

pub(super) fn unexpected(reply: &ReplyBody) -> CliError {
    CliError(format!("unexpected reply from the server: {reply:?}"))
}

/// `VOLUME[=NAME][:ro]` with a file's path made absolute: the server
/// resolves paths in its own working directory, not ours. `rbd:` volumes
/// go as they are (the server's cluster).
fn absolute_volume(arg: &str) -> Result<String, CliError> {
    let (spec, ro) = match arg.strip_suffix(":ro") {
        Some(rest) if !rest.is_empty() => (rest, ":ro"),
        _ => (arg, ""),
    };
    let (volume, name) = match spec.rsplit_once('=') {
        Some((v, n)) if !v.is_empty() => (v, Some(n)),
        _ => (spec, None),
    };
    if volume.starts_with(crate::envelope::RBD_PREFIX) {
        return Ok(arg.to_string());
    }
    let absolute =
        std::path::absolute(Path::new(volume)).map_err(|e| CliError(format!("{volume}: {e}")))?;
    let absolute = absolute
        .to_str()
        .ok_or_else(|| CliError(format!("{}: the path is not UTF-8", absolute.display())))?;
    Ok(match name {
        Some(name) => format!("{absolute}={name}{ro}"),
        None => format!("{absolute}{ro}"),
    })
}

/// Sends `command` about a volume another attachment holds (`refusal`
/// says which) to the server at `path`: the path of `volume grow` and
/// `volume reencrypt` once the volume's lock told them a server has it.
/// No server there, or one that does not have the volume, is the
/// refusal plus how to name the right server.
pub(super) fn ask_holder(
    path: &Path,
    command: Command,
    refusal: &dyn std::fmt::Display,
) -> Result<ReplyBody, CliError> {
    control::call(path, command).map_err(|e| match e {
        ClientError::NoSocket(_) | ClientError::NobodyListening(_) => CliError(format!(
            "{refusal}; and no envol server answers at {}: name the holder's control socket with --control PATH",
            path.display()
        )),
        ClientError::Refused(message) if message.ends_with("is not attached to this server") => {
            CliError(format!(
                "{refusal}; the server at {} does not have it attached: name the holder's control socket with --control PATH",
                path.display()
            ))
        }
        other => CliError(other.to_string()),
    })
}

/// The volume as the server knows it: an `rbd:` address as written, a
/// file by its absolute path (the server resolves it in its own
/// directory, and matches the file itself).
pub(super) fn as_attached(volume: &VolumeAddress) -> Result<String, CliError> {
    match volume {
        VolumeAddress::Rbd { .. } => Ok(volume.to_string()),
        VolumeAddress::File(path) => {
            let absolute = std::path::absolute(path)
                .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
            let absolute = absolute.to_str().ok_or_else(|| {
                CliError(format!("{}: the path is not UTF-8", absolute.display()))
            })?;
            Ok(absolute.to_string())
        }
    }
}
