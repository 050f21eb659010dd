#!/usr/bin/env python3
"""monitor.py SOCK COMMAND...: send each COMMAND to QEMU's human monitor on the unix socket SOCK
(run-vm.sh --monitor SOCK), print what QEMU answers, and exit 1 if an answer looks like an error.

    scripts/vm/monitor.py /tmp/mon.sock 'set_link n1 off'
"""
import socket
import sys
import time


def read_until_prompt(conn, deadline):
    data = b""
    while not data.endswith(b"(qemu) ") and time.monotonic() < deadline:
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, commands = sys.argv[1], sys.argv[2:]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.connect(path)
            break
        except OSError as err:
            if time.monotonic() >= deadline:
                print(f"monitor: cannot connect to {path}: {err}", file=sys.stderr)
                return 1
            time.sleep(0.1)
    read_until_prompt(conn, time.monotonic() + 10)
    failed = False
    for command in commands:
        conn.sendall(command.encode() + b"\n")
        answer = read_until_prompt(conn, time.monotonic() + 10)
        # The monitor echoes the command; anything else before the prompt is its answer.
        lines = [l for l in answer.replace("\r", "").split("\n") if l and not l.startswith("(qemu)") and command not in l]
        print(f"monitor: {command}" + (f": {' '.join(lines)}" if lines else ""))
        if any(("rror" in l) or ("not found" in l) or ("nvalid" in l) for l in lines):
            failed = True
    conn.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
