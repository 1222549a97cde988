#!/usr/bin/env python3
"""A small fixed-newstyle NBD server on a Unix socket that can misbehave on
purpose: it proves the end-to-end harnesses beside it fail when a server is
wrong (tests/e2e_harness.rs, selftest.sh). Simple replies only, no
structured replies, no multi-conn; an image file holds the data.

  faulty-nbd-server.py SOCKET IMAGE SIZE_MB [--export NAME] [--no-go]
                       [--corrupt-from-conn N] [--die-after-writes N]
                       [--hang-after-writes N]

--no-go              answer NBD_OPT_GO / NBD_OPT_INFO with NBD_REP_ERR_UNSUP
                     (old-server behaviour) so clients must fall back to
                     NBD_OPT_EXPORT_NAME.
--corrupt-from-conn  flip one bit in every READ reply on connection N and later
                     (harness must then FAIL).
--die-after-writes   exit abruptly after N WRITEs (counted over all connections).
--hang-after-writes  stop answering after N WRITEs.
Every option / connection is logged to stderr.
"""
import argparse
import os
import socket
import struct
import sys
import threading

NBDMAGIC = b'NBDMAGIC'
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3e889045565a9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY = 0x67446698
OPT_NAMES = {1: 'EXPORT_NAME', 2: 'ABORT', 3: 'LIST', 5: 'STARTTLS', 6: 'INFO', 7: 'GO',
             8: 'STRUCTURED_REPLY', 9: 'LIST_META_CONTEXT', 10: 'SET_META_CONTEXT'}
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR_UNSUP, ERR_UNKNOWN = 0x80000001, 0x80000006
TFLAGS = 0x1 | 0x4 | 0x8 | 0x20      # HAS_FLAGS SEND_FLUSH SEND_FUA SEND_TRIM
lock = threading.Lock()
writes = [0]
conn_no = 0


def log(*a):
    print('[faulty-nbd-server]', *a, file=sys.stderr, flush=True)


def recvall(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def serve(s, cid, args, fd, size):
    s.sendall(NBDMAGIC + struct.pack('>QH', IHAVEOPT, 3))       # FIXED_NEWSTYLE|NO_ZEROES
    cflags, = struct.unpack('>I', recvall(s, 4))
    log(f'conn {cid}: client flags {cflags:#x}')

    def rep(opt, typ, data=b''):
        s.sendall(struct.pack('>QIII', REPLY_MAGIC, opt, typ, len(data)) + data)

    while True:
        magic, opt, ln = struct.unpack('>QII', recvall(s, 16))
        data = recvall(s, ln) if ln else b''
        name = OPT_NAMES.get(opt, str(opt))
        if magic != IHAVEOPT:
            log(f'conn {cid}: bad option magic'); return
        if opt == 1:                                               # EXPORT_NAME
            log(f'conn {cid}: NBD_OPT_EXPORT_NAME {data!r}')
            if data.decode() != args.export:
                log(f'conn {cid}: unknown export, closing'); return
            s.sendall(struct.pack('>QH', size, TFLAGS) + (b'' if cflags & 2 else b'\0' * 124))
            break
        if opt in (6, 7):                                          # INFO / GO
            if args.no_go:
                log(f'conn {cid}: NBD_OPT_{name} -> ERR_UNSUP (--no-go)')
                rep(opt, ERR_UNSUP); continue
            nl, = struct.unpack('>I', data[:4]); ename = data[4:4 + nl].decode()
            nreq, = struct.unpack('>H', data[4 + nl:6 + nl])
            reqs = struct.unpack('>%dH' % nreq, data[6 + nl:6 + nl + 2 * nreq])
            log(f'conn {cid}: NBD_OPT_{name} export={ename!r} info-requests={list(reqs)}')
            if ename != args.export:
                rep(opt, ERR_UNKNOWN, b'no such export'); continue
            rep(opt, REP_INFO, struct.pack('>HQH', 0, size, TFLAGS))
            if 3 in reqs:
                rep(opt, REP_INFO, struct.pack('>HIII', 3, 1, 4096, 32 << 20))
            rep(opt, REP_ACK)
            if opt == 7:
                break
            continue
        if opt == 2:
            log(f'conn {cid}: NBD_OPT_ABORT'); rep(opt, REP_ACK); return
        if opt == 3:
            log(f'conn {cid}: NBD_OPT_LIST')
            e = args.export.encode(); rep(opt, REP_SERVER, struct.pack('>I', len(e)) + e); rep(opt, REP_ACK)
            continue
        log(f'conn {cid}: NBD_OPT_{name} -> ERR_UNSUP')
        rep(opt, ERR_UNSUP)

    log(f'conn {cid}: transmission phase')
    corrupt = args.corrupt_from_conn and cid >= args.corrupt_from_conn
    while True:
        magic, _fl, typ, handle, off, ln = struct.unpack('>IHHQQI', recvall(s, 28))
        if magic != REQ_MAGIC:
            log(f'conn {cid}: bad request magic'); return
        err, payload = 0, b''
        if typ == 0:                                               # READ
            with lock:
                payload = os.pread(fd, ln, off).ljust(ln, b'\0')
            if corrupt and payload:
                payload = bytes([payload[0] ^ 1]) + payload[1:]
        elif typ == 1:                                             # WRITE
            buf = recvall(s, ln)
            with lock:
                os.pwrite(fd, buf, off)
                writes[0] += 1
                if args.die_after_writes and writes[0] >= args.die_after_writes:
                    log(f'conn {cid}: --die-after-writes reached, exiting abruptly')
                    os._exit(3)
                if args.hang_after_writes and writes[0] >= args.hang_after_writes:
                    log(f'conn {cid}: --hang-after-writes reached, going silent')
                    import time
                    time.sleep(1e9)
        elif typ == 2:                                             # DISC
            log(f'conn {cid}: NBD_CMD_DISC, closing'); return
        elif typ == 3:                                             # FLUSH
            os.fsync(fd)
        elif typ == 4:                                             # TRIM
            pass
        else:
            err = 22
        s.sendall(struct.pack('>IIQ', SIMPLE_REPLY, err, handle) + payload)


def main():
    global conn_no
    ap = argparse.ArgumentParser()
    ap.add_argument('socket'); ap.add_argument('image'); ap.add_argument('size_mb', type=int)
    ap.add_argument('--export', default='')
    ap.add_argument('--no-go', action='store_true')
    ap.add_argument('--corrupt-from-conn', type=int, default=0)
    ap.add_argument('--die-after-writes', type=int, default=0)
    ap.add_argument('--hang-after-writes', type=int, default=0)
    args = ap.parse_args()
    size = args.size_mb << 20
    fd = os.open(args.image, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(args.socket); ls.listen(8)
    log(f'listening on {args.socket}, export {args.export!r}, {args.size_mb} MiB, no_go={args.no_go}')
    while True:
        c, _ = ls.accept()
        conn_no += 1

        def run(c=c, cid=conn_no):
            try:
                serve(c, cid, args, fd, size)
            except (EOFError, ConnectionError) as e:
                log(f'conn {cid}: closed by peer ({type(e).__name__})')
            finally:
                c.close()
        threading.Thread(target=run, daemon=True).start()


if __name__ == '__main__':
    main()
