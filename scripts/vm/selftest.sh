#!/bin/bash
# selftest.sh: prove the VM harness end to end without our driver.
#
# Boots the harness VM (run-vm.sh) with the NICs left to the guest kernel (vmbind=none): the
# guest loads virtio-pci + virtio-net and bridges eth0 and eth1 (the kernel bridge floods the
# test frames, whose destination MACs it never learns, from one NIC to the other, unchanged).
# Then vm-peer sends paced frames both ways through QEMU's UDP sockets and checks every byte;
# the host stops the guest over the control line (run-vm.sh --ctl). Prints, per ring type,
#   ring=<packed|split> RESULT sent=.. received=.. lost=.. corrupted=.. p50_us=.. p99_us=..
# Exit 0 when every run was clean.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() {
    cat <<USAGE
usage: $0 [--ring packed|split|both] [--frames N] [--rate PPS] [--port-base P]
  Harness self-test: kernel bridge in the guest instead of l2fwd, vm-peer on the host.
  Defaults: --ring both --frames 5000 --rate 2000 --port-base 42001.
  VM_PEER=path uses an existing vm-peer binary (default: cargo build --release).
USAGE
}

RINGS="packed split"
FRAMES=5000
RATE=2000
PORT_BASE=42001
while [ $# -gt 0 ]; do
    case "$1" in
        --ring) case "${2:-}" in both) RINGS="packed split" ;; packed|split) RINGS=$2 ;;
                *) echo "selftest: --ring packed|split|both" >&2; exit 2 ;; esac; shift ;;
        --frames) FRAMES=${2:?}; shift ;;
        --rate) RATE=${2:?}; shift ;;
        --port-base) PORT_BASE=${2:?}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "selftest: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${VM_PEER:-}" ]; then
    # shellcheck source=../lib/need.sh
    . "$ROOT/scripts/lib/need.sh"
    need_commands cc:gcc    # cargo links with cc
    if ! (cd "$ROOT" && cargo build --release -q -p vm-peer --bin vm-peer) >"${TMPDIR:-/tmp}/selftest-build.$$" 2>&1; then
        cat "${TMPDIR:-/tmp}/selftest-build.$$" >&2
        rm -f "${TMPDIR:-/tmp}/selftest-build.$$"
        echo "selftest: cannot build vm-peer" >&2
        exit 2
    fi
    rm -f "${TMPDIR:-/tmp}/selftest-build.$$"
    VM_PEER=$ROOT/target/release/vm-peer
fi
[ -x "$VM_PEER" ] || { echo "selftest: no vm-peer binary at $VM_PEER" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vm-selftest.XXXXXX")
VMPID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$VMPID" ] && kill -0 "$VMPID" 2>/dev/null; then kill "$VMPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/guest.sh" <<'GUEST'
set -e
# No IPv6 autoconfiguration, no IPv4 address (no ARP), no multicast reports: nothing but the
# test frames may leave the NICs.
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
loadmod virtio_pci
loadmod virtio_net
loadmod bridge
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth1 ] && break; sleep 0.2; done
brctl addbr br0
brctl addif br0 eth0
brctl addif br0 eth1
# Without snooping the bridge sends no IGMP reports (multicast router discovery) of its own.
echo 0 >/sys/class/net/br0/bridge/multicast_snooping
for dev in eth0 eth1 br0; do ip link set "$dev" up; done
# The bridge forwards only once its ports are in the forwarding state.
for i in $(seq 1 50); do
    [ "$(cat /sys/class/net/eth0/brport/state)$(cat /sys/class/net/eth1/brport/state)" = 33 ] && break
    sleep 0.1
done
echo "SELFTEST-READY $(cat /sys/class/net/eth0/brport/state)$(cat /sys/class/net/eth1/brport/state)"
vm-wait-host 600
for dev in eth0 eth1; do
    echo "$dev rx=$(cat /sys/class/net/$dev/statistics/rx_packets) tx=$(cat /sys/class/net/$dev/statistics/tx_packets) rx_dropped=$(cat /sys/class/net/$dev/statistics/rx_dropped)"
done
GUEST

FAIL=0
for ring in $RINGS; do
    log=$WORK/console-$ring.log
    "$HERE/run-vm.sh" --ring "$ring" --port-base "$PORT_BASE" --append vmbind=none --ctl "$WORK/ctl" \
        --log "$log" --timeout 300 --quiet --script "$WORK/guest.sh" >"$WORK/vm-$ring.out" 2>&1 &
    VMPID=$!
    if ! "$HERE/wait-for.sh" "$log" '^SELFTEST-READY' 120; then
        cat "$WORK/vm-$ring.out" "$log" >&2 || true
        exit 1
    fi
    set +e
    # The guest's test MACs: the bridge must not know them (it would deliver them locally).
    "$VM_PEER" run --port-base "$PORT_BASE" --frames "$FRAMES" --rate "$RATE" --ready-timeout 30 \
        --port-mac 02:00:00:00:20:00,02:00:00:00:20:01 \
        --expect-dst-mac-0to1 02:00:00:00:20:00 --expect-src-mac-0to1 02:00:00:00:10:00 \
        --expect-dst-mac-1to0 02:00:00:00:20:01 --expect-src-mac-1to0 02:00:00:00:10:01 \
        >"$WORK/peer-$ring.out" 2>"$WORK/peer-$ring.err"
    peer_rc=$?
    timeout 5 sh -c "echo stop >'$WORK/ctl.in'"
    wait "$VMPID"
    vm_rc=$?
    VMPID=""
    set -e
    grep -v '^RESULT' "$WORK/peer-$ring.out" || true
    tr -d '\r' <"$log" | grep -E '^(eth[01] rx=|VFIO|VM-READY)' || true
    tail -n 2 "$WORK/vm-$ring.out"
    echo "ring=$ring $(grep '^RESULT' "$WORK/peer-$ring.out" || echo 'RESULT missing')"
    if [ "$peer_rc" -ne 0 ] || [ "$vm_rc" -ne 0 ]; then
        echo "selftest: ring=$ring FAILED (vm-peer exit $peer_rc, run-vm exit $vm_rc)" >&2
        cat "$WORK/peer-$ring.err" >&2
        FAIL=1
    fi
done
exit "$FAIL"
