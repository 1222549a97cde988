//! `envol serve --config FILE`: serve's settings in a TOML file, for a
//! service manager (`contrib/systemd/`). Every key is one of serve's flags
//! (the reference, with every key: `contrib/envol.toml`); a flag given on
//! the command line (or through its environment variable) overrides the
//! file, and VOLUME arguments replace the file's exports.
//!
//! The file is read whole before anything starts: an unknown key is
//! refused (a misspelt limit must not silently be the default) and a bad
//! value names its key, each in one line with the file's path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer};

use super::error::{CliError, CliResult};
use super::parse::{parse_connections, parse_duration};
use super::serve::{self, ServeArgs, TlsModeArg, TransmissionArg, VolumeArg, split_volume_arg};
use super::target::parse_size;

/// The file, as serve's flags grouped: top-level listeners and exports,
/// then `[tls]`, `[limits]`, `[kms]`, `[ceph]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--control`.
    pub control: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--read-only`.
    pub read_only: Option<bool>,
    /// `--transmission`.
    #[serde(default, deserialize_with = "transmission")]
    pub transmission: Option<TransmissionArg>,
    /// The VOLUME arguments: `"VOLUME[=NAME][:ro]"` strings or tables.
    #[serde(default)]
    pub exports: Vec<ExportEntry>,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub kms: KmsSection,
    #[serde(default)]
    pub ceph: CephSection,
}

/// One export: the command line's form, or a table that needs no quoting
/// rules (`{ volume = "...", name = "...", read_only = true }`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a \"VOLUME[=NAME][:ro]\" string or a table { volume, name, read_only }"
)]
pub(crate) enum ExportEntry {
    Spec(String),
    Table(ExportTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportTable {
    pub volume: String,
    pub name: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// `--tls-cert`.
    pub cert: Option<PathBuf>,
    /// `--tls-key`.
    pub key: Option<PathBuf>,
    /// `--tls-ca`: client certificates must be issued by it.
    pub client_ca: Option<PathBuf>,
    /// `--tls`: `require` or `optional`.
    #[serde(default, deserialize_with = "tls_mode")]
    pub mode: Option<TlsModeArg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    /// `--max-inflight`: `"256M"` or a number of bytes.
    #[serde(default, deserialize_with = "size")]
    pub max_inflight: Option<u64>,
    /// `--max-connections`.
    #[serde(default, deserialize_with = "connections")]
    pub max_connections: Option<usize>,
    /// `--request-timeout`: `"30s"`, `"500ms"`, `"2m"`.
    #[serde(default, deserialize_with = "duration")]
    pub request_timeout: Option<Duration>,
    /// `--insecure-plaintext`.
    pub insecure_plaintext: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KmsSection {
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `--region`.
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CephSection {
    /// `--ceph-conf`.
    pub conf: Option<PathBuf>,
    /// `--ceph-id`.
    pub id: Option<String>,
    /// `--ceph-op-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub op_timeout: Option<Duration>,
}

/// A number or a string, for values people write either way (`512`, `"256M"`).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a number or a string (e.g. 512, \"256M\", \"30s\")"
)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl NumberOrText {
    fn text(self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(t) => t,
        }
    }
}

fn parsed_with<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = NumberOrText::deserialize(d)?;
    parse(&raw.text())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    parsed_with(d, parse_size)
}

fn connections<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    parsed_with(d, parse_connections)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed_with(d, parse_duration)
}

/// A clap value enum from its command-line spelling.
fn value_enum<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: clap::ValueEnum,
{
    let s = String::deserialize(d)?;
    T::from_str(&s, false).map(Some).map_err(|_| {
        let known: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        serde::de::Error::custom(format!(
            "invalid value {s:?}: expected one of {}",
            known.join(", ")
        ))
    })
}

fn transmission<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TransmissionArg>, D::Error> {
    value_enum(d)
}

fn tls_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TlsModeArg>, D::Error> {
    value_enum(d)
}

impl ServeConfig {
    /// Reads and checks `path`. Errors are one line: the file, the key, what is wrong.
    pub(crate) fn load(path: &Path) -> Result<ServeConfig, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| CliError(format!("{}: {e}", path.display())))
    }

    /// Parses the text of a configuration file; the error names the key.
    pub(crate) fn parse(text: &str) -> Result<ServeConfig, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| located(text, &e))?;
        let config: ServeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = located(text, e.inner());
            // At the top level the path is `.`: the message names the key.
            match at.as_str() {
                "." | "" => inner,
                _ => format!("{at}: {inner}"),
            }
        })?;
        if config.tls.cert.is_some() != config.tls.key.is_some() {
            return Err("tls: cert and key go together: give both or neither".into());
        }
        if config.tls.cert.is_none()
            && (config.tls.client_ca.is_some() || config.tls.mode.is_some())
        {
            return Err("tls: client_ca and mode need a cert and key".into());
        }
        Ok(config)
    }

    /// Fills in what the command line left unset (`given` says whether an
    /// argument id came from the command line or the environment).
    fn apply(self, args: &mut ServeArgs, given: impl Fn(&str) -> bool) -> Result<(), CliError> {
        fn set<T>(given: bool, flag: &mut T, file: Option<T>) {
            if !given && let Some(v) = file {
                *flag = v;
            }
        }
        fn set_opt<T>(given: bool, flag: &mut Option<T>, file: Option<T>) {
            if !given && file.is_some() {
                *flag = file;
            }
        }
        set_opt(given("socket"), &mut args.socket, self.socket);
        set_opt(given("listen"), &mut args.listen, self.listen);
        set_opt(given("control"), &mut args.control, self.control);
        set_opt(given("metrics"), &mut args.metrics.metrics, self.metrics);
        set(given("read_only"), &mut args.read_only, self.read_only);
        set(
            given("transmission"),
            &mut args.transmission,
            self.transmission,
        );
        // TLS is one setting: a certificate on the command line replaces the
        // file's whole [tls] section, so a file's CA never pairs with
        // another certificate.
        if !given("tls_cert") {
            set_opt(false, &mut args.tls.tls_cert, self.tls.cert);
            set_opt(false, &mut args.tls.tls_key, self.tls.key);
            set_opt(given("tls_ca"), &mut args.tls.tls_ca, self.tls.client_ca);
            set_opt(given("tls_mode"), &mut args.tls.tls_mode, self.tls.mode);
        }
        let limits = self.limits;
        set(
            given("max_inflight"),
            &mut args.limits.max_inflight,
            limits.max_inflight,
        );
        set(
            given("max_connections"),
            &mut args.limits.max_connections,
            limits.max_connections,
        );
        set(
            given("request_timeout"),
            &mut args.limits.request_timeout,
            limits.request_timeout,
        );
        set(
            given("insecure_plaintext"),
            &mut args.limits.insecure_plaintext,
            limits.insecure_plaintext,
        );
        set_opt(given("endpoint"), &mut args.kms.endpoint, self.kms.endpoint);
        set_opt(given("profile"), &mut args.kms.profile, self.kms.profile);
        set_opt(given("region"), &mut args.kms.region, self.kms.region);
        set_opt(given("ceph_conf"), &mut args.ceph.ceph_conf, self.ceph.conf);
        set(given("ceph_id"), &mut args.ceph.ceph_id, self.ceph.id);
        set(
            given("ceph_op_timeout"),
            &mut args.ceph.ceph_op_timeout,
            self.ceph.op_timeout,
        );
        // After [ceph]: an rbd: export is parsed in the cluster it names.
        if args.volumes.is_empty() {
            for entry in self.exports {
                args.file_exports.push(entry.resolve(args)?);
            }
        }
        Ok(())
    }
}

impl ExportEntry {
    fn resolve(self, args: &ServeArgs) -> Result<VolumeArg, CliError> {
        let in_file = |e: CliError| CliError(format!("exports: {}", e.0));
        match self {
            ExportEntry::Spec(spec) => split_volume_arg(&spec, &args.ceph).map_err(in_file),
            ExportEntry::Table(t) => {
                let volume = args.ceph.volume(&t.volume).map_err(in_file)?;
                let name = t.name.unwrap_or_else(|| volume.default_export_name());
                if name.is_empty() {
                    return Err(CliError(format!(
                        "exports: {}: the export name is empty",
                        t.volume
                    )));
                }
                Ok(VolumeArg {
                    volume,
                    name,
                    read_only: t.read_only,
                })
            }
        }
    }
}

/// toml's message (one line) with the line it is about.
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

/// `envol serve [--config FILE] ...`: the file's settings under the
/// command line's, then serve.
pub(crate) fn run(mut args: ServeArgs, matches: Option<&ArgMatches>) -> CliResult {
    if let Some(path) = args.config.clone() {
        let config = ServeConfig::load(&path)?;
        let given = |id: &str| {
            matches.is_some_and(|m| {
                matches!(
                    m.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
        };
        config
            .apply(&mut args, given)
            .map_err(|e| CliError(format!("{}: {}", path.display(), e.0)))?;
        if args.volumes.is_empty() && args.file_exports.is_empty() {
            return Err(CliError(format!(
                "{}: no exports: give VOLUME arguments or `exports = [...]` in the file",
                path.display()
            )));
        }
    }
    serve::run(args)
}

#[cfg(test)]
#[path = "serve_config_tests.rs"]
mod tests;
