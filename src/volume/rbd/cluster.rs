//! Which Ceph cluster, as which client: one librados connection per open
//! image, so each server is one Ceph client (one address) that Ceph can
//! fence on its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::address::RbdAddress;
use super::error::RbdError;
use super::ffi;

/// How long a Ceph operation may take before it fails instead of waiting
/// (an OSD or monitor down): librados's `rados_osd_op_timeout`,
/// `rados_mon_op_timeout` and `client_mount_timeout`.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client fenced by a take-over stays on Ceph's blocklist:
/// ten years, i.e. for as long as that server may be alive. OSDs do not
/// check the lock on data writes, so the blocklist is the fence: with the
/// monitors' default (one hour) a holder paused for longer would write
/// into the new owner's image when it resumes. See `RbdBackend::take_over`
/// for why librbd's own `rbd_blocklist_expire_seconds` is not used.
pub(super) const BLOCKLIST_EXPIRE_SECS: u32 = 10 * 365 * 24 * 3600;

/// Which Ceph cluster, as which client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CephOptions {
    /// A ceph.conf; `None`: librados's own search (`CEPH_CONF`, then
    /// /etc/ceph/ceph.conf, ...).
    pub conf: Option<PathBuf>,
    /// Client id without `client.` (Ceph's `--id`); `None` means `admin`.
    pub id: Option<String>,
    /// Deadline of every Ceph operation (connecting included): past it the
    /// operation fails with `ETIMEDOUT` (an I/O error for NBD clients)
    /// instead of hanging while an OSD or monitor is down. `None`:
    /// [`DEFAULT_OP_TIMEOUT`]. Whole seconds; at least one.
    pub op_timeout: Option<Duration>,
}

impl CephOptions {
    /// The client id, `admin` by default.
    pub fn client_id(&self) -> &str {
        self.id.as_deref().unwrap_or("admin")
    }

    /// The operation deadline in whole seconds (rounded up, at least 1).
    pub fn op_timeout_secs(&self) -> u64 {
        let timeout = self.op_timeout.unwrap_or(DEFAULT_OP_TIMEOUT);
        (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1)
    }
}

/// Connects as `ceph` says.
pub(super) fn connect(ceph: &CephOptions) -> Result<Arc<ffi::Rados>, RbdError> {
    let conf = match &ceph.conf {
        Some(path) => Some(path.to_str().ok_or_else(|| {
            RbdError::ceph(
                format!("Ceph configuration {}", path.display()),
                ffi::libc_errno::EINVAL,
            )
        })?),
        None => None,
    };
    let timeout = ceph.op_timeout_secs().to_string();
    let settings = [
        ("rados_osd_op_timeout", timeout.clone()),
        ("rados_mon_op_timeout", timeout.clone()),
        ("client_mount_timeout", timeout),
        // librbd's client cache off, whatever ceph.conf says: with it on
        // (Ceph's default: write-back after the first FLUSH) librbd
        // completes a write once it is in this process's memory, so a
        // failover would lose acknowledged writes not yet flushed, and a
        // fenced server that resumes could still acknowledge writes that
        // never land. With it off, an acknowledged write is in the cluster
        // (tests/rbd_failover.rs fails with the default and passes so).
        ("rbd_cache", "false".to_string()),
        // librbd dispatches an aio request on the calling thread instead
        // of handing it to its own op thread first (Ceph's default queues
        // it, "to prevent blocking"): one thread switch less per request.
        // The callers are the NBD connection's reader and workers, which
        // only start requests; librbd's dispatch itself queues (lock,
        // refresh, object map) rather than waits, and what can still wait
        // — librados's in-flight throttle — is released by the messenger,
        // never by the caller. Measured (4 KiB random QD32 and 1 MiB
        // sequential, A/B on one cluster): context switches per request
        // 2.4 → 1.8 (random read), 2.0 → 1.2–1.5 (random write), 8–10 →
        // 6–6.6 (sequential); server CPU per GiB 17.4–17.7 → 15.6–16.0 s
        // (random read), 1.03–1.25 → 1.03–1.05 s (sequential write).
        // Not set, though measured faster: `rbd_disable_zero_copy_writes
        // =false` (no copy of a write's buffer in librbd; 1 MiB writes
        // used ~13 % less server CPU). librbd then delays a write's
        // completion until the messenger drops the buffer, which with an
        // OSD killed is when the OSD returns: the write's EIO came after
        // 28–35 s instead of the operation deadline (3 s in
        // tests/rbd_failover.rs, which fails with it).
        ("rbd_non_blocking_aio", "false".to_string()),
        // librados logs to stderr by itself (a failed connect prints
        // several lines of its own); envol reports every failure as one
        // line of its own instead.
        ("log_to_stderr", "false".to_string()),
        ("err_to_stderr", "false".to_string()),
        ("log_to_file", "false".to_string()),
        ("log_file", String::new()),
    ];
    match ffi::Rados::connect(ceph.client_id(), conf, &settings) {
        Ok(rados) => Ok(Arc::new(rados)),
        Err(ffi::ConnectError::NotInstalled) => Err(RbdError::NotInstalled),
        Err(ffi::ConnectError::Failed(step, errno)) => {
            let conf = ceph.conf.as_ref().map_or_else(
                || "librados's default".to_string(),
                |p| p.display().to_string(),
            );
            let what = match step {
                ffi::ConnectStep::ReadConf => format!("reading the Ceph configuration {conf}"),
                ffi::ConnectStep::Connect => format!(
                    "connecting to Ceph as client.{} (configuration {conf}, deadline {} s)",
                    ceph.client_id(),
                    ceph.op_timeout_secs()
                ),
                ffi::ConnectStep::Setup => {
                    format!("setting up a Ceph client as client.{}", ceph.client_id())
                }
            };
            Err(RbdError::ceph(what, errno))
        }
    }
}

/// Connects and opens `address`'s pool.
pub(super) fn open_pool(
    ceph: &CephOptions,
    address: &RbdAddress,
) -> Result<Arc<ffi::IoCtx>, RbdError> {
    let rados = connect(ceph)?;
    match ffi::IoCtx::open(&rados, &address.pool) {
        Ok(ioctx) => Ok(Arc::new(ioctx)),
        Err(2) => Err(RbdError::NoPool(address.pool.clone())),
        Err(errno) => Err(RbdError::ceph(
            format!("opening Ceph pool {:?}", address.pool),
            errno,
        )),
    }
}

/// Opens `address` through `ioctx`.
pub(super) fn open_image(
    ioctx: &Arc<ffi::IoCtx>,
    address: &RbdAddress,
    read_only: bool,
) -> Result<ffi::Image, RbdError> {
    ffi::Image::open(ioctx, &address.image, read_only).map_err(|errno| match errno {
        2 => RbdError::NoImage(address.to_string()),
        errno => RbdError::ceph(format!("opening {address}"), errno),
    })
}
