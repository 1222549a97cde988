//! TEMPORARY, removed when branch `rbd` is merged: the fencing surface the
//! RBD backend is adding (`TakeOver`, `RbdBackend::take_over`,
//! `RbdBackend::on_fenced`, `rbd::attached_by`), so the envelope and CLI
//! compile against it meanwhile. Every call fails as the skeleton does.

use crate::volume::rbd::{CephOptions, RbdAddress, RbdBackend, RbdError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    IfHolderDead,
    Force,
}

pub trait PendingRbd {
    fn take_over(&self, policy: TakeOver) -> Result<Option<String>, RbdError>;
    fn on_fenced(&self, f: Box<dyn Fn() + Send + Sync>);
}

impl PendingRbd for RbdBackend {
    fn take_over(&self, policy: TakeOver) -> Result<Option<String>, RbdError> {
        let _ = policy;
        Err(RbdError::NotInstalled)
    }
    fn on_fenced(&self, f: Box<dyn Fn() + Send + Sync>) {
        drop(f);
    }
}

pub fn attached_by(ceph: &CephOptions, address: &RbdAddress) -> Result<Vec<String>, RbdError> {
    let _ = (ceph, address);
    Err(RbdError::NotInstalled)
}
