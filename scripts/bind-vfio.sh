#!/bin/sh
# bind-vfio.sh: give PCI functions to vfio-pci, refusing any that carries this machine's network.
#
# POSIX sh on purpose: the same file runs on a host (dash/bash) and inside the VM guest (busybox
# ash), where /init uses it to bind the virtio-net functions.
#
# Every BDF is checked first, and nothing is written to sysfs (and no module is loaded) unless all
# of them pass:
#   - the device exists under /sys/bus/pci/devices;
#   - no network interface that belongs to it (at any depth below the PCI function, e.g.
#     0000:00:03.0/virtio2/net/eth0) is up, has an IPv4/IPv6 address, or carries a default route:
#     binding such a device to vfio-pci would cut the machine off its network;
#   - it is in an IOMMU group (vfio-pci cannot bind without one: boot with intel_iommu=on), unless
#     VFIO's no-IOMMU mode is on (vfio loaded with enable_unsafe_noiommu_mode=1): then vfio-pci
#     makes a no-IOMMU group as it binds, /dev/vfio/noiommu-<n>.
# Then vfio-pci is loaded if needed and each device is bound with driver_override + drivers_probe.
# One line per device is printed on stdout:
#   VFIO-BOUND <bdf> group=<n> /dev/vfio/<n>
# With --uio the devices go to uio_pci_generic instead, for a machine without an IOMMU (a VM
# without a vIOMMU): no IOMMU group is needed, and the driver then lets the device reach all
# memory (virtio-pmd's physical-address mode, l2fwd --no-iommu). Printed: UIO-BOUND <bdf>
set -eu
# pipefail is in bash, busybox ash and recent dash; older shells simply go without it.
# shellcheck disable=SC3040
(set -o pipefail) 2>/dev/null && set -o pipefail

usage() {
    cat <<USAGE
usage: $0 [--check] [--uio] BDF...
  Bind each PCI function (e.g. 0000:00:04.0 or 00:04.0) to vfio-pci and print its IOMMU group.
  Refuses (exit 1, before touching sysfs) any device that does not exist, has no IOMMU group, or
  has a network interface that is up, has an address or carries a default route.
  --check   only run the checks, bind nothing
  --uio     bind to uio_pci_generic instead (no IOMMU needed; the device can reach all memory)
USAGE
}

SYSFS=/sys
err() { echo "bind-vfio: error: $*" >&2; }

CHECK_ONLY=0
DRIVER=vfio-pci
BDFS=""
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --check) CHECK_ONLY=1 ;;
        --uio) DRIVER=uio_pci_generic ;;
        -*) err "unknown option '$arg'"; usage >&2; exit 2 ;;
        *) BDFS="$BDFS $arg" ;;
    esac
done
if [ -z "$BDFS" ]; then
    usage >&2
    exit 2
fi

# On a host, install what the checks and the binding run (ip: the interfaces' addresses; modprobe:
# vfio-pci). In the VM guest (/bin/bind-vfio.sh, no scripts/lib) busybox has both.
need_sh="$(dirname "$0")/lib/need.sh"
if [ -f "$need_sh" ]; then
    # shellcheck source=lib/need.sh
    . "$need_sh"
    need_commands ip:iproute2 modprobe:kmod awk:mawk
fi

# Normalise a BDF to the 0000:00:00.0 form (lowercase, with a domain); empty if malformed.
normalise() {
    b=$(echo "$1" | tr 'A-F' 'a-f')
    case "$b" in
        [0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) b="0000:$b" ;;
    esac
    case "$b" in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) echo "$b" ;;
        *) echo "" ;;
    esac
}

# Print the names of the network interfaces that belong to PCI device directory $1.
net_ifaces_of() {
    dev_real=$(readlink -f "$1")
    for n in "$SYSFS"/class/net/*; do
        [ -e "$n" ] || continue
        n_real=$(readlink -f "$n")
        case "$n_real" in
            "$dev_real"/*) basename "$n" ;;
        esac
    done
}

# Print why interface $1 carries traffic (empty if it does not).
iface_in_use() {
    i=$1
    why=""
    flags=$(cat "$SYSFS/class/net/$i/flags" 2>/dev/null || echo 0x0)
    if [ $((flags & 1)) -ne 0 ]; then why="${why:+$why, }is up (flags $flags)"; fi
    oper=$(cat "$SYSFS/class/net/$i/operstate" 2>/dev/null || echo unknown)
    case "$oper" in up|dormant) why="${why:+$why, }has operstate $oper" ;; esac
    if command -v ip >/dev/null 2>&1; then
        addrs=$(ip -o addr show dev "$i" 2>/dev/null | awk '{ print $4 }' | tr '\n' ' ' | sed 's/ $//')
        if [ -n "$addrs" ]; then why="${why:+$why, }has addresses $addrs"; fi
    else
        why="${why:+$why, }cannot be checked for addresses ('ip' is missing)"
    fi
    # /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    if awk -v i="$i" '$1 == i && $2 == "00000000" && $8 == "00000000" { f = 1 } END { exit !f }' \
        /proc/net/route 2>/dev/null; then
        why="${why:+$why, }carries the IPv4 default route"
    fi
    # /proc/net/ipv6_route: dest plen src splen nexthop metric refcnt use flags iface
    if awk -v i="$i" '$1 == "00000000000000000000000000000000" && $2 == "00" && $10 == i { f = 1 }
        END { exit !f }' /proc/net/ipv6_route 2>/dev/null; then
        why="${why:+$why, }carries the IPv6 default route"
    fi
    echo "$why"
}

# --- checks: read-only ----------------------------------------------------------------------
NOIOMMU=$(cat "$SYSFS/module/vfio/parameters/enable_unsafe_noiommu_mode" 2>/dev/null || echo N)
checked=""
fail=0
for raw in $BDFS; do
    bdf=$(normalise "$raw")
    if [ -z "$bdf" ]; then
        err "'$raw' is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:00:04.0)"
        fail=1; continue
    fi
    dev="$SYSFS/bus/pci/devices/$bdf"
    if [ ! -e "$dev" ]; then
        err "no PCI device $bdf (list them with: ls $SYSFS/bus/pci/devices, or lspci -D)"
        fail=1; continue
    fi
    refused=0
    for i in $(net_ifaces_of "$dev"); do
        why=$(iface_in_use "$i")
        if [ -n "$why" ]; then
            err "refusing $bdf: its network interface $i $why; binding it to $DRIVER would" \
                "cut this machine off that network. Pick a device that is not in use."
            refused=1
        fi
    done
    if [ "$refused" -ne 0 ]; then fail=1; continue; fi
    if [ "$DRIVER" = vfio-pci ] && [ ! -e "$dev/iommu_group" ] && [ "$NOIOMMU" != Y ]; then
        err "$bdf has no IOMMU group: vfio-pci needs an IOMMU (boot with intel_iommu=on or" \
            "amd_iommu=on, and for QEMU add -device intel-iommu)"
        fail=1; continue
    fi
    checked="$checked $bdf"
done
if [ "$fail" -ne 0 ]; then
    err "nothing was changed"
    exit 1
fi
if [ "$CHECK_ONLY" -eq 1 ]; then
    for bdf in $checked; do echo "bind-vfio: $bdf can be bound"; done
    exit 0
fi

# --- binding --------------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    err "binding needs root (writes to $SYSFS/bus/pci): run it with sudo"
    exit 1
fi
if [ ! -d "$SYSFS/bus/pci/drivers/$DRIVER" ]; then
    if ! modprobe "$DRIVER" 2>/dev/null; then
        err "cannot load $DRIVER (modprobe $DRIVER failed): install the kernel's modules"
        exit 1
    fi
fi
for bdf in $checked; do
    dev="$SYSFS/bus/pci/devices/$bdf"
    cur=""
    if [ -e "$dev/driver" ]; then cur=$(basename "$(readlink -f "$dev/driver")"); fi
    if [ "$cur" != "$DRIVER" ]; then
        echo "$DRIVER" >"$dev/driver_override"
        if [ -n "$cur" ]; then echo "$bdf" >"$dev/driver/unbind"; fi
        echo "$bdf" >"$SYSFS/bus/pci/drivers_probe" || true
        cur=""
        if [ -e "$dev/driver" ]; then cur=$(basename "$(readlink -f "$dev/driver")"); fi
        if [ "$cur" != "$DRIVER" ]; then
            err "$bdf did not bind to $DRIVER (driver now: ${cur:-none}); see dmesg"
            exit 1
        fi
    fi
    if [ "$DRIVER" = uio_pci_generic ]; then
        echo "UIO-BOUND $bdf (no IOMMU: the device can reach all memory)"
        continue
    fi
    group=$(basename "$(readlink -f "$dev/iommu_group")")
    # A no-IOMMU group's node is noiommu-<n>.
    [ -e "/dev/vfio/$group" ] || [ ! -e "/dev/vfio/noiommu-$group" ] || group=noiommu-$group
    if [ ! -e "/dev/vfio/$group" ]; then
        err "$bdf is bound but /dev/vfio/$group is missing (is devtmpfs mounted on /dev?)"
        exit 1
    fi
    echo "VFIO-BOUND $bdf group=$group /dev/vfio/$group"
done
