//! `envol kms ...`: initialise, serve, and manage the users of a KMS data directory.

use super::metrics::{MetricsArgs, MetricsPlan};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::error::{CliError, CliResult};
use super::key::JsonFlag;
use super::kms_limits::ServeLimitArgs;
use super::runtime::{runtime, shutdown_signal};
use crate::kms::clock::SystemClock;
use crate::kms::datadir::DataDir;
use crate::kms::iam::AccessKey;
use crate::kms::{Kms, http, profile};

#[derive(Debug, Args)]
pub struct DataArg {
    /// The KMS data directory.
    #[arg(long, env = "ENVOL_KMS_DATA", value_name = "DIR")]
    pub data: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Also write the credentials as this AWS profile (shared credentials and config files).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// With --profile: record this KMS endpoint as the profile's endpoint_url.
    #[arg(long, value_name = "URL", requires = "profile")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Create a data directory: account, root key, database, root credentials.
    Init {
        #[command(flatten)]
        data: DataArg,
        /// The region this KMS answers as (part of every key ARN).
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// Also make a self-signed TLS certificate for localhost/127.0.0.1 (DIR/tls/).
        #[arg(long)]
        self_signed_cert: bool,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Serve the AWS KMS JSON API.
    Serve {
        #[command(flatten)]
        data: DataArg,
        /// Address to listen on (loopback only without TLS).
        #[arg(long, default_value = "127.0.0.1:4599")]
        listen: SocketAddr,
        /// Serve HTTPS with this certificate chain (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        limits: ServeLimitArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
        /// Allow plaintext metrics (--metrics) on a non-loopback address; the KMS API itself is never served in plaintext beyond loopback.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Manage IAM-style users and their access keys.
    #[command(subcommand)]
    User(UserCommand),
    /// Verify that every stored key version unseals under the root key.
    Check {
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user with a new access key (printed once).
    Add {
        /// The user's name (1-64 of A-Z a-z 0-9 and +=,.@_-).
        name: String,
        #[command(flatten)]
        data: DataArg,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// List principals: name, unique id (`AIDA…`; the account id for the
    /// root), ARN and access key ids.
    List {
        #[command(flatten)]
        data: DataArg,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove a user, its access keys, and the AWS profiles holding them.
    Remove {
        /// The user to remove.
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
}

pub fn run(cmd: KmsCommand) -> CliResult {
    match cmd {
        KmsCommand::Init {
            data,
            region,
            self_signed_cert,
            profile,
        } => init(data.data, &region, self_signed_cert, profile),
        KmsCommand::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            limits,
            metrics,
            insecure_plaintext,
        } => {
            let tls = tls_cert.zip(tls_key);
            let metrics = metrics.plan(
                tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                insecure_plaintext,
            )?;
            serve(data.data, listen, tls, &limits, metrics)
        }
        KmsCommand::User(UserCommand::Add {
            name,
            data,
            profile,
        }) => user_add(data.data, &name, profile),
        KmsCommand::User(UserCommand::List { data, out }) => user_list(data.data, out),
        KmsCommand::User(UserCommand::Remove { name, data }) => user_remove(data.data, &name),
        KmsCommand::Check { data } => {
            let n = open(&data.data)?.check_integrity()?;
            say!("ok: {n} key versions unseal under the root key");
            Ok(())
        }
    }
}

fn open(dir: &std::path::Path) -> Result<Kms, CliError> {
    Ok(Kms::open(&DataDir::new(dir), Arc::new(SystemClock))?)
}

fn print_access_key(who: &str, access: &AccessKey) {
    say!("Access key for {who} (the secret is shown only now):");
    say!("  aws_access_key_id     = {}", access.access_key_id);
    say!(
        "  aws_secret_access_key = {}",
        access.secret_access_key.as_str()
    );
}

fn write_profile(args: &ProfileArgs, access: &AccessKey, region: &str) -> CliResult {
    if let Some(name) = &args.profile {
        let w = profile::write_profile(name, access, region, args.endpoint.as_deref())
            .map_err(CliError)?;
        say!(
            "Wrote profile {name} to {} and {}",
            w.credentials_file.display(),
            w.config_file.display()
        );
    }
    Ok(())
}

fn init(dir: PathBuf, region: &str, self_signed: bool, profile_args: ProfileArgs) -> CliResult {
    if let Some(p) = &profile_args.profile {
        profile::validate_profile_name(p).map_err(CliError)?;
    }
    let (kms, access) = Kms::init(&DataDir::new(&dir), region, Arc::new(SystemClock))?;
    say!("Initialised KMS data directory {}", dir.display());
    say!("  account: {}", kms.account_id());
    say!("  region:  {}", kms.region());
    say!("  root:    {}", kms.root_principal().arn);
    print_access_key("the account root", &access);
    if self_signed {
        let (cert, key) = crate::kms::tls::write_self_signed(&dir).map_err(CliError)?;
        say!("Self-signed TLS certificate for localhost, 127.0.0.1, ::1:");
        say!(
            "  serve with: envol kms serve --data {} --tls-cert {} --tls-key {}",
            dir.display(),
            cert.display(),
            key.display()
        );
        say!("  clients:    export AWS_CA_BUNDLE={}", cert.display());
    }
    write_profile(&profile_args, &access, kms.region())
}

fn user_add(dir: PathBuf, name: &str, profile_args: ProfileArgs) -> CliResult {
    if let Some(p) = &profile_args.profile {
        profile::validate_profile_name(p).map_err(CliError)?;
    }
    let kms = open(&dir)?;
    let (principal, access) = kms.add_user(name)?;
    say!("Added user {}", principal.arn);
    print_access_key(principal.short(), &access);
    write_profile(&profile_args, &access, kms.region())
}

/// Removes the user, then the AWS profiles holding its access keys (those
/// `user add --profile` wrote): they could only fail from now on.
fn user_remove(dir: PathBuf, name: &str) -> CliResult {
    let kms = open(&dir)?;
    let key_ids: Vec<String> = kms
        .list_principals()?
        .into_iter()
        .filter(|p| p.name == name)
        .flat_map(|p| p.access_key_ids)
        .collect();
    kms.remove_user(name)?;
    say!("Removed user {name} and its access keys.");
    if key_ids.is_empty() {
        return Ok(());
    }
    let removed = profile::remove_profiles_with_keys(&key_ids)
        .map_err(|e| CliError(format!("removed user {name}, but not its AWS profile: {e}")))?;
    for p in removed {
        say!("Removed AWS profile {p} (it held {name}'s access key).");
    }
    Ok(())
}

fn user_list(dir: PathBuf, out: JsonFlag) -> CliResult {
    let kms = open(&dir)?;
    let principals = kms.list_principals()?;
    if out.json {
        let list: Vec<serde_json::Value> = principals
            .iter()
            .map(|p| {
                serde_json::json!({
                    "UserName": p.name,
                    "UserId": p.id,
                    "Arn": p.arn,
                    "AccessKeyIds": p.access_key_ids,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    for p in principals {
        say!(
            "{}\t{}\t{}\t{}",
            p.name,
            p.id,
            p.arn,
            p.access_key_ids.join(",")
        );
    }
    Ok(())
}

fn serve(
    dir: PathBuf,
    listen: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    limit_args: &ServeLimitArgs,
    metrics: Option<MetricsPlan>,
) -> CliResult {
    if !listen.ip().is_loopback() && tls.is_none() {
        return Err(CliError(format!(
            "refusing to serve the KMS on {listen} without TLS: listen on a loopback address (127.0.0.1) or pass --tls-cert and --tls-key"
        )));
    }
    let tls_config = match &tls {
        Some((cert, key)) => Some(crate::kms::tls::server_config(cert, key).map_err(CliError)?),
        None => None,
    };
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let kms = Arc::new(open(&dir)?);
    kms.set_audit_rotation(limit_args.rotation());
    let limits = limit_args.limits();
    let rt = runtime()?;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| CliError(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        let metrics = match metrics {
            Some(plan) => Some(plan.bind().await?),
            None => None,
        };
        say!(
            "envol kms: account {} region {} listening on {scheme}://{addr}",
            kms.account_id(),
            kms.region()
        );
        say!(
            "  use it with: aws kms list-keys --endpoint-url {scheme}://{addr} --profile <profile>"
        );
        if let Some(endpoint) = metrics {
            let mut registry = super::metrics::registry();
            registry.register_collector(Box::new(kms.metrics()));
            super::metrics::spawn(endpoint, registry)?;
        }
        // Tests and scripts read the address from stdout: don't buffer it.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        http::serve(kms, listener, tls_config, limits, shutdown).await?;
        tracing::info!("KMS stopped");
        Ok(())
    })
}
