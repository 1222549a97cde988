//! [`RbdBackend`]: one open RBD image as a volume's [`Backend`], holding
//! the image's exclusive lock while attached read-write.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::address::RbdAddress;
use super::cluster::{self, CephOptions};
use super::error::{EBLOCKLISTED, Fenced, RbdError};
use super::ffi;
use crate::volume::attachment::{AttachMode, AttachmentError};
use crate::volume::backend::{Backend, Extent, ExtentList, FlushDone, IoBuf, IoDone};

/// Features of an image envol creates: copy-on-write clones later
/// (layering), one writer (exclusive-lock), and cheap allocation queries
/// (object-map, fast-diff) for NBD block status.
const FEATURES: u64 = ffi::FEATURE_LAYERING
    | ffi::FEATURE_EXCLUSIVE_LOCK
    | ffi::FEATURE_OBJECT_MAP
    | ffi::FEATURE_FAST_DIFF;

/// Largest byte count handed to one synchronous librbd call: its return
/// value is that byte count, kept well inside 32 bits.
const MAX_CALL: u64 = 1 << 30;

/// How often an attached writer asks the OSD who holds the image's lock
/// (see `watch_for_fencing`): one small read of the header object.
const FENCE_POLL: Duration = Duration::from_secs(1);

/// How old the last confirmation that this writer holds the lock may be
/// before a write waits for a fresh one (see `FenceState::before_write`).
/// Far more than `FENCE_POLL`: only a process (or machine) that was paused
/// — or an OSD that stopped answering — leaves it this stale.
const OWNER_STALE: Duration = Duration::from_secs(5);

/// How a take-over treats the image's current lock holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// Break the holder's lock only when Ceph no longer lists the holder's
    /// watch on the image (it died, or has been paused for longer than the
    /// OSDs' `osd_client_watch_timeout`); refuse while it is alive.
    IfHolderDead,
    /// Break it at once, alive or not (the operator knows it is gone, or
    /// wants it fenced now).
    Force,
}

/// One open RBD image, through a Ceph client (librados connection) of its
/// own.
///
/// Attach read-write with [`lock_attachment`](Backend::lock_attachment)
/// before the first write: without it librbd takes the exclusive lock by
/// itself at the first write, in its automatic mode (hands it to whoever
/// asks, breaks a dead holder's lock unasked).
pub struct RbdBackend {
    /// Shared with the fence watch (a `Weak`), never with I/O callbacks.
    image: Arc<ffi::Image>,
    address: RbdAddress,
    /// Opened with librbd's read-only open, which has no lock state
    /// (`rbd_lock_get_owners` says EINVAL): then the cluster to ask for
    /// the lock's owners, through a short read-write open of its own.
    read_only: Option<CephOptions>,
    fence: Arc<FenceState>,
}

impl Drop for RbdBackend {
    /// Stops the fence watch before the image is closed (see
    /// `FenceState::stopped`).
    fn drop(&mut self) {
        *self.fence.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.fence.wake();
    }
}

impl std::fmt::Debug for RbdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBackend")
            .field("address", &self.address)
            .field("client", &self.fence.client)
            .finish_non_exhaustive()
    }
}

/// What every operation (including callbacks on librbd's threads) needs to
/// recognise and report that this client was fenced.
struct FenceState {
    image: String,
    client: String,
    fenced: AtomicBool,
    on_fenced: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Whether the fence watch thread runs (the read-write attachment
    /// holds the lock).
    watching: AtomicBool,
    /// When an OSD last confirmed that this client holds the lock, in
    /// nanoseconds since `epoch` on the monotonic clock (which runs on
    /// while the process is stopped).
    confirmed_at: AtomicU64,
    epoch: Instant,
    /// Wakes the fence watch early (a write waits for a confirmation) and
    /// wakes waiting writes (a confirmation or the fence arrived).
    changed: Condvar,
    changed_lock: Mutex<()>,
    /// The operation deadline: how long a write waits for a confirmation.
    op_timeout: Duration,
    /// Set when the backend is dropped. The fence watch holds the image
    /// (a strong reference) only while holding this, for one OSD round
    /// trip: dropping the backend takes it, so the image is closed — and
    /// its lock released — by the thread that drops the backend, at once.
    stopped: Mutex<bool>,
}

impl FenceState {
    fn new(image: String, client: String, op_timeout: Duration) -> FenceState {
        FenceState {
            image,
            client,
            fenced: AtomicBool::new(false),
            on_fenced: Mutex::new(None),
            watching: AtomicBool::new(false),
            confirmed_at: AtomicU64::new(0),
            epoch: Instant::now(),
            changed: Condvar::new(),
            changed_lock: Mutex::new(()),
            op_timeout,
            stopped: Mutex::new(false),
        }
    }

    /// The `io::Error` for librbd's `errno`; the first `EBLOCKLISTED`
    /// also runs the `on_fenced` callback.
    fn error(&self, errno: i32) -> io::Error {
        if errno != EBLOCKLISTED {
            return io::Error::from_raw_os_error(errno);
        }
        self.fence()
    }

    /// Records that this client lost the lock to a take-over (it was
    /// blocklisted, or another client holds the lock now): the first time
    /// runs `on_fenced`. Returns the error every refused operation gets.
    fn fence(&self) -> io::Error {
        if !self.fenced.swap(true, Ordering::SeqCst) {
            if let Ok(callback) = self.on_fenced.lock()
                && let Some(callback) = callback.as_ref()
            {
                callback();
            }
            self.wake();
        }
        self.fenced_error()
    }

    fn fenced_error(&self) -> io::Error {
        io::Error::other(Fenced {
            image: self.image.clone(),
            client: self.client.clone(),
        })
    }

    fn wake(&self) {
        let _guard = self.changed_lock.lock();
        self.changed.notify_all();
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// An OSD just said this client holds the lock.
    fn confirmed(&self) {
        self.confirmed_at.store(self.now(), Ordering::SeqCst);
        self.wake();
    }

    /// A write failed as librbd fails writes of a client that lost the
    /// lock: the next writes wait until the fence watch has asked the OSD
    /// who holds it (and fenced this client if someone else does). Called
    /// on librbd's callback thread, which must not wait for an OSD.
    fn write_failed(&self, errno: i32) {
        if LOCK_LOST_ERRNOS.contains(&errno) {
            self.confirmed_at.store(0, Ordering::SeqCst);
            self.wake();
        }
    }

    fn confirmation_is_fresh(&self) -> bool {
        let age = self
            .now()
            .saturating_sub(self.confirmed_at.load(Ordering::SeqCst));
        age <= OWNER_STALE.as_nanos() as u64
    }

    /// Gate of every write of a read-write attachment. Ceph's blocklist is
    /// the fence, but OSDs do not check the lock on data writes, so a
    /// writer whose last confirmation is stale — the process was paused,
    /// perhaps for longer than any blocklist entry lasts — does not write
    /// until the fence watch has asked the OSD again: it waits (up to the
    /// operation deadline, then `ETIMEDOUT`) and is refused if the answer
    /// is that someone else holds the lock now.
    fn before_write(&self) -> io::Result<()> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(self.fenced_error());
        }
        if !self.watching.load(Ordering::SeqCst) || self.confirmation_is_fresh() {
            return Ok(());
        }
        let deadline = Instant::now() + self.op_timeout;
        let mut guard = self.changed_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.fenced.load(Ordering::SeqCst) {
                return Err(self.fenced_error());
            }
            if self.confirmation_is_fresh() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no OSD confirmed within {} s that this server still holds the image's lock",
                        self.image,
                        self.op_timeout.as_secs()
                    ),
                ));
            }
            // Wake the watch so it asks now rather than at its next poll.
            self.changed.notify_all();
            guard = self
                .changed
                .wait_timeout(guard, (deadline - now).min(FENCE_POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// `r` (bytes or `-errno`) of an operation on `expected` bytes.
    fn outcome(&self, r: isize, expected: usize) -> io::Result<()> {
        match usize::try_from(r) {
            Ok(n) if n == expected => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {n} of {expected} bytes transferred", self.image),
            )),
            Err(_) => Err(self.error(i32::try_from(-r).unwrap_or(ffi::libc_errno::EIO))),
        }
    }
}

impl FenceState {
    /// `outcome` of a write, noting errors that suggest a lost lock.
    fn write_outcome(&self, r: isize, expected: usize) -> io::Result<()> {
        if r < 0 {
            self.write_failed(i32::try_from(-r).unwrap_or(ffi::libc_errno::EIO));
        }
        self.outcome(r, expected)
    }
}

/// Errors librbd gives a write when this client no longer holds the lock
/// (`EROFS`: librbd dropped it; `EBLOCKLISTED` is recognised directly).
const LOCK_LOST_ERRNOS: [i32; 1] = [30];

impl RbdBackend {
    /// Opens an existing image (`ReadOnly`: librbd's read-only open).
    pub fn open(
        ceph: &CephOptions,
        address: &RbdAddress,
        mode: AttachMode,
    ) -> Result<RbdBackend, RbdError> {
        let ioctx = cluster::open_pool(ceph, address)?;
        let read_only = mode == AttachMode::ReadOnly;
        let image = cluster::open_image(&ioctx, address, read_only)?;
        let mut backend = Self::wrap(image, address, ceph)?;
        if read_only {
            backend.read_only = Some(ceph.clone());
        }
        Ok(backend)
    }

    /// Opens RBD snapshot `snapshot` of the image, read-only: the view a
    /// snapshot of the attached volume reads (its server took it).
    pub fn open_snapshot(
        ceph: &CephOptions,
        address: &RbdAddress,
        snapshot: &str,
    ) -> Result<RbdBackend, RbdError> {
        let ioctx = cluster::open_pool(ceph, address)?;
        let image = ffi::Image::open_snapshot(&ioctx, &address.image, snapshot).map_err(
            |errno| match errno {
                2 => RbdError::NoImage(format!("{address}@{snapshot}")),
                errno => {
                    RbdError::ceph(format!("opening RBD snapshot {address}@{snapshot}"), errno)
                }
            },
        )?;
        let mut backend = Self::wrap(image, address, ceph)?;
        backend.read_only = Some(ceph.clone());
        Ok(backend)
    }

    /// Creates the image with `size` bytes (features layering,
    /// exclusive-lock, object-map, fast-diff) and attaches it read-write:
    /// the returned backend holds the image's exclusive lock (as after
    /// [`lock_attachment`](Backend::lock_attachment), which is then a
    /// no-op), so no other server can take the image while the caller
    /// writes its superblocks. An existing image is refused unless `force`
    /// (then it is reused: attached read-write — refused while another
    /// server is — resized to `size`, its superblocks overwritten by the
    /// caller).
    pub fn create(
        ceph: &CephOptions,
        address: &RbdAddress,
        size: u64,
        force: bool,
    ) -> Result<RbdBackend, RbdError> {
        let ioctx = cluster::open_pool(ceph, address)?;
        match ioctx.create_image(&address.image, size, FEATURES) {
            Ok(()) => {}
            Err(17) if !force => return Err(RbdError::Exists(address.to_string())),
            Err(17) => {
                // Reused only by its one writer: the lock first (refused,
                // naming the holder, while another server has it), then
                // the resize, which needs it.
                let backend =
                    Self::wrap(cluster::open_image(&ioctx, address, false)?, address, ceph)?;
                backend.attach_created()?;
                backend
                    .image
                    .resize(size)
                    .map_err(|errno| RbdError::ceph(format!("resizing {address}"), errno))?;
                return Ok(backend);
            }
            Err(errno) => return Err(RbdError::ceph(format!("creating {address}"), errno)),
        }
        let image = cluster::open_image(&ioctx, address, false)?;
        let backend = Self::wrap(image, address, ceph)?;
        backend.attach_created()?;
        Ok(backend)
    }

    /// `create`'s read-write attachment, its refusal as an [`RbdError`].
    fn attach_created(&self) -> Result<(), RbdError> {
        self.lock_attachment(AttachMode::ReadWrite)
            .map_err(|e| match e {
                AttachmentError::InUseByClient { holders, .. } => RbdError::InUse {
                    image: self.address.to_string(),
                    holders,
                },
                other => RbdError::Ceph {
                    what: format!("attaching {}", self.address),
                    source: other.into(),
                },
            })
    }

    /// Whether the image exists.
    pub fn exists(ceph: &CephOptions, address: &RbdAddress) -> Result<bool, RbdError> {
        let ioctx = cluster::open_pool(ceph, address)?;
        match cluster::open_image(&ioctx, address, true) {
            Ok(_) => Ok(true),
            Err(RbdError::NoImage(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the image (it must not be open anywhere).
    pub fn remove(ceph: &CephOptions, address: &RbdAddress) -> Result<(), RbdError> {
        let ioctx = cluster::open_pool(ceph, address)?;
        ioctx
            .remove_image(&address.image)
            .map_err(|errno| match errno {
                2 => RbdError::NoImage(address.to_string()),
                errno => RbdError::ceph(format!("removing {address}"), errno),
            })
    }

    fn wrap(
        image: ffi::Image,
        address: &RbdAddress,
        ceph: &CephOptions,
    ) -> Result<RbdBackend, RbdError> {
        let client = image
            .rados()
            .address()
            .map_err(|errno| RbdError::ceph("reading this Ceph client's address", errno))?;
        Ok(RbdBackend {
            image: Arc::new(image),
            address: address.clone(),
            read_only: None,
            fence: Arc::new(FenceState::new(
                address.to_string(),
                client,
                Duration::from_secs(ceph.op_timeout_secs()),
            )),
        })
    }

    /// This server's Ceph client address, as lock owners, watchers and
    /// the blocklist name it.
    pub fn client_address(&self) -> &str {
        &self.fence.client
    }

    /// The image's address.
    pub fn address(&self) -> &RbdAddress {
        &self.address
    }

    /// Runs `f` once, the first time an operation finds this client
    /// fenced (blocklisted by a take-over) — at once if one already has.
    /// The server exits on it: nothing it writes can reach the image. `f`
    /// runs on whichever thread noticed (a librbd callback thread, the
    /// fence watch, a request's): it should only signal (a channel, a
    /// flag), and must not call `on_fenced` itself. A later call replaces
    /// an earlier `f`.
    pub fn on_fenced(&self, f: Box<dyn Fn() + Send + Sync>) {
        let Ok(mut slot) = self.fence.on_fenced.lock() else {
            return;
        };
        if self.fence.fenced.load(Ordering::SeqCst) {
            f();
        }
        *slot = Some(f);
    }

    /// Whether an operation has found this client fenced.
    pub fn is_fenced(&self) -> bool {
        self.fence.fenced.load(Ordering::SeqCst)
    }

    /// The clients holding the image's exclusive lock (none or one).
    pub fn lock_owners(&self) -> Result<Vec<String>, RbdError> {
        if let Some(ceph) = &self.read_only {
            return attached_by(ceph, &self.address);
        }
        self.image.lock_owners().map_err(|errno| {
            RbdError::ceph(format!("reading the lock owner of {}", self.address), errno)
        })
    }

    /// Breaks the image's lock held by another client, as `policy` allows,
    /// so that [`lock_attachment`](Backend::lock_attachment) can take it.
    /// The old holder is blocklisted in Ceph first, for ten years
    /// (`BLOCKLIST_EXPIRE_SECS`): whatever it sends afterwards is refused,
    /// even if it was only paused. The entry must never be removed while
    /// that server may still run. Returns the broken holder's address;
    /// `None` when nobody held the lock.
    pub fn take_over(&self, policy: TakeOver) -> Result<Option<String>, RbdError> {
        let owners = self.lock_owners()?;
        let Some(holder) = owners.into_iter().find(|o| *o != self.fence.client) else {
            return Ok(None);
        };
        if policy == TakeOver::IfHolderDead {
            let watchers = self.image.watchers().map_err(|errno| {
                RbdError::ceph(format!("listing the watchers of {}", self.address), errno)
            })?;
            if watchers.contains(&holder) {
                return Err(RbdError::HolderAlive {
                    image: self.address.to_string(),
                    holder,
                });
            }
        }
        // Fenced first, by envol itself, for `BLOCKLIST_EXPIRE_SECS`:
        // librbd's break blocklists for `rbd_blocklist_expire_seconds`,
        // whose non-zero values Ceph 16's librbd sends in a form the
        // monitors reject (the break fails with EINVAL), so it can only say
        // the monitors' default hour. The monitors keep an existing entry's
        // expiry when the break adds it again.
        self.image
            .rados()
            .blocklist_add(&holder, cluster::BLOCKLIST_EXPIRE_SECS)
            .map_err(|errno| {
                RbdError::ceph(
                    format!("blocklisting {holder}, the holder of {}", self.address),
                    errno,
                )
            })?;
        match self.image.lock_break(&holder) {
            Ok(()) => Ok(Some(holder)),
            // Gone (released, or broken by someone else) in the meantime.
            Err(2) => Ok(None),
            Err(errno) => Err(RbdError::ceph(
                format!("breaking the lock of {} held by {holder}", self.address),
                errno,
            )),
        }
    }

    /// Starts a thread that notices this client being fenced while no
    /// request arrives (an idle server would otherwise never learn it and
    /// keep running, answering nobody). Every [`FENCE_POLL`] — or at once
    /// when a write waits for it — it asks the OSD who holds the lock: a
    /// real round trip, since librbd's local `rbd_is_exclusive_lock_owner`
    /// can stay true after Ceph blocklisted this client. `EBLOCKLISTED`,
    /// or another client (or nobody) holding the lock, is the fence; this
    /// client holding it is a fresh confirmation for
    /// [`FenceState::before_write`]; any other error (an OSD not
    /// answering) leaves the confirmation to age. Ends when the backend is
    /// dropped. Best effort: a thread that cannot start leaves the fence to
    /// be found by the next request.
    fn watch_for_fencing(&self) {
        if self.fence.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        // The lock was just acquired.
        self.fence.confirmed();
        let image = Arc::downgrade(&self.image);
        let fence = self.fence.clone();
        let _ = std::thread::Builder::new()
            .name("rbd-fence-watch".into())
            .spawn(move || {
                loop {
                    {
                        let guard = fence.changed_lock.lock().unwrap_or_else(|e| e.into_inner());
                        if fence.fenced.load(Ordering::SeqCst) {
                            return;
                        }
                        let _ = fence.changed.wait_timeout(guard, FENCE_POLL);
                    }
                    let answer = {
                        let stopped = fence.stopped.lock().unwrap_or_else(|e| e.into_inner());
                        if *stopped || fence.fenced.load(Ordering::SeqCst) {
                            return;
                        }
                        let Some(image) = image.upgrade() else {
                            return;
                        };
                        image.lock_owners()
                    };
                    match answer {
                        Ok(owners) if owners.contains(&fence.client) => fence.confirmed(),
                        Ok(_) | Err(EBLOCKLISTED) => {
                            fence.fence();
                            return;
                        }
                        Err(_) => {}
                    }
                }
            });
    }

    /// The lock's owners other than this client.
    fn other_owners(&self) -> Result<Vec<String>, RbdError> {
        let mut owners = self.lock_owners()?;
        owners.retain(|o| *o != self.fence.client);
        Ok(owners)
    }

    /// Refuses (one line naming the fix) an image without the
    /// exclusive-lock feature: nothing would keep a second server from
    /// writing it. Not enabled silently: changing an image's features is
    /// the operator's decision (`rbd import` and `rbd create` give it by
    /// default).
    fn require_exclusive_lock(&self) -> Result<(), AttachmentError> {
        let features = self
            .image
            .features()
            .map_err(|errno| self.lock_error("reading the features of", errno))?;
        if features & ffi::FEATURE_EXCLUSIVE_LOCK == 0 {
            return Err(AttachmentError::Lock(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} lacks the exclusive-lock feature, without which Ceph cannot keep a second server from writing it: enable it with `rbd feature enable {}/{} exclusive-lock`",
                    self.address, self.address.pool, self.address.image
                ),
            )));
        }
        Ok(())
    }

    fn refusal(&self, wanted: AttachMode, holders: Vec<String>) -> AttachmentError {
        AttachmentError::InUseByClient {
            wanted,
            image: self.address.to_string(),
            holders,
        }
    }

    fn lock_error(&self, what: &str, errno: i32) -> AttachmentError {
        AttachmentError::Lock(io::Error::new(
            io::Error::from_raw_os_error(errno).kind(),
            format!(
                "{what} {}: {}",
                self.address,
                io::Error::from_raw_os_error(errno)
            ),
        ))
    }
}

/// The clients holding `address`'s exclusive lock (its read-write
/// attachment), for `volume info`; empty when nobody holds it.
pub fn attached_by(ceph: &CephOptions, address: &RbdAddress) -> Result<Vec<String>, RbdError> {
    let ioctx = cluster::open_pool(ceph, address)?;
    // librbd answers only through a read-write open (a read-only one has
    // no lock state), which takes nothing: the lock is acquired on the
    // first write or `rbd_lock_acquire`, neither of which happens here.
    let image = cluster::open_image(&ioctx, address, false)?;
    image
        .lock_owners()
        .map_err(|errno| RbdError::ceph(format!("reading the lock owner of {address}"), errno))
}

impl Backend for RbdBackend {
    /// librbd queues every request and calls back when it is done: many
    /// are in flight at once, as they must be over a network.
    fn is_asynchronous(&self) -> bool {
        true
    }

    fn start_read(&self, offset: u64, buf: IoBuf, done: IoDone) {
        let expected = buf.bytes().len();
        if expected == 0 {
            return done(buf, Ok(()));
        }
        let fence = self.fence.clone();
        self.image.start_read(
            offset,
            buf,
            Box::new(move |buf, r| done(buf, fence.outcome(r, expected))),
        )
    }

    fn start_write(&self, offset: u64, data: IoBuf, done: IoDone) {
        let expected = data.bytes().len();
        if expected == 0 {
            return done(data, Ok(()));
        }
        if let Err(e) = self.fence.before_write() {
            return done(data, Err(e));
        }
        let fence = self.fence.clone();
        // A finished aio write returns 0 (librbd 16), not a byte count:
        // anything not negative is success.
        self.image.start_write(
            offset,
            data,
            Box::new(move |buf, r| {
                done(
                    buf,
                    fence.write_outcome(if r >= 0 { expected as isize } else { r }, expected),
                )
            }),
        )
    }

    fn start_flush(&self, done: FlushDone) {
        let fence = self.fence.clone();
        self.image.start_flush(Box::new(move |r| {
            done(if r < 0 { fence.outcome(r, 0) } else { Ok(()) })
        }))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        for chunk in buf.chunks_mut(MAX_CALL as usize) {
            let r = self.image.read(offset + done as u64, chunk);
            let r = r.map_or_else(|errno| -(errno as isize), |n| n as isize);
            self.fence.outcome(r, chunk.len())?;
            done += chunk.len();
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        for chunk in data.chunks(MAX_CALL as usize) {
            self.fence.before_write()?;
            let r = self.image.write(offset + done as u64, chunk);
            let r = r.map_or_else(|errno| -(errno as isize), |n| n as isize);
            self.fence.write_outcome(r, chunk.len())?;
            done += chunk.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.image.flush().map_err(|errno| self.fence.error(errno))
    }

    /// `rbd_write_zeroes`, not discard: librbd skips a discard smaller than
    /// its granularity (`rbd_skip_partial_discard`), and the range must read
    /// back as zeros. Whole objects inside the range are deallocated.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut pos = offset;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        while pos < end {
            let step = (end - pos).min(MAX_CALL) as usize;
            self.fence.before_write()?;
            let r = self.image.write_zeroes(pos, step);
            let r = r.map_or_else(|errno| -(errno as isize), |n| n as isize);
            self.fence.write_outcome(r, step)?;
            pos += step as u64;
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.image.size().map_err(|errno| self.fence.error(errno))
    }

    /// `rbd_snap_create` through this (lock-holding) handle: librbd
    /// blocks writes and drains those in flight, so the snapshot holds
    /// every write completed before the call.
    fn create_store_snapshot(&self, name: &str) -> io::Result<()> {
        self.image
            .snap_create(name)
            .map_err(|errno| self.fence.error(errno))
    }

    fn remove_store_snapshot(&self, name: &str) -> io::Result<()> {
        match self.image.snap_remove(name) {
            Ok(()) | Err(2) => Ok(()),
            Err(errno) => Err(self.fence.error(errno)),
        }
    }

    fn store_snapshots(&self) -> io::Result<Vec<String>> {
        self.image
            .snap_names()
            .map_err(|errno| self.fence.error(errno))
    }

    /// `rbd_resize` (under the exclusive lock this read-write attachment
    /// holds): the new objects do not exist yet, so they read as zeros.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        if self.size()? >= len {
            return Ok(());
        }
        self.fence.before_write()?;
        self.image
            .resize(len)
            .map_err(|errno| self.fence.error(errno))
    }

    /// From `rbd_diff_iterate2` since the image's creation, at object
    /// granularity (the object map answers it without touching the OSDs'
    /// data where fast-diff is on). Holes are objects that do not exist,
    /// which read as zeros; an object that exists is data, even where parts
    /// of it were never written.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len);
        let size = self.size()?;
        // Neighbours of the same kind merge as they are pushed (the
        // callback reports one extent per object).
        let mut out = ExtentList::default();
        let mut push = |offset: u64, end: u64, hole: bool| out.push(offset, end, hole);
        let known_end = end.min(size);
        let mut pos = offset;
        if offset < known_end {
            let mut allocated = self
                .image
                .allocated(offset, known_end - offset, true)
                .map_err(|errno| self.fence.error(errno))?;
            allocated.sort_unstable();
            for (start, length) in allocated {
                let start_c = start.max(pos);
                let stop = start.saturating_add(length).min(known_end);
                if stop <= start_c {
                    continue;
                }
                push(pos, start_c, true);
                push(start_c, stop, false);
                pos = stop;
            }
            push(pos, known_end, true);
            pos = known_end.max(pos);
        }
        // Past the image's end nothing is known: report data, never a hole.
        push(pos, end, false);
        Ok(out.into_vec())
    }

    /// `ReadWrite`: takes the image's exclusive lock in managed mode and
    /// holds it until the backend is dropped. Refused, naming the holder,
    /// when another client holds it — even one that is dead: only a
    /// [`take_over`](RbdBackend::take_over) breaks a lock.
    ///
    /// `ReadOnly`: refused while a writer holds the lock, as for a volume
    /// file (a read-only attachment beside a live writer would read a
    /// changing image). A writer arriving after a reader is not refused:
    /// librbd has no shared lock for readers (its read-only open takes
    /// none), so a reader started first sees the writer's changes.
    ///
    /// Attaching read-write again (after [`create`](RbdBackend::create),
    /// which attaches) is a no-op while the lock is held.
    ///
    /// An image without the exclusive-lock feature is refused read-write:
    /// without it nothing keeps a second server from writing.
    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        if mode == AttachMode::ReadWrite && self.fence.watching.load(Ordering::SeqCst) {
            if self.fence.fenced.load(Ordering::SeqCst) {
                return Err(AttachmentError::Lock(self.fence.fenced_error()));
            }
            return Ok(());
        }
        if mode == AttachMode::ReadWrite && self.read_only.is_none() {
            self.require_exclusive_lock()?;
        }
        // Checked before acquiring, because librbd's acquire itself breaks
        // the lock of a holder whose watch expired (blocklisting it): that
        // is a take-over, which only `take_over` may do. A window remains
        // between this check and the acquire: a holder that arrives in it
        // makes the acquire fail (managed mode: it keeps its lock) and is
        // named below; one that arrives *and* dies past Ceph's watch
        // timeout inside it (milliseconds, unless this process is paused
        // there) would be broken as `TakeOver::IfHolderDead` would.
        let others = self
            .other_owners()
            .map_err(|e| AttachmentError::Lock(io::Error::other(e.to_string())))?;
        if !others.is_empty() {
            return Err(self.refusal(mode, others));
        }
        if mode == AttachMode::ReadOnly {
            return Ok(());
        }
        if self.read_only.is_some() {
            return Err(AttachmentError::Lock(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!("{} was opened read-only", self.address),
            )));
        }
        match self.image.lock_acquire() {
            Ok(()) => {
                // Ours now, as the OSD says (not librbd's local view).
                let owners = self
                    .lock_owners()
                    .map_err(|e| AttachmentError::Lock(io::Error::other(e.to_string())))?;
                if owners != [self.fence.client.clone()] {
                    let others: Vec<String> = owners
                        .into_iter()
                        .filter(|o| *o != self.fence.client)
                        .collect();
                    return Err(self.refusal(mode, others));
                }
                self.watch_for_fencing();
                Ok(())
            }
            Err(errno) => match self.other_owners() {
                Ok(others) if !others.is_empty() => Err(self.refusal(mode, others)),
                _ => Err(self.lock_error("taking the exclusive lock of", errno)),
            },
        }
    }
}
