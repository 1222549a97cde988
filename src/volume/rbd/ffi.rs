//! The librados/librbd C API, loaded at run time, behind owned handles.
//!
//! Hand-written because no maintained crate binds librbd (`ceph` binds
//! librados only; `ceph-rbd` and `librbd-sys` are abandoned; `rbd-sys` is
//! raw bindgen output pinned to newer headers), and only about thirty
//! functions are needed. The signatures below are Ceph 16's `librados.h` and
//! `librbd.h`; every one of them is part of the stable C API since Ceph 15 or
//! earlier.
//!
//! The libraries are opened with `dlopen` (the `libloading` crate) the first
//! time an `rbd:` volume is used, so envol builds without Ceph's headers and
//! runs where Ceph is not installed: there every call fails with
//! [`NotInstalled`]. They are never closed: librados starts threads that
//! must not outlive their code.
//!
//! This is the crate's second `unsafe` exception (beside `secret_memory`).
//! Everything unsafe stays in this file: the handles ([`Rados`], [`IoCtx`],
//! [`Image`]) own what the C API hands out, close it on drop, keep what
//! they depend on alive (an image holds its I/O context, which holds its
//! cluster handle), and expose safe methods that return negative C return
//! values as positive errno values (`Err(errno)`).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

use libloading::Library;

use crate::volume::IoBuf;

type RadosT = *mut c_void;
type IoCtxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
type ImageOptionsT = *mut c_void;
type CompletionCallback = unsafe extern "C" fn(CompletionT, *mut c_void);
type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `rbd_lock_mode_t`.
const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;
/// `RBD_IMAGE_OPTION_FEATURES`, `RBD_IMAGE_OPTION_ORDER`.
const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
const RBD_IMAGE_OPTION_ORDER: c_int = 2;

/// `RBD_FEATURE_*` (rbd/features.h).
pub const FEATURE_LAYERING: u64 = 1 << 0;
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
pub const FEATURE_OBJECT_MAP: u64 = 1 << 3;
pub const FEATURE_FAST_DIFF: u64 = 1 << 4;

/// `rbd_image_watcher_t`.
#[repr(C)]
struct ImageWatcher {
    addr: *mut c_char,
    id: i64,
    cookie: u64,
}

/// `rbd_snap_info_t`: one snapshot of an image.
#[repr(C)]
struct SnapInfo {
    id: u64,
    size: u64,
    name: *const c_char,
}

/// librados or librbd could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInstalled;

/// The C functions used, resolved once.
struct Api {
    rados_create2: unsafe extern "C" fn(*mut RadosT, *const c_char, *const c_char, u64) -> c_int,
    rados_conf_read_file: unsafe extern "C" fn(RadosT, *const c_char) -> c_int,
    rados_conf_set: unsafe extern "C" fn(RadosT, *const c_char, *const c_char) -> c_int,
    rados_connect: unsafe extern "C" fn(RadosT) -> c_int,
    rados_shutdown: unsafe extern "C" fn(RadosT),
    rados_getaddrs: unsafe extern "C" fn(RadosT, *mut *mut c_char) -> c_int,
    rados_blocklist_add: unsafe extern "C" fn(RadosT, *mut c_char, u32) -> c_int,
    rados_ioctx_create: unsafe extern "C" fn(RadosT, *const c_char, *mut IoCtxT) -> c_int,
    rados_ioctx_destroy: unsafe extern "C" fn(IoCtxT),

    rbd_image_options_create: unsafe extern "C" fn(*mut ImageOptionsT),
    rbd_image_options_destroy: unsafe extern "C" fn(ImageOptionsT),
    rbd_image_options_set_uint64: unsafe extern "C" fn(ImageOptionsT, c_int, u64) -> c_int,
    rbd_create4: unsafe extern "C" fn(IoCtxT, *const c_char, u64, ImageOptionsT) -> c_int,
    rbd_remove: unsafe extern "C" fn(IoCtxT, *const c_char) -> c_int,
    rbd_open: unsafe extern "C" fn(IoCtxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    rbd_open_read_only:
        unsafe extern "C" fn(IoCtxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    rbd_close: unsafe extern "C" fn(ImageT) -> c_int,
    rbd_get_size: unsafe extern "C" fn(ImageT, *mut u64) -> c_int,
    rbd_get_features: unsafe extern "C" fn(ImageT, *mut u64) -> c_int,
    rbd_resize: unsafe extern "C" fn(ImageT, u64) -> c_int,
    rbd_read: unsafe extern "C" fn(ImageT, u64, usize, *mut c_char) -> isize,
    rbd_write: unsafe extern "C" fn(ImageT, u64, usize, *const c_char) -> isize,
    rbd_write_zeroes: unsafe extern "C" fn(ImageT, u64, usize, c_int, c_int) -> isize,
    rbd_flush: unsafe extern "C" fn(ImageT) -> c_int,
    rbd_aio_create_completion:
        unsafe extern "C" fn(*mut c_void, CompletionCallback, *mut CompletionT) -> c_int,
    rbd_aio_read: unsafe extern "C" fn(ImageT, u64, usize, *mut c_char, CompletionT) -> c_int,
    rbd_aio_write: unsafe extern "C" fn(ImageT, u64, usize, *const c_char, CompletionT) -> c_int,
    rbd_aio_flush: unsafe extern "C" fn(ImageT, CompletionT) -> c_int,
    rbd_aio_get_return_value: unsafe extern "C" fn(CompletionT) -> isize,
    rbd_aio_release: unsafe extern "C" fn(CompletionT),
    rbd_lock_acquire: unsafe extern "C" fn(ImageT, c_int) -> c_int,
    rbd_lock_get_owners:
        unsafe extern "C" fn(ImageT, *mut c_int, *mut *mut c_char, *mut usize) -> c_int,
    rbd_lock_get_owners_cleanup: unsafe extern "C" fn(*mut *mut c_char, usize),
    rbd_lock_break: unsafe extern "C" fn(ImageT, c_int, *const c_char) -> c_int,
    rbd_watchers_list: unsafe extern "C" fn(ImageT, *mut ImageWatcher, *mut usize) -> c_int,
    rbd_watchers_list_cleanup: unsafe extern "C" fn(*mut ImageWatcher, usize),
    rbd_snap_create: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    rbd_snap_remove: unsafe extern "C" fn(ImageT, *const c_char) -> c_int,
    rbd_snap_list: unsafe extern "C" fn(ImageT, *mut SnapInfo, *mut c_int) -> c_int,
    rbd_snap_list_end: unsafe extern "C" fn(*mut SnapInfo),
    rbd_diff_iterate2: unsafe extern "C" fn(
        ImageT,
        *const c_char,
        u64,
        u64,
        u8,
        u8,
        DiffCallback,
        *mut c_void,
    ) -> c_int,

    // Kept open for the life of the process (the function pointers above
    // point into them).
    _rados: Library,
    _rbd: Library,
}

unsafe extern "C" {
    /// C's `free`, for the string `rados_getaddrs` `strdup`s.
    fn free(ptr: *mut c_void);
}

static API: OnceLock<Result<Api, NotInstalled>> = OnceLock::new();

fn api() -> Result<&'static Api, NotInstalled> {
    API.get_or_init(load).as_ref().map_err(|e| *e)
}

unsafe extern "C" {
    // libc's `_exit(2)`: ends the process at once, running no `atexit`
    // handler and no C++ static destructor.
    fn _exit(status: c_int) -> !;
}

/// Ends the process with `status` without running librados's C++ static
/// destructors: with librados clients still open (a fenced server leaves
/// them so, on purpose) they tear down state its own threads are still
/// using, and `std::process::exit` then sometimes died of SIGSEGV instead
/// of exiting with `status` (seen in tests/volume_rbd.rs).
pub fn exit_immediately(status: i32) -> ! {
    // SAFETY: `_exit` takes any int and never returns; skipping destructors
    // is the point. Nothing of ours needs them: keys are wiped by their own
    // drops or die with the address space, and stderr is unbuffered.
    unsafe { _exit(status) }
}

/// Whether librados and librbd can be loaded here.
pub fn installed() -> bool {
    api().is_ok()
}

fn load() -> Result<Api, NotInstalled> {
    // SAFETY: loading runs the libraries' initialisers; librados.so.2 and
    // librbd.so.1 are Ceph's own shared libraries, whose initialisers only
    // set up their static state (no requirement on the loading thread).
    let rados = unsafe { Library::new("librados.so.2") }.map_err(|_| NotInstalled)?;
    // SAFETY: as above.
    let rbd = unsafe { Library::new("librbd.so.1") }.map_err(|_| NotInstalled)?;
    macro_rules! sym {
        ($lib:expr, $name:ident) => {
            // SAFETY: the symbol is looked up by its C name and given the
            // signature declared in `Api`, which is the one in Ceph 16's
            // librados.h / librbd.h; the pointer is copied out and stays
            // valid because the library is kept open in `Api`.
            *unsafe { $lib.get(concat!(stringify!($name), "\0").as_bytes()) }
                .map_err(|_| NotInstalled)?
        };
    }
    Ok(Api {
        rados_create2: sym!(rados, rados_create2),
        rados_conf_read_file: sym!(rados, rados_conf_read_file),
        rados_conf_set: sym!(rados, rados_conf_set),
        rados_connect: sym!(rados, rados_connect),
        rados_shutdown: sym!(rados, rados_shutdown),
        rados_getaddrs: sym!(rados, rados_getaddrs),
        rados_blocklist_add: sym!(rados, rados_blocklist_add),
        rados_ioctx_create: sym!(rados, rados_ioctx_create),
        rados_ioctx_destroy: sym!(rados, rados_ioctx_destroy),
        rbd_image_options_create: sym!(rbd, rbd_image_options_create),
        rbd_image_options_destroy: sym!(rbd, rbd_image_options_destroy),
        rbd_image_options_set_uint64: sym!(rbd, rbd_image_options_set_uint64),
        rbd_create4: sym!(rbd, rbd_create4),
        rbd_remove: sym!(rbd, rbd_remove),
        rbd_open: sym!(rbd, rbd_open),
        rbd_open_read_only: sym!(rbd, rbd_open_read_only),
        rbd_close: sym!(rbd, rbd_close),
        rbd_get_size: sym!(rbd, rbd_get_size),
        rbd_get_features: sym!(rbd, rbd_get_features),
        rbd_resize: sym!(rbd, rbd_resize),
        rbd_read: sym!(rbd, rbd_read),
        rbd_write: sym!(rbd, rbd_write),
        rbd_write_zeroes: sym!(rbd, rbd_write_zeroes),
        rbd_flush: sym!(rbd, rbd_flush),
        rbd_aio_create_completion: sym!(rbd, rbd_aio_create_completion),
        rbd_aio_read: sym!(rbd, rbd_aio_read),
        rbd_aio_write: sym!(rbd, rbd_aio_write),
        rbd_aio_flush: sym!(rbd, rbd_aio_flush),
        rbd_aio_get_return_value: sym!(rbd, rbd_aio_get_return_value),
        rbd_aio_release: sym!(rbd, rbd_aio_release),
        rbd_lock_acquire: sym!(rbd, rbd_lock_acquire),
        rbd_lock_get_owners: sym!(rbd, rbd_lock_get_owners),
        rbd_lock_get_owners_cleanup: sym!(rbd, rbd_lock_get_owners_cleanup),
        rbd_lock_break: sym!(rbd, rbd_lock_break),
        rbd_watchers_list: sym!(rbd, rbd_watchers_list),
        rbd_watchers_list_cleanup: sym!(rbd, rbd_watchers_list_cleanup),
        rbd_snap_create: sym!(rbd, rbd_snap_create),
        rbd_snap_remove: sym!(rbd, rbd_snap_remove),
        rbd_snap_list: sym!(rbd, rbd_snap_list),
        rbd_snap_list_end: sym!(rbd, rbd_snap_list_end),
        rbd_diff_iterate2: sym!(rbd, rbd_diff_iterate2),
        _rados: rados,
        _rbd: rbd,
    })
}

/// A C return value that counts: negative is `-errno`.
fn check_count(r: c_int) -> Result<c_int, i32> {
    if r < 0 { Err(-r) } else { Ok(r) }
}

/// A C return value: negative is `-errno`.
fn check(r: c_int) -> Result<(), i32> {
    if r < 0 { Err(-r) } else { Ok(()) }
}

/// A C string argument; an interior NUL is EINVAL (callers validate names
/// first, so this is a second line of defence).
fn c_string(s: &str) -> Result<CString, i32> {
    CString::new(s).map_err(|_| libc_errno::EINVAL)
}

/// The few errno values this module produces itself.
pub mod libc_errno {
    pub const EINVAL: i32 = 22;
    pub const EIO: i32 = 5;
    pub const ERANGE: i32 = 34;
}

/// A cluster handle (`rados_t`), created, configured and connected; shut
/// down on drop.
#[derive(Debug)]
pub struct Rados {
    handle: RadosT,
    api: &'static Api,
}

// SAFETY: a connected `rados_t` may be used from any number of threads at
// once (librados is thread-safe); it is only shut down in `Drop`, which
// has exclusive access.
unsafe impl Send for Rados {}
// SAFETY: as above.
unsafe impl Sync for Rados {}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("librados/librbd")
    }
}

/// Why [`Rados::connect`] failed: the library is missing, or a step failed
/// with an errno.
#[derive(Debug)]
pub enum ConnectError {
    NotInstalled,
    Failed(ConnectStep, i32),
}

/// The step of [`Rados::connect`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStep {
    /// Creating the handle or applying an option.
    Setup,
    /// Reading the configuration file.
    ReadConf,
    /// Reaching the monitors and authenticating.
    Connect,
}

impl Rados {
    /// Creates a handle for client `client.<id>`, applies `settings`,
    /// reads `conf` (or librados's default search when `None`), applies
    /// `settings` again (over whatever the file says) and connects.
    /// Applied before reading too so that options such as
    /// `log_to_stderr = false` already hold while the file is parsed.
    pub fn connect(
        id: &str,
        conf: Option<&str>,
        settings: &[(&str, String)],
    ) -> Result<Rados, ConnectError> {
        let api = api().map_err(|_| ConnectError::NotInstalled)?;
        let fail = |step| move |errno| ConnectError::Failed(step, errno);
        let name = c_string(&format!("client.{id}")).map_err(fail(ConnectStep::Setup))?;
        let cluster = c_string("ceph").map_err(fail(ConnectStep::Setup))?;
        let mut handle: RadosT = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; the strings are
        // NUL-terminated and outlive the call (librados copies them).
        check(unsafe { (api.rados_create2)(&mut handle, cluster.as_ptr(), name.as_ptr(), 0) })
            .map_err(fail(ConnectStep::Setup))?;
        // From here on `rados` shuts the handle down on every error path.
        let rados = Rados { handle, api };
        rados.set(settings).map_err(fail(ConnectStep::Setup))?;
        let conf_c = conf
            .map(c_string)
            .transpose()
            .map_err(fail(ConnectStep::ReadConf))?;
        // SAFETY: `rados.handle` is a created, unconnected handle; a null
        // path asks for librados's default search, as documented.
        check(unsafe {
            (api.rados_conf_read_file)(
                rados.handle,
                conf_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        })
        .map_err(fail(ConnectStep::ReadConf))?;
        rados.set(settings).map_err(fail(ConnectStep::Setup))?;
        // SAFETY: valid, configured handle.
        check(unsafe { (api.rados_connect)(rados.handle) }).map_err(fail(ConnectStep::Connect))?;
        Ok(rados)
    }

    /// Sets configuration options (before connecting).
    fn set(&self, settings: &[(&str, String)]) -> Result<(), i32> {
        for (option, value) in settings {
            let option_c = c_string(option)?;
            let value_c = c_string(value)?;
            // SAFETY: valid handle, NUL-terminated strings copied by librados.
            check(unsafe {
                (self.api.rados_conf_set)(self.handle, option_c.as_ptr(), value_c.as_ptr())
            })?;
        }
        Ok(())
    }

    /// Adds `client` (an address as locks and watchers name it) to the
    /// cluster's blocklist for `expire_seconds` (0: the monitors'
    /// default); an existing entry gets the new expiry.
    pub fn blocklist_add(&self, client: &str, expire_seconds: u32) -> Result<(), i32> {
        let client_c = c_string(client)?;
        // SAFETY: connected handle; the address is NUL-terminated and only
        // read (the C prototype lacks `const`), and outlives the call.
        check(unsafe {
            (self.api.rados_blocklist_add)(
                self.handle,
                client_c.as_ptr().cast_mut(),
                expire_seconds,
            )
        })
    }

    /// This client's address, as Ceph names it in locks, watches and the
    /// blocklist (`127.0.0.1:0/3405213671`).
    pub fn address(&self) -> Result<String, i32> {
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: connected handle; `out` is a valid out-pointer that
        // librados sets to a `strdup`ed string on success.
        check(unsafe { (self.api.rados_getaddrs)(self.handle, &mut out) })?;
        if out.is_null() {
            return Err(libc_errno::EIO);
        }
        // SAFETY: `out` is a NUL-terminated string that rados_getaddrs
        // made with `strdup` (librados.cc; the API has no release function
        // for it), copied here and then released with the matching `free`.
        let address = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: see above; freed exactly once.
        unsafe { free(out.cast()) };
        Ok(address)
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        if self.handle.is_null() {
            return;
        }
        if in_aio_callback() {
            let rados = Rados {
                handle: std::mem::replace(&mut self.handle, std::ptr::null_mut()),
                api: self.api,
            };
            return drop_elsewhere(rados);
        }
        // SAFETY: the handle was created by rados_create2 and every I/O
        // context and image holds an `Arc<Rados>`, so none is left.
        unsafe { (self.api.rados_shutdown)(self.handle) }
    }
}

thread_local! {
    /// Whether this thread is running an aio completion callback
    /// (`aio_complete`), i.e. is one of librbd's own threads.
    static IN_AIO_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn in_aio_callback() -> bool {
    IN_AIO_CALLBACK.with(|flag| flag.get())
}

/// Sets [`IN_AIO_CALLBACK`] for its life.
struct InAioCallback;

impl InAioCallback {
    fn enter() -> InAioCallback {
        IN_AIO_CALLBACK.with(|flag| flag.set(true));
        InAioCallback
    }
}

impl Drop for InAioCallback {
    fn drop(&mut self) {
        IN_AIO_CALLBACK.with(|flag| flag.set(false));
    }
}

/// Drops `handle` on a thread of its own. Closing an image or shutting
/// down a cluster handle waits for librbd's callbacks to finish; run on
/// librbd's callback thread (a completion dropped the last owner) it
/// would wait for itself for ever. If no thread can be started the handle
/// is leaked: a lost close is better than a hung server.
fn drop_elsewhere<T: Send + 'static>(handle: T) {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(handle)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("rbd-close".into())
        .spawn(move || {
            let handle = theirs.lock().ok().and_then(|mut h| h.take());
            drop(handle)
        });
    if spawned.is_err()
        && let Ok(mut handle) = slot.lock()
    {
        std::mem::forget(handle.take());
    }
}

/// An I/O context on one pool (`rados_ioctx_t`); destroyed on drop.
#[derive(Debug)]
pub struct IoCtx {
    handle: IoCtxT,
    rados: Arc<Rados>,
}

// SAFETY: librados I/O contexts may be used from several threads at once
// for I/O; they are destroyed only in `Drop`.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl IoCtx {
    /// Opens `pool` (ENOENT: no such pool).
    pub fn open(rados: &Arc<Rados>, pool: &str) -> Result<IoCtx, i32> {
        let pool_c = c_string(pool)?;
        let mut handle: IoCtxT = std::ptr::null_mut();
        // SAFETY: connected cluster handle, NUL-terminated name, valid
        // out-pointer.
        check(unsafe {
            (rados.api.rados_ioctx_create)(rados.handle, pool_c.as_ptr(), &mut handle)
        })?;
        Ok(IoCtx {
            handle,
            rados: rados.clone(),
        })
    }

    /// Creates image `name` of `size` bytes with `features` and 4 MiB
    /// objects (EEXIST: it exists).
    pub fn create_image(&self, name: &str, size: u64, features: u64) -> Result<(), i32> {
        let api = self.rados.api;
        let name_c = c_string(name)?;
        let mut opts: ImageOptionsT = std::ptr::null_mut();
        // SAFETY: valid out-pointer; destroyed below on every path.
        unsafe { (api.rbd_image_options_create)(&mut opts) };
        // SAFETY: `opts` was just created; option ids from librbd.h.
        let result = check(unsafe {
            (api.rbd_image_options_set_uint64)(opts, RBD_IMAGE_OPTION_FEATURES, features)
        })
        // SAFETY: as above (order 22: 4 MiB objects, librbd's default).
        .and_then(|()| {
            check(unsafe { (api.rbd_image_options_set_uint64)(opts, RBD_IMAGE_OPTION_ORDER, 22) })
        })
        // SAFETY: valid I/O context, NUL-terminated name, valid options.
        .and_then(|()| {
            check(unsafe { (api.rbd_create4)(self.handle, name_c.as_ptr(), size, opts) })
        });
        // SAFETY: created above, destroyed once.
        unsafe { (api.rbd_image_options_destroy)(opts) };
        result
    }

    /// Removes image `name`.
    pub fn remove_image(&self, name: &str) -> Result<(), i32> {
        let name_c = c_string(name)?;
        // SAFETY: valid I/O context, NUL-terminated name.
        check(unsafe { (self.rados.api.rbd_remove)(self.handle, name_c.as_ptr()) })
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        if self.handle.is_null() {
            return;
        }
        if in_aio_callback() {
            let ioctx = IoCtx {
                handle: std::mem::replace(&mut self.handle, std::ptr::null_mut()),
                rados: self.rados.clone(),
            };
            return drop_elsewhere(ioctx);
        }
        // SAFETY: created by rados_ioctx_create; every image holds an
        // `Arc<IoCtx>`, so none is left.
        unsafe { (self.rados.api.rados_ioctx_destroy)(self.handle) }
    }
}

/// An open image (`rbd_image_t`); closed on drop.
#[derive(Debug)]
pub struct Image {
    handle: ImageT,
    ioctx: Arc<IoCtx>,
}

// SAFETY: librbd images are thread-safe: any number of threads may issue
// I/O and queries on one `rbd_image_t` at once. It is closed only in
// `Drop`, which has exclusive access (and no aio is outstanding then: each
// started operation holds nothing of the image, but the volume above waits
// for its requests before dropping the backend; librbd's close also waits
// for in-flight aio itself).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// What a started aio operation keeps until librbd calls back: the buffer
/// librbd reads into or writes from, and who gets the outcome.
struct AioContext {
    done: AioDone,
    api: &'static Api,
}

/// Who gets a finished aio operation's outcome: librbd's return value
/// (bytes, or `-errno`), with the buffer of a read or write.
pub enum AioDone {
    Io(IoBuf, Box<dyn FnOnce(IoBuf, isize) + Send + 'static>),
    Flush(Box<dyn FnOnce(isize) + Send + 'static>),
}

impl AioDone {
    fn finish(self, result: isize) {
        match self {
            AioDone::Io(buf, done) => done(buf, result),
            AioDone::Flush(done) => done(result),
        }
    }
}

/// librbd's completion callback, run on one of librbd's threads.
///
/// # Safety
/// Only librbd calls it, once per completion created by `Image::start`,
/// with that completion and the context pointer given there.
unsafe extern "C" fn aio_complete(completion: CompletionT, arg: *mut c_void) {
    // Declared first, so it is dropped last: everything the callback
    // drops (the `done` closure may own the last handle of the image) is
    // dropped while the flag is set, and closed off this thread.
    let _in_callback = InAioCallback::enter();
    // SAFETY: `arg` is the `Box<AioContext>` leaked by `Image::start`, and
    // librbd calls this exactly once per completion, so the box is
    // reclaimed exactly once.
    let context = unsafe { Box::from_raw(arg.cast::<AioContext>()) };
    // SAFETY: `completion` is the live completion this callback belongs
    // to; it is released once, after its return value has been read.
    let result = unsafe { (context.api.rbd_aio_get_return_value)(completion) };
    // SAFETY: as above.
    unsafe { (context.api.rbd_aio_release)(completion) };
    // A panic must not unwind into librbd's C++ (Rust aborts the whole
    // process there, every export with it). Caught here, the closure's
    // captures are dropped by the unwind, and the NBD layer's reply guard
    // among them answers its client with EIO.
    let done = context.done;
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done.finish(result))).is_err()
    {
        tracing::error!("a librbd completion panicked; its request was answered with EIO");
    }
}

/// What to start.
enum AioOp {
    Read(u64),
    Write(u64),
    Flush,
}

impl Image {
    /// Opens image `name`, read-write or with librbd's read-only open.
    pub fn open(ioctx: &Arc<IoCtx>, name: &str, read_only: bool) -> Result<Image, i32> {
        let api = ioctx.rados.api;
        let name_c = c_string(name)?;
        let mut handle: ImageT = std::ptr::null_mut();
        let open = if read_only {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: valid I/O context, NUL-terminated name, valid out-pointer,
        // null snapshot name (the head).
        check(unsafe { open(ioctx.handle, name_c.as_ptr(), &mut handle, std::ptr::null()) })?;
        Ok(Image {
            handle,
            ioctx: ioctx.clone(),
        })
    }

    /// Opens snapshot `snapshot` of image `name`, read-only (a snapshot
    /// cannot be written).
    pub fn open_snapshot(ioctx: &Arc<IoCtx>, name: &str, snapshot: &str) -> Result<Image, i32> {
        let api = ioctx.rados.api;
        let name_c = c_string(name)?;
        let snap_c = c_string(snapshot)?;
        let mut handle: ImageT = std::ptr::null_mut();
        // SAFETY: valid I/O context, NUL-terminated image and snapshot
        // names (copied by librbd during the call), valid out-pointer.
        check(unsafe {
            (api.rbd_open_read_only)(ioctx.handle, name_c.as_ptr(), &mut handle, snap_c.as_ptr())
        })?;
        Ok(Image {
            handle,
            ioctx: ioctx.clone(),
        })
    }

    fn api(&self) -> &'static Api {
        self.ioctx.rados.api
    }

    /// Creates snapshot `name` of the image: librbd blocks new writes and
    /// waits for those in flight first, so it holds every completed write.
    pub fn snap_create(&self, name: &str) -> Result<(), i32> {
        let name_c = c_string(name)?;
        // SAFETY: open image; NUL-terminated name, read during the call.
        check(unsafe { (self.api().rbd_snap_create)(self.handle, name_c.as_ptr()) })
    }

    /// Removes snapshot `name` of the image.
    pub fn snap_remove(&self, name: &str) -> Result<(), i32> {
        let name_c = c_string(name)?;
        // SAFETY: open image; NUL-terminated name, read during the call.
        check(unsafe { (self.api().rbd_snap_remove)(self.handle, name_c.as_ptr()) })
    }

    /// The names of the image's snapshots.
    pub fn snap_names(&self) -> Result<Vec<String>, i32> {
        let mut max: c_int = 8;
        loop {
            let slots = usize::try_from(max).unwrap_or(0).max(1);
            let mut list: Vec<SnapInfo> = (0..slots)
                .map(|_| SnapInfo {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                })
                .collect();
            // SAFETY: open image; `list` has `max` writable entries and
            // `max` says so; librbd writes at most that many (the last a
            // terminator) or answers -ERANGE with the number it needs.
            let r = unsafe { (self.api().rbd_snap_list)(self.handle, list.as_mut_ptr(), &mut max) };
            if r == -libc_errno::ERANGE {
                continue;
            }
            let count = usize::try_from(check_count(r)?).unwrap_or(0).min(slots);
            let names = list[..count]
                .iter()
                .filter(|info| !info.name.is_null())
                .map(|info| {
                    // SAFETY: librbd set a NUL-terminated name in each of
                    // the first `count` entries, valid until list_end.
                    unsafe { std::ffi::CStr::from_ptr(info.name) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: releases the names librbd allocated in this list,
            // once; the list ends at its terminator entry.
            unsafe { (self.api().rbd_snap_list_end)(list.as_mut_ptr()) };
            return Ok(names);
        }
    }

    /// The cluster handle this image was opened through.
    pub fn rados(&self) -> &Arc<Rados> {
        &self.ioctx.rados
    }

    /// The image's `RBD_FEATURE_*` bits.
    pub fn features(&self) -> Result<u64, i32> {
        let mut features = 0u64;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { (self.api().rbd_get_features)(self.handle, &mut features) })?;
        Ok(features)
    }

    pub fn size(&self) -> Result<u64, i32> {
        let mut size = 0u64;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { (self.api().rbd_get_size)(self.handle, &mut size) })?;
        Ok(size)
    }

    pub fn resize(&self, size: u64) -> Result<(), i32> {
        // SAFETY: open image.
        check(unsafe { (self.api().rbd_resize)(self.handle, size) })
    }

    /// Reads `buf.len()` bytes at `offset`; returns how many were read.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        // SAFETY: open image; `buf` is valid for `buf.len()` bytes of
        // writes for the whole (synchronous) call.
        let r = unsafe {
            (self.api().rbd_read)(self.handle, offset, buf.len(), buf.as_mut_ptr().cast())
        };
        usize::try_from(r).map_err(|_| errno_of(r))
    }

    /// Writes `data` at `offset`; returns how many bytes were written.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, i32> {
        // SAFETY: open image; `data` is valid for reads for the whole call.
        let r = unsafe {
            (self.api().rbd_write)(self.handle, offset, data.len(), data.as_ptr().cast())
        };
        usize::try_from(r).map_err(|_| errno_of(r))
    }

    /// Zeroes `[offset, offset+len)`: afterwards it reads as zeros
    /// (deallocated where whole objects are covered).
    pub fn write_zeroes(&self, offset: u64, len: usize) -> Result<usize, i32> {
        // SAFETY: open image; no flags.
        let r = unsafe { (self.api().rbd_write_zeroes)(self.handle, offset, len, 0, 0) };
        usize::try_from(r).map_err(|_| errno_of(r))
    }

    pub fn flush(&self) -> Result<(), i32> {
        // SAFETY: open image.
        check(unsafe { (self.api().rbd_flush)(self.handle) })
    }

    /// Starts reading `buf.bytes().len()` bytes at `offset` into `buf`;
    /// `done` runs on a librbd thread with the buffer and the result.
    pub fn start_read(
        &self,
        offset: u64,
        buf: IoBuf,
        done: Box<dyn FnOnce(IoBuf, isize) + Send + 'static>,
    ) {
        self.start(AioOp::Read(offset), AioDone::Io(buf, done))
    }

    /// Starts writing `buf` at `offset`; `done` as for reads.
    pub fn start_write(
        &self,
        offset: u64,
        buf: IoBuf,
        done: Box<dyn FnOnce(IoBuf, isize) + Send + 'static>,
    ) {
        self.start(AioOp::Write(offset), AioDone::Io(buf, done))
    }

    /// Starts a flush of every write completed before it.
    pub fn start_flush(&self, done: Box<dyn FnOnce(isize) + Send + 'static>) {
        self.start(AioOp::Flush, AioDone::Flush(done))
    }

    fn start(&self, op: AioOp, done: AioDone) {
        let api = self.api();
        let context = Box::into_raw(Box::new(AioContext { done, api }));
        // Give the context back when librbd did not take the operation:
        // then it never calls back.
        let fail = |context: *mut AioContext, r: c_int| {
            // SAFETY: `context` came from Box::into_raw above and librbd
            // holds no reference to it (creation or submission failed).
            let context = unsafe { Box::from_raw(context) };
            context.done.finish(-(r.unsigned_abs() as isize))
        };
        let mut completion: CompletionT = std::ptr::null_mut();
        // SAFETY: valid out-pointer; `context` stays valid until the
        // callback reclaims it.
        let r = unsafe {
            (api.rbd_aio_create_completion)(context.cast(), aio_complete, &mut completion)
        };
        if r < 0 {
            return fail(context, r);
        }
        // The buffer's bytes live on the heap, owned by the context, which
        // is neither moved nor touched until librbd calls back. This trusts
        // the `IoBuffer` implementation (safe code) to return the same,
        // stable slice each time: `bytes_mut` is called once here, and the
        // buffer is not touched again until librbd is done with the
        // pointer, so an implementation that moved its storage on a later
        // call could not invalidate it.
        // SAFETY: `context` is the live box created above; nothing else
        // accesses it until the callback.
        let (ptr, len) = match unsafe { &mut (*context).done } {
            AioDone::Io(buf, _) => {
                let bytes = buf.bytes_mut();
                (bytes.as_mut_ptr(), bytes.len())
            }
            AioDone::Flush(_) => (std::ptr::null_mut(), 0),
        };
        // SAFETY: open image; `ptr` is valid for `len` bytes until the
        // completion fires (the buffer lives in the context); the
        // completion is fresh and owned by this operation.
        let r = unsafe {
            match op {
                AioOp::Read(offset) => {
                    (api.rbd_aio_read)(self.handle, offset, len, ptr.cast(), completion)
                }
                AioOp::Write(offset) => {
                    (api.rbd_aio_write)(self.handle, offset, len, ptr.cast(), completion)
                }
                AioOp::Flush => (api.rbd_aio_flush)(self.handle, completion),
            }
        };
        if r < 0 {
            // librbd 16 reports errors through the completion and returns 0;
            // a negative return means the request was never queued, so the
            // callback will not run.
            // SAFETY: the completion was never handed to an operation.
            unsafe { (api.rbd_aio_release)(completion) };
            fail(context, r)
        }
    }

    /// Takes the exclusive lock in managed mode: from now on librbd does
    /// not hand it to another client that asks, until released or broken.
    pub fn lock_acquire(&self) -> Result<(), i32> {
        // SAFETY: open image.
        check(unsafe { (self.api().rbd_lock_acquire)(self.handle, RBD_LOCK_MODE_EXCLUSIVE) })
    }

    /// The exclusive lock's owners (client addresses); empty when unlocked.
    /// EINVAL on a read-only open (librbd has no exclusive-lock state
    /// there).
    pub fn lock_owners(&self) -> Result<Vec<String>, i32> {
        let api = self.api();
        let mut capacity = 4usize;
        loop {
            let mut owners: Vec<*mut c_char> = vec![std::ptr::null_mut(); capacity];
            let mut count = capacity;
            let mut mode: c_int = 0;
            // SAFETY: open image; `owners` has room for `count` pointers.
            let r = unsafe {
                (api.rbd_lock_get_owners)(self.handle, &mut mode, owners.as_mut_ptr(), &mut count)
            };
            match r {
                r if r == -libc_errno::ERANGE && count > capacity => {
                    capacity = count;
                    continue;
                }
                // No lock.
                -2 => return Ok(Vec::new()),
                r if r < 0 => return Err(-r),
                _ => {}
            }
            let count = count.min(capacity);
            let names = owners[..count]
                .iter()
                .filter(|p| !p.is_null())
                // SAFETY: librbd filled the first `count` entries with
                // NUL-terminated strings it allocated.
                .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
                .collect();
            // SAFETY: releases exactly the `count` strings librbd set.
            unsafe { (api.rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), count) };
            return Ok(names);
        }
    }

    /// Breaks `owner`'s exclusive lock (and, with librbd's default
    /// `rbd_blocklist_on_break_lock = true`, blocklists it).
    pub fn lock_break(&self, owner: &str) -> Result<(), i32> {
        let owner_c = c_string(owner)?;
        // SAFETY: open image, NUL-terminated owner.
        check(unsafe {
            (self.api().rbd_lock_break)(self.handle, RBD_LOCK_MODE_EXCLUSIVE, owner_c.as_ptr())
        })
    }

    /// The addresses of the clients watching the image's header (every
    /// client that has it open read-write and is alive).
    pub fn watchers(&self) -> Result<Vec<String>, i32> {
        let api = self.api();
        let mut capacity = 8usize;
        loop {
            let mut list: Vec<ImageWatcher> = (0..capacity)
                .map(|_| ImageWatcher {
                    addr: std::ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut count = capacity;
            // SAFETY: open image; `list` has room for `count` entries.
            let r = unsafe { (api.rbd_watchers_list)(self.handle, list.as_mut_ptr(), &mut count) };
            if r == -libc_errno::ERANGE && count > capacity {
                capacity = count;
                continue;
            }
            check(r)?;
            let count = count.min(capacity);
            let addresses = list[..count]
                .iter()
                .filter(|w| !w.addr.is_null())
                // SAFETY: librbd filled the first `count` entries; `addr`
                // is a NUL-terminated string it allocated.
                .map(|w| {
                    unsafe { CStr::from_ptr(w.addr) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: releases exactly the `count` entries librbd set.
            unsafe { (api.rbd_watchers_list_cleanup)(list.as_mut_ptr(), count) };
            return Ok(addresses);
        }
    }

    /// The allocated extents of `[offset, offset+len)` of the head image
    /// (with its parent's), as `(offset, len)`. `whole_object`: object
    /// granularity, answered from the object map where fast-diff is on.
    pub fn allocated(
        &self,
        offset: u64,
        len: u64,
        whole_object: bool,
    ) -> Result<Vec<(u64, u64)>, i32> {
        /// # Safety
        /// Only `rbd_diff_iterate2` calls it, during the call below, with
        /// the argument given there.
        unsafe extern "C" fn collect(
            offset: u64,
            len: usize,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            // SAFETY: `arg` is the `&mut Vec` passed below, alive for the
            // whole synchronous rbd_diff_iterate2 call; librbd calls back
            // only during that call and one extent at a time.
            let out = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
            if exists != 0 {
                out.push((offset, len as u64));
            }
            0
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        // SAFETY: open image; null snapshot = since the beginning; the
        // callback and its argument are valid for the call.
        check(unsafe {
            (self.api().rbd_diff_iterate2)(
                self.handle,
                std::ptr::null(),
                offset,
                len,
                1,
                u8::from(whole_object),
                collect,
                (&mut out as *mut Vec<(u64, u64)>).cast(),
            )
        })?;
        Ok(out)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.handle.is_null() {
            return;
        }
        if in_aio_callback() {
            let image = Image {
                handle: std::mem::replace(&mut self.handle, std::ptr::null_mut()),
                ioctx: self.ioctx.clone(),
            };
            return drop_elsewhere(image);
        }
        // SAFETY: opened by rbd_open*; closed once. librbd waits for the
        // image's outstanding aio and releases a held lock.
        unsafe { (self.api().rbd_close)(self.handle) };
    }
}

/// A negative `ssize_t` return as a positive errno.
fn errno_of(r: isize) -> i32 {
    i32::try_from(-r).unwrap_or(libc_errno::EIO)
}
