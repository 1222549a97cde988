//! Memory for secrets: pages that stay out of core dumps and out of swap,
//! and a process that cannot be dumped or read by its peers.
//!
//! [`LockedBox<T>`] is `Box<T>` for key material. Its value lives alone in
//! its own anonymous mapping (one page for every secret envol holds), which is
//!
//! - marked `MADV_DONTDUMP`, so a core dump (or `gcore`) leaves it out;
//! - `mlock`ed, so it is never written to swap — where the system allows: a
//!   process without `CAP_IPC_LOCK` may lock only `RLIMIT_MEMLOCK` bytes
//!   (`ulimit -l`). When locking fails the box still works and the process
//!   says so once, as a warning; refusing to serve would turn a small
//!   `ulimit -l` into an outage, and the page is still excluded from dumps;
//! - wiped (volatile writes over the whole mapping, after `T`'s own `Drop`)
//!   and unmapped when the box is dropped.
//!
//! A value belongs in a `LockedBox` only if its secret is *inline* (byte
//! arrays, AES key schedules): for a `Vec` or `String` only the pointer
//! would be locked. Building the value may pass it through the stack once
//! (the compiler usually constructs it in place); every later move moves
//! only the box's pointer.
//!
//! [`protect_process`] marks the whole process non-dumpable
//! (`PR_SET_DUMPABLE` 0): no core dump at all, and `/proc/PID/mem`,
//! `environ` and `ptrace` become root's only, even for processes of the same
//! user.
//!
//! This is the crate's only `unsafe` code (`mmap`, `mlock`, `madvise` and
//! `munmap` are `unsafe` in rustix because they hand out raw memory); each
//! call says why it is sound.

use std::alloc::Layout;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering, compiler_fence};

use rustix::mm::{Advice, MapFlags, ProtFlags};

/// The smallest page size of the platforms envol runs on; a `T` aligned to
/// more than this could not be placed at the start of a fresh mapping.
const MIN_PAGE_SIZE: usize = 4096;

/// Marks this process non-dumpable (`PR_SET_DUMPABLE` 0). Every envol command
/// calls it first: every one of them may hold a secret (a data key, the KMS
/// root key, master-key material, an access-key secret), and a command added
/// later cannot forget.
pub fn protect_process() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(std::io::Error::from)
}

/// How many `mlock` calls failed in this process (the warning itself is
/// printed once).
static MLOCK_FAILURES: AtomicUsize = AtomicUsize::new(0);
static MLOCK_WARNING: Once = Once::new();
static MADVISE_WARNING: Once = Once::new();

/// How many secret pages could not be locked in memory so far.
pub fn mlock_failures() -> usize {
    MLOCK_FAILURES.load(Ordering::Relaxed)
}

/// A `T` in its own locked, dump-excluded page(s), wiped on drop.
pub struct LockedBox<T> {
    ptr: NonNull<T>,
    /// Length of the mapping: `size_of::<T>()` rounded up to whole pages.
    len: usize,
    /// The box owns a `T` (drop check, auto traits).
    _owns: PhantomData<T>,
}

// SAFETY: a LockedBox owns its T exclusively, like Box<T>; sending or sharing
// it is exactly as safe as sending or sharing the T.
unsafe impl<T: Send> Send for LockedBox<T> {}
// SAFETY: as above; `&LockedBox<T>` only hands out `&T`.
unsafe impl<T: Sync> Sync for LockedBox<T> {}

impl<T> LockedBox<T> {
    /// Moves `value` into a fresh locked page. Aborts like `Box::new` if
    /// the system has no memory left for one page.
    pub fn new(value: T) -> Self {
        const {
            assert!(
                std::mem::align_of::<T>() <= MIN_PAGE_SIZE,
                "LockedBox places its value at the start of a page"
            )
        };
        let page = rustix::param::page_size();
        // At least one page even for a zero-sized T: the box always owns a
        // mapping, which keeps drop simple.
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses: it aliases nothing, and no other code knows of it.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        };
        let addr = match mapped {
            Ok(addr) => addr,
            // Out of address space or memory: what the global allocator does
            // for a Box (one line on stderr, abort), not a panic.
            Err(_) => std::alloc::handle_alloc_error(
                Layout::from_size_align(len, MIN_PAGE_SIZE).unwrap_or(Layout::new::<T>()),
            ),
        };
        // SAFETY: `addr..addr+len` is the mapping just made, owned by us.
        // Failure leaves the pages dumpable but usable; the kernel has
        // supported MADV_DONTDUMP since 3.4, so it does not fail in practice.
        if let Err(e) = unsafe { rustix::mm::madvise(addr, len, Advice::LinuxDontDump) } {
            MADVISE_WARNING.call_once(|| {
                tracing::warn!("cannot exclude key memory from core dumps (madvise: {e})");
            });
        }
        // SAFETY: the same mapping; locking changes residency, not contents.
        if let Err(e) = unsafe { rustix::mm::mlock(addr, len) } {
            MLOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
            MLOCK_WARNING.call_once(|| {
                tracing::warn!(
                    "cannot lock key memory (mlock: {e}); keys may be swapped to disk — \
                     raise the locked-memory limit (ulimit -l, LimitMEMLOCK=) to prevent it"
                );
            });
        }
        let ptr = addr.cast::<T>();
        // SAFETY: the mapping is at least size_of::<T>() bytes, page-aligned
        // (align_of::<T>() <= MIN_PAGE_SIZE <= page size), writable, and holds
        // no value yet, so writing without dropping is right.
        unsafe { ptr.write(value) };
        LockedBox {
            // SAFETY: mmap never returns null on success (MAP_FIXED not used).
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
            _owns: PhantomData,
        }
    }
}

impl<T: Clone> Clone for LockedBox<T> {
    fn clone(&self) -> Self {
        LockedBox::new((**self).clone())
    }
}

impl<T> Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` holds an initialised T for the box's whole life;
        // the borrow of `self` bounds the reference.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for LockedBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        let base = self.ptr.as_ptr();
        // SAFETY: the T is initialised and dropped exactly once, here.
        unsafe { std::ptr::drop_in_place(base) };
        // Wipe every byte of the mapping with volatile writes, so that the
        // compiler cannot drop them as dead stores before the unmap. The
        // mapping is a whole number of pages: a multiple of 8 bytes, aligned.
        let words = base.cast::<u64>();
        for i in 0..self.len / 8 {
            // SAFETY: in bounds of our mapping (i * 8 < len), aligned; the
            // T was dropped above, so these are plain bytes now.
            unsafe { words.add(i).write_volatile(0) };
        }
        compiler_fence(Ordering::SeqCst);
        // SAFETY: our own mapping, unmapped once; nothing points into it any
        // more (the box is being dropped). munmap also unlocks it.
        let _ = unsafe { rustix::mm::munmap(base.cast::<c_void>(), self.len) };
    }
}

impl<T> std::fmt::Debug for LockedBox<T> {
    /// Never the contents: they are secret by construction.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedBox(<redacted>)")
    }
}

#[cfg(test)]
#[path = "secret_memory_tests.rs"]
mod tests;
