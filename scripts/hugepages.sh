#!/bin/bash
# hugepages.sh: make sure N 2 MiB hugepages are reserved and hugetlbfs is mounted at /dev/hugepages.
#
# Never shrinks an existing reservation (other programs may be using it). Checks MemAvailable
# before asking the kernel, so an impossible request fails at once instead of squeezing the
# machine's memory, and gives back what it got when the kernel cannot find enough contiguous
# memory. Exit 0 when N pages are reserved and /dev/hugepages is mounted, 1 otherwise.
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 [N]
  Reserve at least N (default 512) 2 MiB hugepages and mount hugetlbfs at /dev/hugepages.
USAGE
}

die() { echo "hugepages: error: $*" >&2; exit 1; }

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
esac
[ $# -le 1 ] || { usage >&2; exit 2; }
N=${1:-512}
[[ "$N" =~ ^[0-9]+$ ]] || die "'$N' is not a number of pages"

# shellcheck source=lib/need.sh
. "$(dirname "$0")/lib/need.sh"
need_commands awk:mawk mount:mount

SYS=/sys/kernel/mm/hugepages/hugepages-2048kB
[ -d "$SYS" ] || die "this kernel has no 2 MiB hugepages ($SYS is missing)"
MNT=/dev/hugepages

have=$(cat "$SYS/nr_hugepages")
mounted() { awk -v m="$MNT" '$2 == m && $3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts; }

if [ "$have" -ge "$N" ] && mounted; then
    echo "hugepages: $have x 2 MiB reserved ($(cat "$SYS/free_hugepages") free), hugetlbfs on $MNT"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "reserving hugepages needs root ($have of $N reserved now): run it with sudo"

if [ "$have" -lt "$N" ]; then
    need_kib=$(( (N - have) * 2048 ))
    avail_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    # Leave at least 256 MiB to everything else.
    if [ "$need_kib" -gt $((avail_kib - 262144)) ]; then
        die "$N hugepages need $((need_kib / 1024)) MiB more, only $((avail_kib / 1024)) MiB available" \
            "(keeping 256 MiB free): ask for fewer pages or free some memory"
    fi
    echo "$N" >"$SYS/nr_hugepages"
    got=$(cat "$SYS/nr_hugepages")
    if [ "$got" -lt "$N" ]; then
        echo "$have" >"$SYS/nr_hugepages"
        die "the kernel found only $got of $N hugepages (memory too fragmented); gave them back." \
            "Try fewer pages, or reserve them early (kernel parameter hugepages=$N)"
    fi
    have=$got
fi

if ! mounted; then
    mkdir -p "$MNT"
    mount -t hugetlbfs -o pagesize=2M nodev "$MNT" || die "cannot mount hugetlbfs on $MNT"
fi
echo "hugepages: $have x 2 MiB reserved ($(cat "$SYS/free_hugepages") free), hugetlbfs on $MNT"
