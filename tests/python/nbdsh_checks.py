# Run by `nbdsh --base-allocation -u URI -c "exec(open(...).read())"` with
# `h` connected; MODE (read-write | read-only) comes from the environment.
# Checks structured replies, block status, fast zero, CACHE and EPERM with
# libnbd's own API. Any failed assertion exits nbdsh non-zero.
import errno
import os
import nbd

mode = os.environ["NBDSH_MODE"]
size = h.get_size()
assert h.get_structured_replies_negotiated(), "structured replies negotiated"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation offered"

def extents(length, offset):
    seen = []
    def cb(metacontext, off, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            seen.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(length, offset, cb)
    return seen

MiB = 1 << 20
if mode == "read-write":
    # A fresh volume: one hole that reads as zeros.
    first = extents(4 * MiB, 0)
    assert first and all(flags & nbd.STATE_HOLE and flags & nbd.STATE_ZERO
                         for _, flags in first), first
    h.pwrite(b"\x5a" * MiB, 2 * MiB)
    ext = extents(4 * MiB, 0)
    offset, found_data = 0, False
    for length, flags in ext:
        if offset < 3 * MiB and offset + length > 2 * MiB:
            assert flags & nbd.STATE_HOLE == 0, ("written range reported as hole", ext)
            found_data = True
        offset += length
    assert found_data, ext
    # Fast zero: allowed where zeroing can punch; refused with ENOTSUP, not
    # silently slow, where it cannot (NO_HOLE).
    assert h.can_fast_zero()
    h.zero(MiB, 2 * MiB, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(MiB, 2 * MiB) == bytes(MiB)
    try:
        h.zero(MiB, 2 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
        raise AssertionError("FAST_ZERO with NO_HOLE must be refused")
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP, e
    # CACHE is advertised and answered.
    assert h.can_cache()
    h.cache(MiB, 0)
    # Structured replies carry a read of the whole first MiB correctly.
    assert h.pread(4096, size - 4096) == bytes(4096)
    print("nbdsh read-write checks: ok")
else:
    assert h.is_read_only()
    # libnbd itself refuses writes to an export that says it is read-only;
    # the server must say so and must not offer trim or zero.
    assert not h.can_trim() and not h.can_zero()
    try:
        h.pwrite(b"x" * 512, 0)
        raise AssertionError("a write to a read-only export must fail")
    except nbd.Error as e:
        assert e.errnum in (errno.EPERM, errno.EINVAL), e
    assert h.pread(512, 0) == bytes(512)
    print("nbdsh read-only checks: ok")
