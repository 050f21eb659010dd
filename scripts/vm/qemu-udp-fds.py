#!/usr/bin/env python3
"""qemu-udp-fds.py: start QEMU with its UDP netdev sockets made here, with big buffers.

Usage: qemu-udp-fds.py BYTES QEMU [ARGS...]

Every `-netdev dgram,id=ID,local.type=inet,local.host=H,local.port=Q,remote.type=inet,
remote.host=RH,remote.port=P` argument is replaced by `-netdev dgram,id=ID,local.type=fd,
local.str=FD`, where FD is a UDP socket bound to H:Q and connected to RH:P whose receive and send
buffers hold BYTES (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root, else SO_RCVBUF/SO_SNDBUF, which
net.core.rmem_max/wmem_max cap). Then QEMU is exec'ed with the rest unchanged.

Why: QEMU leaves its sockets at the system default (net.core.rmem_default, about 208 KiB, some
150 frames of the VM harness's traffic). When the host stalls QEMU's I/O thread for a few tens of
milliseconds (a loaded, shared 2-core machine), frames sent meanwhile overflow that buffer and are
lost before they reach the guest: loss that says nothing about the driver under test. A few MiB
ride out such stalls; the kernel counts any remaining overflow (RcvbufErrors in /proc/net/snmp).
"""

import os
import socket
import sys

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def fail(msg):
    sys.stderr.write("qemu-udp-fds: error: %s\n" % msg)
    sys.exit(2)


def parse(netdev):
    """The key=value fields of a -netdev value (after its type), in order."""
    kind, _, rest = netdev.partition(",")
    fields = []
    for item in rest.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            return kind, None
        fields.append((key, value))
    return kind, fields


def make_socket(size, local, remote):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)
    try:
        s.bind(local)
    except OSError as e:
        fail("cannot bind UDP %s:%d: %s (is another VM using these ports? pick others)" % (local + (e,)))
    s.connect(remote)
    s.set_inheritable(True)
    return s


def main():
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        fail("usage: qemu-udp-fds.py BYTES QEMU [ARGS...]")
    size = int(sys.argv[1])
    args = sys.argv[2:]
    keep = []
    out = [args[0]]
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-netdev" and i + 1 < len(args):
            kind, fields = parse(args[i + 1])
            d = dict(fields or [])
            if kind == "dgram" and d.get("local.type") == "inet" and d.get("remote.type") == "inet":
                local = (d["local.host"], int(d["local.port"]))
                remote = (d["remote.host"], int(d["remote.port"]))
                s = make_socket(size, local, remote)
                keep.append(s)
                got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                sys.stderr.write(
                    "qemu-udp-fds: netdev %s: %s:%d -> %s:%d on fd %d, receive buffer %d KiB\n"
                    % ((d["id"],) + local + remote + (s.fileno(), got // 1024))
                )
                out += ["-netdev", "dgram,id=%s,local.type=fd,local.str=%d" % (d["id"], s.fileno())]
                i += 2
                continue
        out.append(arg)
        i += 1
    sys.stderr.flush()
    os.execvp(out[0], out)


if __name__ == "__main__":
    main()
