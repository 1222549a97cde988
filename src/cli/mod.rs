//! The command line: clap definitions, printing, exit codes. No logic lives
//! here beyond wiring arguments to the library and results to the terminal.

/// `println!` that tolerates a closed stdout (`envol ... | head -1`): the
/// output is for a reader who left, and panicking on EPIPE would turn that
/// into a backtrace. The work itself is not interrupted.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod address;
mod control;
mod error;
mod key;
mod key_change;
mod key_inventory;
mod kms;
mod kms_limits;
mod metrics;
mod parse;
mod runtime;
mod s3;
mod serve;
mod serve_config;
mod serve_hydrate;
mod snapshot;
mod snapshot_attached;
mod snapshot_copy;
mod target;
mod up;
mod volume;
mod volume_grow;
mod volume_reencrypt;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use error::{CliError, CliResult};

#[derive(Debug, Parser)]
#[command(
    name = "envol",
    version,
    about = "Encrypted block volumes served over NBD, with data keys wrapped by an AWS-KMS-compatible master-key service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The master-key service: initialise, serve, manage users.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
    /// Master keys in the KMS: create, list, describe, enable, disable, rotate, delete.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Encrypted volumes (files or rbd:POOL/IMAGE): create, rewrap (move the data key to a new key version or key), inspect.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots in S3-compatible object storage: create, list, describe, copy, delete (restore: `envol volume restore`).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Attach volumes through the KMS and serve them over NBD.
    Serve(serve::ServeArgs),
    /// Run everything on this machine: embedded KMS, default key and volume, NBD server.
    Up(up::UpArgs),
    /// Attach a volume to a running `envol serve` and export it (through its control socket).
    Attach(control::AttachArgs),
    /// Detach an export from a running `envol serve`: wait for its clients (or --force), flush, release the volume.
    Detach(control::DetachArgs),
    /// The exports of a running `envol serve`, with their clients and counters.
    Status(control::StatusArgs),
}

/// Parses the command line (exiting with clap's usage error if it is
/// wrong), keeping clap's matches: `serve --config` needs to know which
/// flags were given, not just their values.
pub fn parse() -> (Cli, ArgMatches) {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, matches)
}

/// Runs a parsed command; `matches`: clap's, from [`parse`] (`None` when
/// the `Cli` was built otherwise: then nothing counts as given on the
/// command line).
pub fn run(cli: Cli, matches: Option<&ArgMatches>) -> CliResult {
    // Before any command touches a key: no core dump, no reading of this
    // process's memory by other processes of the same user. Every command,
    // since nearly all of them hold a secret at some point (a data key, the
    // KMS root key, master-key material, an access-key secret).
    crate::secret_memory::protect_process()
        .map_err(|e| CliError(format!("cannot mark the process non-dumpable: {e}")))?;
    match cli.command {
        Command::Kms(cmd) => kms::run(cmd),
        Command::Key(cmd) => key::run(cmd),
        Command::Volume(cmd) => volume::run(cmd),
        Command::Snapshot(cmd) => snapshot::run(cmd),
        Command::Serve(args) => {
            serve_config::run(args, matches.and_then(|m| m.subcommand_matches("serve")))
        }
        Command::Up(args) => up::run(args),
        Command::Attach(args) => control::attach(args),
        Command::Detach(args) => control::detach(args),
        Command::Status(args) => control::status(args),
    }
}

/// The log filter without `ENVOL_LOG`.
pub const DEFAULT_LOG_FILTER: &str =
    "warn,envol=info,aws_config=error,aws_runtime::env_config=error";

/// Logs go to stderr; `ENVOL_LOG` sets the filter.
///
/// The default, [`DEFAULT_LOG_FILTER`], is our own news and only problems
/// from dependencies — except the AWS SDK's configuration warnings (a missing profile
/// file, a provider that found nothing), which the key client reports itself
/// as one line that says what to do (`keys::aws`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENVOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
