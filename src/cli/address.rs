//! Volume addresses on the command line: a path, or `rbd:POOL/IMAGE` in the
//! Ceph cluster that `--ceph-conf` / `--ceph-id` name, as Ceph's own tools
//! take them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::error::CliError;
use super::parse::parse_duration;
use crate::envelope::VolumeAddress;
use crate::volume::rbd::CephOptions;

/// Which Ceph cluster `rbd:` volumes are in, and as which client.
#[derive(Debug, Args, Clone)]
pub struct CephArgs {
    /// The Ceph configuration for rbd: volumes (default: CEPH_CONF, then Ceph's own search: /etc/ceph/ceph.conf, ...).
    #[arg(long, value_name = "FILE", env = "CEPH_CONF")]
    pub ceph_conf: Option<PathBuf>,
    /// The Ceph client id for rbd: volumes, without `client.` (its keyring is found as Ceph's tools find it).
    #[arg(long, value_name = "ID", default_value = "admin")]
    pub ceph_id: String,
    /// How long a Ceph operation on rbd: volumes may take before it fails (an NBD client then gets EIO) instead of waiting for an OSD or monitor that is down, e.g. 30s (whole seconds, rounded up).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ceph_op_timeout: Duration,
}

impl CephArgs {
    pub fn options(&self) -> CephOptions {
        CephOptions {
            conf: self.ceph_conf.clone(),
            id: Some(self.ceph_id.clone()),
            op_timeout: Some(self.ceph_op_timeout),
        }
    }

    /// `arg` as a volume address; a malformed `rbd:` address is one line.
    pub fn volume(&self, arg: &str) -> Result<VolumeAddress, CliError> {
        VolumeAddress::parse(arg, &self.options()).map_err(|e| CliError(e.to_string()))
    }
}
