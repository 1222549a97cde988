//! Volume addresses on the command line: a path, or `rbd:POOL/IMAGE` in the
//! Ceph cluster that `--ceph-conf` / `--ceph-id` name, as Ceph's own tools
//! take them.

use std::path::PathBuf;

use clap::Args;

use super::error::CliError;
use crate::envelope::VolumeAddress;
use crate::volume::rbd::CephOptions;

/// Which Ceph cluster `rbd:` volumes are in, and as which client.
#[derive(Debug, Args, Clone, Default)]
pub struct CephArgs {
    /// The Ceph configuration for rbd: volumes (default: CEPH_CONF, then Ceph's own search: /etc/ceph/ceph.conf, ...).
    #[arg(long, value_name = "FILE", env = "CEPH_CONF")]
    pub ceph_conf: Option<PathBuf>,
    /// The Ceph client id for rbd: volumes, without `client.` (its keyring is found as Ceph's tools find it).
    #[arg(long, value_name = "ID", default_value = "admin")]
    pub ceph_id: String,
}

impl CephArgs {
            pub fn options(&self) -> CephOptions {
        CephOptions {
            conf: self.ceph_conf.clone(),
            id: Some(self.ceph_id.clone()),
            ..CephOptions::default()
        }
    }

    /// `arg` as a volume address; a malformed `rbd:` address is one line.
    pub fn volume(&self, arg: &str) -> Result<VolumeAddress, CliError> {
        VolumeAddress::parse(arg, &self.options()).map_err(|e| CliError(e.to_string()))
    }
}
