#!/bin/sh
# vm-wait-host: in the guest, wait for one line from the host on the control serial port
# (/dev/ttyS1, wired by run-vm.sh --ctl BASE; the host writes to BASE.in) and print it.
# Installed by mkinitramfs.sh as /bin/vm-wait-host. Exit 1 on timeout or without a control port.
set -eu
if [ $# -gt 1 ]; then
    echo "usage: vm-wait-host [TIMEOUT_SECS]" >&2
    exit 2
fi
tty=/dev/ttyS1
if [ ! -c "$tty" ] || ! stty -F "$tty" raw -echo 2>/dev/null; then
    echo "vm-wait-host: no control port $tty (start the VM with run-vm.sh --ctl BASE)" >&2
    exit 1
fi
line=""
if [ $# -eq 1 ]; then
    # busybox ash has read -t (this runs only in the guest).
    # shellcheck disable=SC3045
    read -r -t "$1" line <"$tty" || { echo "vm-wait-host: nothing from the host in $1 s" >&2; exit 1; }
else
    read -r line <"$tty"
fi
printf '%s\n' "$line" | tr -d '\r'
