# Run by `nbdsh -c "exec(open(...).read())"`; URI and SRC (the file the
# export was filled from) come from the environment. Reads the export in
# order one request at a time — what makes the server read ahead — with
# structured replies and without, and checks that nothing read ahead
# outlives a write: one on the same connection, one on another, each
# answered before the READ is sent. Any failed assertion exits nbdsh
# non-zero.
import os
import time
import nbd

uri = os.environ["URI"]
src = bytearray(open(os.environ["SRC"], "rb").read())
KiB = 1024
R = 256 * KiB


def connect(structured=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.set_uri_allow_local_file(True)  # tls-certificates= in the URI
    h.connect_uri(uri)
    assert h.get_structured_replies_negotiated() == structured
    return h


def check(h, offset, length=R):
    got = h.pread(length, offset)
    assert got == src[offset:offset + length], (offset, length)


for structured in (True, False):
    h = connect(structured)
    for i in range(24):
        check(h, i * R)
    for i in range(4):  # 1 MiB reads, the largest read ahead
        check(h, i * 1024 * KiB, 1024 * KiB)
    h.shutdown()

# A write on the same connection, to ranges already read ahead.
h = connect()
check(h, 0)
check(h, R)
new = bytes((i * 7 + 3) % 251 for i in range(R + 4096))
h.pwrite(new, 2 * R + 4096)
src[2 * R + 4096:3 * R + 8192] = new
check(h, 2 * R)
check(h, 3 * R)

# A write on another connection, answered before the READ is sent.
other = connect()
check(h, 8 * R)
check(h, 9 * R)
other.pwrite(b"\x5a" * 4096, 10 * R + 8192)
src[10 * R + 8192:10 * R + 12288] = b"\x5a" * 4096
check(h, 10 * R)
other.zero(8192, 11 * R)
src[11 * R:11 * R + 8192] = bytes(8192)
check(h, 11 * R)
other.shutdown()


# READs pipelined behind a FLUSH, whose reply a worker hands to the
# writer thread: every reply must come.
def wait(h, cookie, deadline):
    while not h.aio_command_completed(cookie):
        left = deadline - time.monotonic()
        assert left > 0, "a reply never came"
        h.poll(int(left * 1000) + 1)


buf = nbd.Buffer(R)
for i in range(300):
    offset = (i * R) % (len(src) - R)
    flushed = h.aio_flush()
    read = h.aio_pread(buf, offset)
    deadline = time.monotonic() + 10
    wait(h, flushed, deadline)
    wait(h, read, deadline)
    assert buf.to_bytearray() == src[offset:offset + R], offset
h.shutdown()
print("read-ahead checks: ok")
