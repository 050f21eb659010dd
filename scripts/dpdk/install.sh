#!/usr/bin/env bash
# Installs DPDK 22.11 (Debian bookworm) for the vhost-user peer and reserves 2 MiB huge pages.
#
#   scripts/dpdk/install.sh            # install if missing, reserve DPDK_HUGEPAGES (default 512)
#   DPDK_HUGEPAGES=1024 scripts/dpdk/install.sh
#
# Idempotent: does nothing that is already done. Exits non-zero with a message saying what is
# wrong when it cannot get DPDK or the huge pages (needs root and Debian's package archive).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
pages="${DPDK_HUGEPAGES:-512}"
packages=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)

die() { echo "scripts/dpdk/install.sh: $*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: run this script as root"
    sudo_cmd=(sudo)
fi

# dpdk-testpmd, the vhost-user peer, comes with dpdk-dev (in Debian 12's DPDK 22.11.11), which
# also brings DPDK's libraries and bus drivers. testpmd loads the drivers as plugins (libraries, not
# commands): the net_vhost and virtio_user vdevs and the ring mempool are named here.
# shellcheck source=../lib/need.sh
. "$root/scripts/lib/need.sh"
need_packages "${packages[@]}"
need_commands dpdk-testpmd:dpdk-dev mountpoint:util-linux mount:mount awk:mawk

# Huge pages: the VM harness owns scripts/hugepages.sh; use it when it is there.
if [ -x "$root/scripts/hugepages.sh" ]; then
    "$root/scripts/hugepages.sh" "$pages" || die "scripts/hugepages.sh failed"
else
    nr=/proc/sys/vm/nr_hugepages
    have="$(cat "$nr")"
    if [ "$have" -lt "$pages" ]; then
        echo "$pages" | "${sudo_cmd[@]}" tee "$nr" >/dev/null \
            || die "cannot write $nr (not root, or in a container without /proc/sys write access)"
    fi
    if ! mountpoint -q /dev/hugepages; then
        "${sudo_cmd[@]}" mkdir -p /dev/hugepages
        "${sudo_cmd[@]}" mount -t hugetlbfs nodev /dev/hugepages \
            || die "cannot mount hugetlbfs at /dev/hugepages"
    fi
fi
total="$(awk '/^HugePages_Total/ {print $2}' /proc/meminfo)"
free="$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)"
[ "$total" -gt 0 ] || die "no 2 MiB huge pages could be reserved (memory too fragmented? try again, or reboot)"
[ "$free" -ge 64 ] || echo "warning: only $free of $total huge pages are free; other DPDK processes may hold them" >&2
echo "dpdk-testpmd: $(command -v dpdk-testpmd); huge pages: $free free of $total (2 MiB) at /dev/hugepages"
