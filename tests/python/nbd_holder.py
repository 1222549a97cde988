"""Holds one NBD connection (libnbd) open and does what stdin says, one
command per line, answering each with one line on stdout:

  write OFFSET LENGTH BYTE   pwrite LENGTH bytes of BYTE          -> ok
  read OFFSET LENGTH BYTE    pread and check every byte is BYTE   -> ok
  flush                                                           -> ok
  size                       the size this connection negotiated  -> size N
  quit                       NBD_CMD_DISC, exit

A failed request answers "error ERRNO MESSAGE" (ERRNO by name, e.g.
ESHUTDOWN) and the holder goes on.
Prints "connected" once the handshake is done.

Usage: nbd_holder.py URI
"""

import sys

import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        if words[0] == "write":
            off, length, byte = int(words[1]), int(words[2]), int(words[3], 0)
            h.pwrite(bytes([byte]) * length, off)
        elif words[0] == "read":
            off, length, byte = int(words[1]), int(words[2]), int(words[3], 0)
            data = h.pread(length, off)
            if data != bytes([byte]) * length:
                print("mismatch", flush=True)
                continue
        elif words[0] == "flush":
            h.flush()
        elif words[0] == "size":
            print(f"size {h.get_size()}", flush=True)
            continue
        elif words[0] == "quit":
            h.shutdown()
            print("bye", flush=True)
            break
        print("ok", flush=True)
    except nbd.Error as e:
        print(f"error {e.errno} {e.string}", flush=True)
