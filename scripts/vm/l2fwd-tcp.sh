#!/bin/bash
# l2fwd-tcp.sh: TCP through l2fwd in the VM harness, Linux's own TCP stack on both ends
# (scripts/l2fwd-vm.sh --tcp [--kernel-bridge] runs this once it has built l2fwd and the image).
#
#   namespace A <-> tap <-> NIC <-> l2fwd (in the guest, VFIO) <-> NIC <-> tap <-> namespace B
#
# The wiring (shared/docs/vm-harness.md, "Tap backends in network namespaces"): QEMU runs in a
# namespace of its own (tcp-q-<pid>) and makes four taps there; once it runs, they move into the two
# ends' namespaces (tcp-a-<pid>, tcp-b-<pid>). Nothing touches the machine's own namespace; all
# three namespaces are removed at the end. One boot, four NICs, two pairs:
#
#   pair "on":  NIC0 (0000:00:03.0, tap t0 in A, 198.18.0.1) and NIC1 (0000:00:04.0, t1 in B,
#               198.18.0.2); QEMU's offload defaults for a tap (checksum, TSO, LRO, mergeable
#               buffers) and host_mtu=9000
#   pair "off": NIC2 (0000:00:05.0, t2 in A, 198.18.1.1) and NIC3 (0000:00:06.0, t3 in B,
#               198.18.1.2); every offload property off (QEMU's offloads are fixed per boot, so the
#               comparison needs a second pair rather than a second boot)
#
# Phases, each a fresh l2fwd started in the guest over the control line
# (scripts/vm/l2fwd-tcp-guest.sh):
#   on     pair "on", l2fwd --offloads: a 64 MiB random file A -> B (socat; sha256 on both ends),
#          then iperf3 A -> B
#   off    pair "off", l2fwd without offloads: the same
#   jumbo  pair "on" with MTU 9000 on the taps, l2fwd --offloads --max-pkt-len 9014:
#          `ping -M "do" -s 8972` (9014-byte frames both ways, unfragmented) and iperf3
# With --kernel-bridge the guest then gives the four NICs to its own virtio-net driver, bridges
# each pair (the kernel's bridge) and the same three measurements run again: Linux forwarding in
# the same VM, the figure l2fwd is compared with.
#
# Every l2fwd must exit cleanly with every mbuf back (L2FWD-POOL in_use=0); the console must show
# no IOMMU fault or oops (run-vm.sh). Last lines:
#   RESULT tcp-bridge offloads_on_mbps=.. offloads_off_mbps=.. ratio=.. retransmits_on=..
#          retransmits_off=.. integrity=ok|bad jumbo=ok|bad jumbo_mbps=..   (with --kernel-bridge)
#   RESULT tcp offloads_on_mbps=<x> offloads_off_mbps=<y> ratio=<x/y> retransmits_on=<n>
#          retransmits_off=<n> integrity=<ok|bad> jumbo=<ok|bad> jumbo_mbps=<z>
# Exit 0 only when every file crossed intact, the jumbo pings all came back, every iperf3 ran and
# every l2fwd finished cleanly. Needs root (namespaces, taps).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() {
    cat <<USAGE
usage: $0 --initrd FILE [--ring packed|split] [--kernel-bridge] [--seconds N] [--file-mib N] [--out DIR]
  TCP through l2fwd in the VM (offloads on, off, MTU 9000); normally run by scripts/l2fwd-vm.sh --tcp.
  --initrd FILE     the guest image with l2fwd and /etc/l2fwd-vm.toml (scripts/l2fwd-vm.sh builds it)
  --ring R          virtqueue layout the NICs offer (default packed)
  --kernel-bridge   also measure the guest kernel's bridge over the same NICs, in the same boot
  --seconds N       iperf3 seconds per measurement (default 5)
  --file-mib N      size of the random file sent per phase (default 64)
  --out DIR         logs (default target/l2fwd-vm)
USAGE
}

INITRD=""
RING=packed
BRIDGE=0
SECS=5
FILE_MIB=64
OUT_DIR=$ROOT/target/l2fwd-vm
while [ $# -gt 0 ]; do
    case "$1" in
        --initrd) INITRD=${2:?--initrd needs a file}; shift ;;
        --ring) RING=${2:?--ring needs packed or split}; shift ;;
        --kernel-bridge) BRIDGE=1 ;;
        --seconds) SECS=${2:?--seconds needs a number}; shift ;;
        --file-mib) FILE_MIB=${2:?--file-mib needs a number}; shift ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "l2fwd-tcp: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -s "$INITRD" ] || { echo "l2fwd-tcp: no guest image '$INITRD' (--initrd)" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-tcp: --seconds must be a positive number" >&2; exit 2; }
[[ "$FILE_MIB" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-tcp: --file-mib must be a positive number" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "l2fwd-tcp: needs root (network namespaces, taps)" >&2; exit 2; }

# shellcheck source=../lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need_commands ip:iproute2 ss:iproute2 iperf3:iperf3 socat:socat ping:iputils-ping

say() { printf 'l2fwd-tcp: %s\n' "$*"; }
started=$SECONDS
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/console-tcp.log
VM_OUT=$OUT_DIR/run-vm-tcp.txt
RESULTS=$OUT_DIR/tcp-results.txt

NS_Q=tcp-q-$$
NS_A=tcp-a-$$
NS_B=tcp-b-$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/l2fwd-tcp.XXXXXX")
VMPID=""
PIDS=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$VMPID" ] && kill -0 "$VMPID" 2>/dev/null; then kill "$VMPID" 2>/dev/null || true; fi
    # QEMU (run-vm.sh's child) must be gone before its namespace goes.
    [ -z "$VMPID" ] || wait "$VMPID" 2>/dev/null || true
    for ns in "$NS_Q" "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in "$NS_Q" "$NS_A" "$NS_B"; do
    ip netns add "$ns"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
done

# --- the NICs -----------------------------------------------------------------------------------
# The properties QEMU offers offloads with; all off for pair "off" (as in vm-harness.md's anchor).
OFFLOADS_OFF=csum=off,gso=off,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off
OFFLOADS_OFF+=,host_tso4=off,host_tso6=off,host_ufo=off,host_ecn=off
TAPS=(t0 t1 t2 t3)
# Per tap: its end's namespace, address, and MAC. l2fwd sends out of its port p with destination
# 02:00:00:00:00:<p>; the taps carry those MACs, so the ends take the frames as theirs.
TAP_NS=("$NS_A" "$NS_B" "$NS_A" "$NS_B")
TAP_IP=(198.18.0.1 198.18.0.2 198.18.1.1 198.18.1.2)
TAP_MAC=(02:00:00:00:00:00 02:00:00:00:00:01 02:00:00:00:00:00 02:00:00:00:00:01)
PAIR_ON=(0000:00:03.0 0000:00:04.0)
PAIR_OFF=(0000:00:05.0 0000:00:06.0)

# --- boot ---------------------------------------------------------------------------------------
# iommu.passthrough=1: the guest kernel's own drivers (the bridge phases) use the devices without
# remapping, as in the anchor measurement (which had no vIOMMU); VFIO still puts l2fwd's devices
# in IOMMU domains of their own.
rm -f "$LOG"
say "booting: 4 NICs on taps (pair on: offloads, host_mtu=9000; pair off: offloads off), ring=$RING; console $LOG"
t_boot=$SECONDS
ip netns exec "$NS_Q" "$HERE/run-vm.sh" --initrd "$INITRD" --ring "$RING" --nics 4 --taps "$(IFS=,; echo "${TAPS[*]}")" \
    --nic-props 0=host_mtu=9000 --nic-props 1=host_mtu=9000 --nic-props "2=$OFFLOADS_OFF" --nic-props "3=$OFFLOADS_OFF" \
    --append iommu.passthrough=1 --ctl "$WORK/ctl" --log "$LOG" --timeout 1200 --quiet \
    --script "$HERE/l2fwd-tcp-guest.sh" --file "$ROOT/config/l2fwd-vm.toml:/etc/l2fwd-vm.toml" >"$VM_OUT" 2>&1 &
VMPID=$!

FAIL=()
# QEMU makes the taps as it starts; each moves into its end's namespace (QEMU keeps its fd).
for i in "${!TAPS[@]}"; do
    tap=${TAPS[i]}
    for _ in $(seq 300); do
        ip -n "$NS_Q" link show "$tap" >/dev/null 2>&1 && break
        kill -0 "$VMPID" 2>/dev/null || break
        sleep 0.1
    done
    if ! ip -n "$NS_Q" link set "$tap" netns "${TAP_NS[i]}" 2>/dev/null; then
        FAIL+=("QEMU made no tap $tap (see $VM_OUT)")
        break
    fi
    ip -n "${TAP_NS[i]}" link set "$tap" address "${TAP_MAC[i]}"
    ip -n "${TAP_NS[i]}" addr add "${TAP_IP[i]}/24" dev "$tap"
    ip -n "${TAP_NS[i]}" link set "$tap" up
done

# Waits until a line matching $2 appears in the console after the line `TCP-PHASE-BEGIN $1` (the
# whole log for $1 = "-"); fails early when the guest finished.
wait_console() {
    local phase=$1 re=$2 secs=$3 deadline
    deadline=$((SECONDS + secs))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if tr -d '\r' <"$LOG" | awk -v p="$phase" -v re="$re" '
            p == "-" || $0 == "TCP-PHASE-BEGIN " p { on = 1 }
            on && $0 ~ re { found = 1; exit }
            END { exit !found }'; then
            return 0
        fi
        tr -d '\r' <"$LOG" | grep -qE '^(VMCMD-EXIT|TCP-GUEST-ERROR)' && return 1
        kill -0 "$VMPID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
CMD_N=0
# Sends one command to the guest once it listens (TCP-CMD-WAIT n).
guest() {
    CMD_N=$((CMD_N + 1))
    if ! wait_console - "^TCP-CMD-WAIT $CMD_N\$" 120; then
        FAIL+=("the guest did not take command $CMD_N ($*)")
        return 1
    fi
    timeout 5 sh -c "echo '$*' >'$WORK/ctl.in'"
}

# --- measurements -------------------------------------------------------------------------------
FILE=$WORK/random.bin
head -c $((FILE_MIB << 20)) /dev/urandom >"$FILE"
SUM=$(sha256sum "$FILE" | cut -d' ' -f1)
# Waits until something in namespace $1 listens on TCP port $2.
listening() {
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2")" ] && return 0
        sleep 0.05
    done
    return 1
}
# measure NAME DST: the random file from A to DST in B (sha256 compared), then iperf3 A -> DST.
# Appends `NAME file_mbps=.. integrity=ok|bad mbps=.. retransmits=..` to $RESULTS.
measure() {
    local name=$1 dst=$2 recv=$WORK/received.bin integrity=bad file_mbps=0 mbps=0 retr=-1 t0 t1 pid
    ip netns exec "$NS_B" socat -u "TCP-LISTEN:5301,bind=$dst,reuseaddr" "CREATE:$recv" &
    pid=$!
    PIDS+=("$pid")
    if listening "$NS_B" 5301; then
        t0=$(date +%s.%N)
        if timeout 300 ip netns exec "$NS_A" socat -u "OPEN:$FILE" "TCP:$dst:5301"; then
            wait "$pid" || true
            t1=$(date +%s.%N)
            file_mbps=$(awk -v a="$t0" -v b="$t1" -v m="$FILE_MIB" 'BEGIN { printf "%.0f", m * 8 * 1.048576 / (b - a) }')
            [ "$(sha256sum "$recv" | cut -d' ' -f1)" = "$SUM" ] && integrity=ok
            say "$name: ${FILE_MIB} MiB file: sha256 $integrity ($(stat -c %s "$recv") bytes received), $file_mbps Mbit/s"
        else
            FAIL+=("$name: the file transfer failed or timed out")
        fi
    else
        FAIL+=("$name: socat did not listen in $NS_B")
    fi
    kill "$pid" 2>/dev/null || true
    rm -f "$recv"
    [ "$integrity" = ok ] || FAIL+=("$name: the file did not cross intact")

    local out=$OUT_DIR/iperf3-$name.txt
    ip netns exec "$NS_B" iperf3 -s -1 -B "$dst" -p 5201 >"$WORK/iperf3-server.txt" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if listening "$NS_B" 5201 &&
        timeout $((SECS + 60)) ip netns exec "$NS_A" iperf3 -c "$dst" -p 5201 -t "$SECS" -f m >"$out" 2>&1; then
        # Receiver's bit rate; the sender's retransmits (the column before "sender").
        mbps=$(awk '/ receiver$/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") print $i }' "$out" | tail -n1)
        retr=$(awk '/ sender$/ { print $(NF - 1) }' "$out" | tail -n1)
        say "$name: iperf3 -t $SECS: ${mbps:-?} Mbit/s, ${retr:-?} retransmits"
    else
        FAIL+=("$name: iperf3 failed ($(tail -n1 "$out" 2>/dev/null))")
    fi
    wait "$pid" 2>/dev/null || true
    [[ "${mbps:-}" =~ ^[0-9.]+$ ]] || { mbps=0; FAIL+=("$name: no iperf3 bit rate"); }
    [[ "${retr:-}" =~ ^[0-9]+$ ]] || retr=-1
    echo "$name file_mbps=$file_mbps integrity=$integrity mbps=$mbps retransmits=$retr" >>"$RESULTS"
}
# MTU $1 on pair "on"'s taps.
set_mtu() {
    ip -n "$NS_A" link set t0 mtu "$1"
    ip -n "$NS_B" link set t1 mtu "$1"
}
# jumbo NAME: 8972-byte pings (9000-byte packets, don't fragment) A -> B, each answered.
jumbo() {
    local out=$OUT_DIR/ping-$1.txt ok=bad
    if ip netns exec "$NS_A" ping -M "do" -s 8972 -c 5 -i 0.2 -W 5 "${TAP_IP[1]}" >"$out" 2>&1 &&
        grep -q ' 5 received' "$out"; then
        ok=ok
    fi
    say "$1: ping -M do -s 8972: $(grep -E 'packets transmitted' "$out" || tail -n1 "$out")"
    [ "$ok" = ok ] || FAIL+=("$1: 9000-byte pings did not all come back")
    echo "$1 ping=$ok" >>"$RESULTS"
}
# l2fwd_phase NAME DST ARGS..: l2fwd with ARGS in the guest, measured towards DST.
l2fwd_phase() {
    local name=$1 dst=$2
    shift 2
    guest l2fwd "$name" "$@" || return 0
    if ! wait_console "$name" '^(L2FWD-READY|TCP-PHASE-END)' 120 || ! wait_console "$name" '^L2FWD-READY' 1; then
        FAIL+=("$name: l2fwd did not get ready: $(tr -d '\r' <"$LOG" | grep -m1 '^l2fwd: error' || echo 'see the console')")
        return 0
    fi
    say "$name: l2fwd ready ($*)"
    [ "$name" != l2fwd-jumbo ] || jumbo "$name"
    measure "$name" "$dst"
    guest stop || return 0
    wait_console "$name" '^TCP-PHASE-END ' 60 || FAIL+=("$name: l2fwd did not stop")
    local phase_log=$WORK/$name.txt
    tr -d '\r' <"$LOG" | sed -n "/^TCP-PHASE-BEGIN $name\$/,/^TCP-PHASE-END $name /p" >"$phase_log"
    grep -E '^(L2FWD-PORT|L2FWD-SUMMARY|L2FWD-POOL)' "$phase_log" | sed 's/^/  guest| /' || true
    grep -q "^TCP-PHASE-END $name rc=0\$" "$phase_log" || FAIL+=("$name: l2fwd did not exit 0")
    grep -q '^L2FWD-POOL .* in_use=0 ' "$phase_log" || FAIL+=("$name: l2fwd did not get every mbuf back")
}

: >"$RESULTS"
if [ "${#FAIL[@]}" -eq 0 ] && wait_console - '^TCP-CMD-WAIT 1$' 180; then
    say "guest ready $((SECONDS - t_boot)) s after boot started"
    l2fwd_phase l2fwd-on "${TAP_IP[1]}" "${PAIR_ON[@]}" --offloads
    l2fwd_phase l2fwd-off "${TAP_IP[3]}" "${PAIR_OFF[@]}"
    set_mtu 9000
    l2fwd_phase l2fwd-jumbo "${TAP_IP[1]}" "${PAIR_ON[@]}" --offloads --max-pkt-len 9014
    set_mtu 1500
    if [ "$BRIDGE" -eq 1 ]; then
        if guest bridge "br0=${PAIR_ON[0]},${PAIR_ON[1]}" "br1=${PAIR_OFF[0]},${PAIR_OFF[1]}" &&
            wait_console - '^TCP-BRIDGE-READY$' 60; then
            tr -d '\r' <"$LOG" | grep '^TCP-BRIDGE ' | sed 's/^/  guest| /'
            measure bridge-on "${TAP_IP[1]}"
            measure bridge-off "${TAP_IP[3]}"
            set_mtu 9000
            jumbo bridge-jumbo
            measure bridge-jumbo "${TAP_IP[1]}"
            set_mtu 1500
            guest counters || true
        else
            FAIL+=("the guest kernel's bridge did not come up: $(tr -d '\r' <"$LOG" | grep -m1 '^TCP-GUEST-ERROR' || echo 'see the console')")
        fi
    fi
    guest "done" || true
else
    FAIL+=("the guest never got ready: $(tr -d '\r' <"$LOG" | grep -m1 -E '^(VM-INIT-ERROR|TCP-GUEST-ERROR)' || echo "see $LOG")")
fi

vm_rc=0
wait "$VMPID" || vm_rc=$?
VMPID=""
case "$vm_rc" in
    0) ;;
    126) FAIL+=("IOMMU fault or kernel oops on the console (run-vm.sh exit 126)") ;;
    124) FAIL+=("the VM timed out (run-vm.sh exit 124)") ;;
    *) FAIL+=("the guest exited $vm_rc: $(tr -d '\r' <"$LOG" | grep -m1 -E '^(VM-INIT-ERROR|TCP-GUEST-ERROR)' || echo "see $LOG")") ;;
esac
tr -d '\r' <"$LOG" | grep '^TCP-NETDEV ' | sed 's/^/  guest| /' || true

# --- summary ------------------------------------------------------------------------------------
# field NAME KEY: KEY's value on NAME's line of $RESULTS (default $3).
field() {
    awk -v n="$1" -v k="$2" -v d="${3:-0}" '$1 == n { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) v = kv[2] } }
        END { print (v == "" ? d : v) }' "$RESULTS"
}
# result TAG PREFIX: the RESULT line of the phases PREFIX-on, -off, -jumbo.
result() {
    local p=$2 on off integrity=ok jumbo=ok
    on=$(field "$p-on" mbps)
    off=$(field "$p-off" mbps)
    [ "$(field "$p-on" integrity bad)" = ok ] && [ "$(field "$p-off" integrity bad)" = ok ] &&
        [ "$(field "$p-jumbo" integrity bad)" = ok ] || integrity=bad
    [ "$(field "$p-jumbo" ping bad)" = ok ] && awk -v m="$(field "$p-jumbo" mbps)" 'BEGIN { exit !(m > 0) }' || jumbo=bad
    printf 'RESULT %s offloads_on_mbps=%s offloads_off_mbps=%s ratio=%s retransmits_on=%s retransmits_off=%s integrity=%s jumbo=%s jumbo_mbps=%s\n' \
        "$1" "$on" "$off" "$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')" \
        "$(field "$p-on" retransmits -1)" "$(field "$p-off" retransmits -1)" "$integrity" "$jumbo" "$(field "$p-jumbo" mbps)"
}
echo
say "summary (ring=$RING, iperf3 -t $SECS, $FILE_MIB MiB files; total $((SECONDS - started)) s; logs $OUT_DIR)"
sed 's/^/  /' "$RESULTS"
say "anchor (vm-harness.md, the guest kernel's bridge, iperf3 -t 10): 1620 Mbit/s with offloads, 230 without, 1460 at MTU 9000"
if [ "${#FAIL[@]}" -gt 0 ]; then
    for f in "${FAIL[@]}"; do say "FAIL: $f"; done
else
    say "PASS"
fi
[ "$BRIDGE" -eq 0 ] || result tcp-bridge bridge
line=$(result tcp l2fwd)
echo "$line"
[ "${#FAIL[@]}" -eq 0 ] && [[ "$line" == *" integrity=ok jumbo=ok "* ]]
