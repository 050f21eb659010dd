#!/bin/sh
# l2fwd-tcp-guest.sh: the guest side of scripts/vm/l2fwd-tcp.sh (runs as /vmcmd.sh under busybox).
#
# Takes commands from the host over the control line (vm-wait-host), one at a time; before each it
# prints `TCP-CMD-WAIT <n>` (n counts from 1), so the host writes a command only while the guest
# listens:
#   l2fwd PHASE ARGS..  start `l2fwd --config /etc/l2fwd-vm.toml ARGS..` in the background; prints
#                       `TCP-PHASE-BEGIN PHASE`, then l2fwd its own lines (L2FWD-READY ...), and
#                       `TCP-PHASE-END PHASE rc=<l2fwd's exit status>` when l2fwd exits
#   stop                SIGINT to the running l2fwd; waits for it
#   bridge BR=BDF,BDF.. give every listed function to the kernel's virtio-pci (from vfio-pci) and
#                       bridge each pair with the kernel's bridge BR (e.g. `bridge br0=0000:00:03.0,
#                       0000:00:04.0 br1=...`); prints `TCP-BRIDGE BR eth..` per bridge and
#                       `TCP-BRIDGE-READY` once every port forwards
#   counters            prints `TCP-NETDEV <dev> rx=.. tx=.. rx_dropped=.. tx_dropped=..` per NIC
#   done                exit 0
# Exits 1 when a command fails or the host says nothing for 15 minutes.
set -u

# Nothing but the test traffic on the NICs: no IPv6 autoconfiguration or multicast reports.
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6

fail() {
    echo "TCP-GUEST-ERROR $*"
    exit 1
}

# The kernel's network interface of PCI function $1 (virtio-pci: .../virtioN/net/ethX), waiting
# for the driver's probe.
netdev_of() {
    for _ in $(seq 50); do
        for d in /sys/bus/pci/devices/"$1"/virtio*/net/*; do
            [ -e "$d" ] && { basename "$d"; return 0; }
        done
        sleep 0.1
    done
    return 1
}

# bridge BR=BDF,BDF ..: every function to virtio-pci, one kernel bridge per pair.
bridge() {
    loadmod virtio_pci || fail "loadmod virtio_pci"
    loadmod virtio_net || fail "loadmod virtio_net"
    loadmod bridge || fail "loadmod bridge"
    ports=""
    for spec in "$@"; do
        br=${spec%%=*}
        devs=""
        for bdf in $(echo "${spec#*=}" | tr ',' ' '); do
            dev=/sys/bus/pci/devices/$bdf
            echo virtio-pci >"$dev/driver_override"
            [ -e "$dev/driver" ] && echo "$bdf" >"$dev/driver/unbind"
            echo "$bdf" >/sys/bus/pci/drivers_probe
            eth=$(netdev_of "$bdf") || fail "$bdf: no network interface after binding it to virtio-pci"
            devs="$devs $eth"
        done
        brctl addbr "$br" || fail "brctl addbr $br"
        # Without snooping the bridge sends no IGMP queries or reports of its own.
        echo 0 >"/sys/class/net/$br/bridge/multicast_snooping"
        for eth in $devs; do
            brctl addif "$br" "$eth" || fail "brctl addif $br $eth"
            ip link set "$eth" up
            ports="$ports $eth"
        done
        ip link set "$br" up
        echo "TCP-BRIDGE $br$devs mtu=$(cat "/sys/class/net/$br/mtu")"
    done
    # A bridge forwards once its ports are in the forwarding state (3).
    for _ in $(seq 100); do
        all=1
        for eth in $ports; do
            [ "$(cat "/sys/class/net/$eth/brport/state")" = 3 ] || all=0
        done
        [ "$all" = 1 ] && break
        sleep 0.1
    done
    [ "$all" = 1 ] || fail "bridge ports not forwarding after 10 s"
    echo "TCP-BRIDGE-READY"
}

counters() {
    for d in /sys/class/net/eth*; do
        [ -e "$d" ] || continue
        s=$d/statistics
        echo "TCP-NETDEV $(basename "$d") rx=$(cat "$s/rx_packets") tx=$(cat "$s/tx_packets")" \
            "rx_dropped=$(cat "$s/rx_dropped") tx_dropped=$(cat "$s/tx_dropped")"
    done
}

n=0
runner=""
phase=""
while :; do
    n=$((n + 1))
    echo "TCP-CMD-WAIT $n"
    line=$(vm-wait-host 900) || fail "no command from the host for 15 minutes"
    # shellcheck disable=SC2086 # the command's words
    set -- $line
    [ $# -gt 0 ] || continue
    cmd=$1
    shift
    case "$cmd" in
        l2fwd)
            [ -z "$runner" ] || fail "l2fwd already runs (phase $phase)"
            phase=$1
            shift
            echo "TCP-PHASE-BEGIN $phase"
            rm -f /tmp/l2fwd.pid
            # The subshell reports l2fwd's exit, whether asked to stop or not.
            (
                l2fwd --config /etc/l2fwd-vm.toml "$@" &
                echo $! >/tmp/l2fwd.pid
                wait $!
                echo "TCP-PHASE-END $phase rc=$?"
            ) &
            runner=$!
            ;;
        stop)
            [ -n "$runner" ] || fail "stop: no l2fwd runs"
            for _ in $(seq 50); do [ -s /tmp/l2fwd.pid ] && break; sleep 0.1; done
            kill -INT "$(cat /tmp/l2fwd.pid)" 2>/dev/null
            wait "$runner"
            runner=""
            ;;
        bridge) bridge "$@" ;;
        counters) counters ;;
        done) exit 0 ;;
        *) fail "unknown command '$cmd'" ;;
    esac
done
