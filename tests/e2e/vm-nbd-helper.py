#!/usr/bin/env python3
"""vm-nbd-check.sh's host-side helper (Python standard library only).

  moddeps KMODDIR MOD...           print .ko paths (relative to KMODDIR) in load order
  mkcpio OUT STAGEDIR [--gzip]     write a newc initramfs of STAGEDIR (+ /dev nodes)
  mkcpio-files OUT DEST=SRC...     uncompressed newc archive of the given files
  relay CTL DATA UPSTREAM LOG      on-demand NBD connection relay for the VM
"""
import gzip
import os
import socket
import stat
import struct
import sys
import threading
import time


# ------------------------------------------------------------------ moddeps
def modinfo(path):
    data = open(path, 'rb').read()
    if data[:4] != b'\x7fELF' or data[4] != 2:
        raise SystemExit(f'{path}: not an ELF64 module')
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    secs = []
    for i in range(shnum):
        off = shoff + i * shentsize
        name, _typ, _flags, _addr, soff, size = struct.unpack_from('<IIQQQQ', data, off)
        secs.append((name, soff, size))
    strtab = secs[shstrndx]
    names = data[strtab[1]:strtab[1] + strtab[2]]
    info = {}
    for name, soff, size in secs:
        n = names[name:names.index(b'\0', name)].decode()
        if n == '.modinfo':
            for kv in data[soff:soff + size].split(b'\0'):
                if b'=' in kv:
                    k, v = kv.decode(errors='replace').split('=', 1)
                    info.setdefault(k, []).append(v)
    return info


def moddeps(kmoddir, wanted):
    index = {}
    for root, _dirs, files in os.walk(kmoddir):
        for f in files:
            if f.endswith('.ko'):
                index[f[:-3].replace('-', '_')] = os.path.relpath(os.path.join(root, f), kmoddir)
    order, seen = [], set()

    def visit(m, chain):
        m = m.replace('-', '_')
        if m in seen:
            return
        if m in chain:
            raise SystemExit(f'module dependency loop: {chain + [m]}')
        if m not in index:
            raise SystemExit(f'module {m} not found under {kmoddir} (built-in? then drop it)')
        deps = modinfo(os.path.join(kmoddir, index[m])).get('depends', [''])[0]
        for d in filter(None, deps.split(',')):
            visit(d, chain + [m])
        seen.add(m)
        order.append(index[m])

    for m in wanted:
        visit(m, [])
    print('\n'.join(order))


# ------------------------------------------------------------------ cpio (newc)
class Cpio:
    def __init__(self, fh):
        self.fh, self.ino = fh, 1000

    def entry(self, name, mode, data=b'', rdev=(0, 0), nlink=1):
        self.ino += 1
        nb = name.encode() + b'\0'
        hdr = '070701' + ''.join('%08X' % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        self.fh.write(hdr.encode() + nb)
        self.fh.write(b'\0' * ((4 - (110 + len(nb)) % 4) % 4))
        self.fh.write(data)
        self.fh.write(b'\0' * ((4 - len(data) % 4) % 4))

    def add_path(self, arcname, path):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            self.entry(arcname, stat.S_IFDIR | 0o755, nlink=2)
        elif stat.S_ISLNK(st.st_mode):
            self.entry(arcname, stat.S_IFLNK | 0o777, os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            self.entry(arcname, stat.S_IFREG | (st.st_mode & 0o777), open(path, 'rb').read())


def mkcpio(out, stagedir, compress):
    raw = open(out + '.tmp', 'wb')
    fh = gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=6, mtime=0) if compress else raw
    c = Cpio(fh)
    have_dev = False
    for root, dirs, files in os.walk(stagedir):
        dirs.sort()
        rel = os.path.relpath(root, stagedir)
        if rel != '.':
            c.add_path(rel, root)
            have_dev |= rel == 'dev'
        for f in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            c.add_path(os.path.normpath(os.path.join(rel, f)), os.path.join(root, f))
    if not have_dev:
        c.entry('dev', stat.S_IFDIR | 0o755, nlink=2)
    c.entry('dev/console', stat.S_IFCHR | 0o600, rdev=(5, 1))
    c.entry('dev/null', stat.S_IFCHR | 0o666, rdev=(1, 3))
    c.entry('TRAILER!!!', 0)
    if compress:
        fh.close()
    # pad to 512 so another (uncompressed) cpio can be appended: the kernel
    # only recognises a following archive that starts 4-byte aligned
    raw.write(b'\0' * ((512 - raw.tell() % 512) % 512))
    raw.close()
    os.replace(out + '.tmp', out)


def mkcpio_files(out, pairs):
    with open(out, 'wb') as fh:
        c = Cpio(fh)
        made = set()
        for pair in pairs:
            dest, src = pair.split('=', 1)
            dest = dest.strip('/')
            parts = dest.split('/')[:-1]
            for i in range(1, len(parts) + 1):
                d = '/'.join(parts[:i])
                if d not in made:
                    c.entry(d, stat.S_IFDIR | 0o755, nlink=2)
                    made.add(d)
            c.entry(dest, stat.S_IFREG | 0o644, open(src, 'rb').read())
        c.entry('TRAILER!!!', 0)
        fh.write(b'\0' * ((512 - fh.tell() % 512) % 512))


# ------------------------------------------------------------------ relay
def relay(ctl_path, data_path, upstream, logpath):
    """Connect the guest's data port to the NBD server only when the guest asks.

    Protocol on the control port (line based):
      guest: CONNECT <n>   -> host connects to UPSTREAM and to qemu's data
                              chardev, answers "OK <n>" or "ERR <n> <why>"
      guest: CLOSE <n>     -> host tears the current connection down
    Each NBD connection gets a fresh upstream socket, exactly like a real client.
    """
    log = open(logpath, 'a', buffering=1)

    def L(msg):
        log.write('%.3f %s\n' % (time.time(), msg))

    def connect_unix(path, deadline):
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    ctl = connect_unix(ctl_path, time.time() + 60)
    L(f'control connected {ctl_path}')
    current = {}

    def pump(src, dst, tag, n, stats):
        try:
            while True:
                buf = src.recv(1 << 16)
                if not buf:
                    break
                dst.sendall(buf)
                stats[tag] += len(buf)
        except OSError as e:
            L(f'conn {n} {tag}: {e}')
        finally:
            # any EOF tears the whole NBD connection down (NBD has no half-close)
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close_current():
        for s in current.pop('socks', ()):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in current.pop('threads', ()):
            t.join(5)

    f = ctl.makefile('rwb', buffering=0)
    while True:
        line = f.readline()
        if not line:
            L('control channel closed; exiting')
            break
        words = line.decode(errors='replace').split()
        L(f'ctl <- {words}')
        if len(words) == 2 and words[0] == 'CONNECT':
            n = words[1]
            close_current()
            try:
                up = connect_unix(upstream, time.time() + 5)
            except OSError as e:
                f.write(f'ERR {n} cannot connect to NBD socket {upstream}: {e}\n'.encode())
                continue
            try:
                dn = connect_unix(data_path, time.time() + 10)
            except OSError as e:
                up.close()
                f.write(f'ERR {n} cannot connect to qemu data chardev: {e}\n'.encode())
                continue
            stats = {'s2c': 0, 'c2s': 0}
            t1 = threading.Thread(target=pump, args=(up, dn, 's2c', n, stats), daemon=True)
            t2 = threading.Thread(target=pump, args=(dn, up, 'c2s', n, stats), daemon=True)
            t1.start(), t2.start()

            def reaper(n=n, t1=t1, t2=t2, up=up, dn=dn, stats=stats):
                t1.join(), t2.join()
                up.close(), dn.close()
                L(f'conn {n} closed: server->guest {stats["s2c"]} B, guest->server {stats["c2s"]} B')
            threading.Thread(target=reaper, daemon=True).start()
            current.update(socks=(up, dn), threads=(t1, t2))
            L(f'conn {n} established')
            f.write(f'OK {n}\n'.encode())
        elif len(words) == 2 and words[0] == 'CLOSE':
            close_current()
            f.write(f'OK {words[1]}\n'.encode())
        else:
            f.write(b'ERR ? bad request\n')


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ''
    if cmd == 'moddeps' and len(argv) >= 4:
        moddeps(argv[2], argv[3:])
    elif cmd == 'mkcpio' and len(argv) in (4, 5):
        mkcpio(argv[2], argv[3], len(argv) == 5 and argv[4] == '--gzip')
    elif cmd == 'mkcpio-files' and len(argv) >= 4:
        mkcpio_files(argv[2], argv[3:])
    elif cmd == 'relay' and len(argv) == 6:
        relay(*argv[2:6])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
