#!/bin/bash
# l2fwd-vm.sh: the main job, end to end, in one command on a fresh machine.
#
#   scripts/l2fwd-vm.sh [--ring packed|split] [--frames N] [--rate PPS] [--queues N [--rss-check]]
#                       [--link-flap] [--no-iommu | --no-iommu-vfio]
#   scripts/l2fwd-vm.sh --tcp [--kernel-bridge] [--ring packed|split]
#
# With --tcp: TCP through l2fwd between two network namespaces on the host, Linux's TCP stack on
# both ends, offloads on and off and at MTU 9000, a 64 MiB file checked by sha256, iperf3
# (scripts/vm/l2fwd-tcp.sh, which this runs once l2fwd and the image are built; --kernel-bridge
# also measures the guest kernel's bridge in the same boot). Its last line is
#   RESULT tcp offloads_on_mbps=.. offloads_off_mbps=.. ratio=.. retransmits_on=.. retransmits_off=..
#          integrity=ok|bad jumbo=ok|bad jumbo_mbps=..
#
# With --queues N the NICs are wired to multi-queue taps instead of UDP sockets: QEMU runs in a
# network namespace this script creates (mq-l2fwd-<pid>, removed at the end), each NIC gets
# `-netdev tap,queues=N,vhost=off` and `mq=on,rss=on,hash=on`, l2fwd opens N queue pairs per port
# (VQ_PAIRS_SET and the default RSS configuration through the control queue; per-queue ring sizes
# 256, 128, 64, 256, ..), and vm-peer sends
# IPv4/UDP frames of many flows into the taps with AF_PACKET. --rss-check also gives port 1 a
# changed indirection table (the queues in reverse order) and key at run time, and requires that every
# receive queue of l2fwd got exactly the frames vm-peer predicts with its own Toeplitz hash from
# the key and each port's table; and l2fwd asks for hash reports (VIRTIO_NET_F_HASH_REPORT:
# QEMU's software RSS reports its hash) and writes each frame's reported hash value and type over
# its source MAC (--hash-to-src-mac), which vm-peer checks frame by frame against its own Toeplitz
# hash of the frame's flow under the receiving port's key, type UDPv4 (--check-hash).
#
# 1. installs what is missing (QEMU, cpio, kmod, the guest kernel and busybox:
#    scripts/vm/fetch-guest.sh; gcc and libc6-dev for the build: scripts/lib/need.sh);
# 2. builds l2fwd static for the guest and vm-peer for the host (cargo, `ci` profile);
# 3. builds the guest's initramfs with l2fwd and config/l2fwd-vm.toml in it;
# 4. boots the VM harness (scripts/vm/run-vm.sh: q35, emulated Intel IOMMU, TCG, two
#    virtio-net-pci NICs with packed=on|off, bound to vfio-pci in the guest) and starts l2fwd on
#    both NICs;
# 5. once the console says L2FWD-READY, runs vm-peer on the host: N frames each way (60..1514
#    bytes) through QEMU's UDP sockets, every byte checked, including l2fwd's MAC rewrite
#    (frames out of NIC1: dst 02:00:00:00:00:01, src 52:54:00:00:00:02; out of NIC0:
#    dst 02:00:00:00:00:00, src 52:54:00:00:00:01); shows progress every second;
# 6. stops l2fwd with SIGINT over the harness's control line, collects its final summary from the
#    console (counters, and that every mbuf is back in the pool), checks the console for IOMMU
#    faults and oopses (run-vm.sh: exit 126);
# 7. prints a summary; the last line is
#      RESULT ring=<packed|split> queues=<n> iommu=<on|off> sent=<n> received=<n> lost=<n> corrupted=<n>
#             p50_us=<x> p99_us=<x> rxq_min=<fewest frames any receive queue of l2fwd got>
#
# --no-iommu: the VM has no vIOMMU (run-vm.sh --no-iommu: no intel-iommu, NIC0 iommu_platform=off,
# NIC1 iommu_platform=on, i.e. offering ACCESS_PLATFORM with no IOMMU behind it); the guest binds
# the NICs to uio_pci_generic and l2fwd runs with --no-iommu (physical-address DMA memory).
#
# Exit 0 only when nothing was lost or corrupted, l2fwd exited cleanly with every mbuf returned,
# and the console shows no IOMMU fault. Logs stay in target/l2fwd-vm/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VM=$HERE/vm
OUT_DIR=${L2FWD_VM_DIR:-$ROOT/target/l2fwd-vm}
TRIPLE=x86_64-unknown-linux-gnu

# QEMU's NIC sockets get this much buffer (run-vm.sh --sock-buf): the system default (208 KiB)
# overflowed during host stalls of about 100 ms on the shared build machines, losing frames before
# they reached the guest.
SOCK_BUF=$((4 << 20))
# The rate is per direction. Measured on the 2-core build machines (TCG, shared with other work),
# 100000 frames each way, with these socket buffers: lossless at 5000, 10000, 15000 and 25000 pps
# (25000 with p99 latency at 13 ms: near saturation). Without them, host stalls of ~100 ms lost
# frames even at 5000 pps. 5000 leaves a wide margin for a loaded machine; a run takes about 30 s.
DEFAULT_RATE=5000

usage() {
    cat <<USAGE
usage: $0 [--ring packed|split] [--frames N] [--rate PPS] [--port-base P] [--no-iommu] [--no-build]
  Boot the harness VM, run l2fwd on its two virtio-net NICs (VFIO), send N frames each way from
  the host with vm-peer and check every one. Last line: RESULT ring=.. sent=.. received=.. lost=..
  corrupted=.. p50_us=.. p99_us=..; exit 0 only for a clean run.
  --ring packed|split   virtqueue layout the NICs offer (default packed)
  --frames N            data frames per direction (default 100000)
  --rate PPS            frames per second per direction (default $DEFAULT_RATE)
  --port-base P         host UDP ports P, P+1, P+10, P+11 on 127.0.0.1 (default 43001)
  --no-iommu            a VM without a vIOMMU: NICs on uio_pci_generic, l2fwd --no-iommu
                        (physical addresses); RESULT says iommu=off
  --no-iommu-vfio       the same with the NICs on vfio-pci in VFIO's no-IOMMU mode (builds the
                        guest's vfio module with it once: scripts/vm/build-vfio-noiommu.sh)
  --l2fwd-args 'ARGS'   extra l2fwd options, after --config (e.g. '--cores 0,1 --idle-sleep-us 20')
  --queues N            N queue pairs per NIC over multi-queue taps in a network namespace (needs
                        root; iproute2); vm-peer sends IPv4/UDP frames of --flows flows
  --flows N             flows with --queues (default 256)
  --rss-check           with --queues: port 1 gets a reversed RSS table at run time, and the frames
                        of every receive queue must equal vm-peer's Toeplitz prediction exactly
  --link-flap           after half the frames, take NIC1's link down and up with QEMU's monitor
                        (set_link): l2fwd must report both changes, and the rest must pass
  --filters             receive filters, frame by frame: promiscuous mode off, a MAC table and a VLAN
                        filter on port 0, all-multicast on port 1; vm-peer sends frame classes the
                        device must pass (own, table and broadcast addresses, allowed VLAN) or drop
                        (foreign unicast, other multicast without all-multicast, other VLANs)
  --tcp                 TCP between two network namespaces through l2fwd instead of vm-peer's
                        frames: offloads on and off, MTU 9000, a file checked by sha256, iperf3
                        (scripts/vm/l2fwd-tcp.sh; needs root). RESULT tcp ...
  --kernel-bridge       with --tcp: also the guest kernel's bridge over the same NICs, same boot
  --tcp-seconds N       with --tcp: iperf3 seconds per measurement (default 5)
  --no-build            use the binaries already built (target/$TRIPLE/ci/l2fwd, target/ci/vm-peer)
  environment: VM_ACCEL=tcg|kvm|auto (run-vm.sh), L2FWD_VM_DIR (logs; default target/l2fwd-vm)
USAGE
}

RING=packed
FRAMES=100000
RATE=$DEFAULT_RATE
PORT_BASE=43001
BUILD=1
L2FWD_ARGS=""
LINK_FLAP=0
FILTERS=0
QUEUES=""
FLOWS=256
RSS_CHECK=0
IOMMU=on
NOIOMMU_BIND=uio
TCP=0
KERNEL_BRIDGE=0
TCP_SECONDS=5
while [ $# -gt 0 ]; do
    case "$1" in
        --ring) RING=${2:-}; shift ;;
        --frames) FRAMES=${2:-}; shift ;;
        --rate) RATE=${2:-}; shift ;;
        --port-base) PORT_BASE=${2:-}; shift ;;
        --l2fwd-args) L2FWD_ARGS=${2?--l2fwd-args needs options}; shift ;;
        --queues) QUEUES=${2:-}; shift ;;
        --flows) FLOWS=${2:-}; shift ;;
        --rss-check) RSS_CHECK=1 ;;
        --link-flap) LINK_FLAP=1 ;;
        --filters) FILTERS=1 ;;
        --tcp) TCP=1 ;;
        --kernel-bridge) KERNEL_BRIDGE=1 ;;
        --tcp-seconds) TCP_SECONDS=${2:-}; shift ;;
        --no-build) BUILD=0 ;;
        --no-iommu) IOMMU=off ;;
        --no-iommu-vfio) IOMMU=off; NOIOMMU_BIND=vfio ;;
        -h|--help) usage; exit 0 ;;
        *) echo "l2fwd-vm: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$RING" in packed|split) ;; *) echo "l2fwd-vm: --ring must be packed or split" >&2; exit 2 ;; esac
[[ "$FRAMES" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-vm: --frames must be a positive number" >&2; exit 2; }
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-vm: --rate must be a positive number" >&2; exit 2; }
if [ -n "$QUEUES" ]; then
    if ! [[ "$QUEUES" =~ ^[1-9][0-9]*$ ]] || [ "$QUEUES" -gt 64 ]; then
        echo "l2fwd-vm: --queues must be 1..64" >&2
        exit 2
    fi
    [[ "$FLOWS" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-vm: --flows must be a positive number" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || { echo "l2fwd-vm: --queues needs root (network namespace, taps, AF_PACKET)" >&2; exit 2; }
fi
if [ "$LINK_FLAP" -eq 1 ] && [ "$RSS_CHECK" -eq 1 ]; then
    echo "l2fwd-vm: --link-flap and --rss-check are separate runs (the prediction covers one vm-peer run)" >&2
    exit 2
fi
if [ "$KERNEL_BRIDGE" -eq 1 ] && [ "$TCP" -eq 0 ]; then
    echo "l2fwd-vm: --kernel-bridge goes with --tcp" >&2
    exit 2
fi
if [ "$TCP" -eq 1 ] && { [ -n "$QUEUES" ] || [ "$LINK_FLAP" -eq 1 ] || [ "$FILTERS" -eq 1 ] || [ "$IOMMU" = off ]; }; then
    echo "l2fwd-vm: --tcp is a run of its own (no --queues, --link-flap, --filters or --no-iommu)" >&2
    exit 2
fi
if [ -z "$QUEUES" ] && [ "$RSS_CHECK" -eq 1 ]; then
    echo "l2fwd-vm: --rss-check needs --queues" >&2
    exit 2
fi
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || [ "$PORT_BASE" -lt 1024 ] || [ "$PORT_BASE" -gt 65000 ]; then
    echo "l2fwd-vm: --port-base must be a port number in 1024..65000" >&2
    exit 2
fi

say() { printf 'l2fwd-vm: %s\n' "$*"; }
started=$SECONDS
mkdir -p "$OUT_DIR"
L2FWD=$ROOT/target/$TRIPLE/ci/l2fwd
VM_PEER=$ROOT/target/ci/vm-peer

# --- 1, 2: tools and binaries ------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
    echo "l2fwd-vm: cargo is not installed: install Rust (rustup) first" >&2
    exit 1
fi
# fetch-guest.sh installs what the VM harness runs on the host (QEMU, cpio, kmod, ...).
"$VM/fetch-guest.sh" >/dev/null
if [ "$BUILD" -eq 1 ]; then
    # shellcheck source=lib/need.sh
    . "$HERE/lib/need.sh"
    # cargo links with cc; the static l2fwd needs libc's static archive (libc6-dev).
    need_commands cc:gcc
    need_packages libc6-dev
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE"; then
        rustup target add "$TRIPLE"
    fi
    say "building l2fwd (static, for the guest) and vm-peer (host)"
    t=$SECONDS
    # --target keeps the static build in target/$TRIPLE, apart from the host build's cache.
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile ci \
        --target "$TRIPLE" -p virtio-pmd-apps --bin l2fwd)
    [ "$TCP" -eq 1 ] || (cd "$ROOT" && cargo build --quiet --profile ci -p vm-peer --bin vm-peer)
    say "built in $((SECONDS - t)) s"
fi
# --tcp runs no vm-peer: the ends are Linux's TCP stacks.
BINS=("$L2FWD")
[ "$TCP" -eq 1 ] || BINS+=("$VM_PEER")
for bin in "${BINS[@]}"; do
    [ -x "$bin" ] || { echo "l2fwd-vm: missing $bin (run without --no-build)" >&2; exit 1; }
done

# shellcheck source=lib/need.sh
. "$HERE/lib/need.sh"
[ -z "$QUEUES" ] || need_commands ip:iproute2
[ "$LINK_FLAP" -eq 0 ] || need_commands python3:python3-minimal

# --- 3: the guest image ------------------------------------------------------------------------
INITRD=$OUT_DIR/l2fwd.cpio.gz
# VFIO's no-IOMMU mode needs the guest's vfio module built with it (once; cached in target/vm).
[ "$NOIOMMU_BIND" = vfio ] && "$VM/build-vfio-noiommu.sh"
"$VM/mkinitramfs.sh" "$INITRD" "$L2FWD" >/dev/null
if [ "$TCP" -eq 1 ]; then
    TCP_ARGS=(--initrd "$INITRD" --ring "$RING" --seconds "$TCP_SECONDS" --out "$OUT_DIR")
    [ "$KERNEL_BRIDGE" -eq 0 ] || TCP_ARGS+=(--kernel-bridge)
    exec "$VM/l2fwd-tcp.sh" "${TCP_ARGS[@]}"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/l2fwd-vm.XXXXXX")
VMPID=""
TAILPID=""
NETNS=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$TAILPID" ] && kill -0 "$TAILPID" 2>/dev/null; then kill "$TAILPID" 2>/dev/null || true; fi
    if [ -n "$VMPID" ] && kill -0 "$VMPID" 2>/dev/null; then kill "$VMPID" 2>/dev/null || true; fi
    if [ -n "$NETNS" ]; then
        # QEMU (run-vm.sh's child) must be gone before its namespace goes.
        [ -z "$VMPID" ] || wait "$VMPID" 2>/dev/null || true
        ip netns del "$NETNS" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the multi-queue backend: a namespace for QEMU and its taps --------------------------------
TAPS=(mq-t0 mq-t1)
IN_NS=()
VM_NET=(--port-base "$PORT_BASE" --sock-buf "$SOCK_BUF")
PEER_NET=(--port-base "$PORT_BASE")
RSS_TABLE1=""
# Receive filters and RSS settings of each port: options of its device string (the ports then
# come on l2fwd's command line, replacing the config file's).
PORT0_OPTS=""
PORT1_OPTS=""
if [ -n "$QUEUES" ]; then
    NETNS=mq-l2fwd-$$
    ip netns add "$NETNS"
    IN_NS=(ip netns exec "$NETNS")
    # Nothing but the test frames on the taps: no IPv6 (router solicitations, MLD reports).
    "${IN_NS[@]}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    VM_NET=(--taps "${TAPS[0]},${TAPS[1]}" --queues "$QUEUES")
    PEER_NET=(--tap "${TAPS[0]},${TAPS[1]}" --flows "$FLOWS" --rss-queues "$QUEUES")
    # 2 ports x N pairs x 2 rings x 256 descriptors, plus the thread caches.
    # Per-queue ring sizes: pair i gets 256, 128, 64, 256, .. descriptors.
    RING_SIZES=$(for ((i = 0; i < QUEUES; i++)); do echo $((256 >> (i % 3))); done | paste -sd,)
    L2FWD_ARGS="--queues $QUEUES --ring-sizes $RING_SIZES --pool-size $((2048 * QUEUES + 4096)) $L2FWD_ARGS"
    if [ "$RSS_CHECK" -eq 1 ]; then
        RSS_TABLE1=$(seq $((QUEUES - 1)) -1 0 | paste -sd,)
        # And another key: the 40-byte "symmetric" key (0x6d5a repeated), known from RSS papers.
        RSS_KEY1=$(printf '6d5a%.0s' $(seq 20))
        PORT1_OPTS=",rss_table=[$RSS_TABLE1],rss_key=$RSS_KEY1"
        L2FWD_ARGS="$L2FWD_ARGS --hash-to-src-mac"
        PEER_NET+=(--rss-table "1=$RSS_TABLE1" --rss-key "1=$RSS_KEY1" --check-hash)
    fi
fi

if [ "$FILTERS" -eq 1 ]; then
    L2FWD_ARGS="--promisc=false $L2FWD_ARGS"
    PORT0_OPTS=",mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],vlans=[100]"
    PORT1_OPTS="$PORT1_OPTS,mac_table=[02:00:00:00:aa:02],allmulti=on"
    # PORT,NAME,DST,VLAN,verdict: what the device must do with frames sent into each port.
    for class in \
        0,own,52:54:00:00:00:01,-,pass 0,foreign-unicast,02:00:00:00:bb:01,-,drop \
        0,table-unicast,02:00:00:00:aa:01,-,pass 0,table-multicast,01:00:5e:00:00:01,-,pass \
        0,other-multicast,01:00:5e:00:00:02,-,drop 0,broadcast,ff:ff:ff:ff:ff:ff,-,pass \
        0,vlan-100-allowed,52:54:00:00:00:01,100,pass 0,vlan-200-filtered,52:54:00:00:00:01,200,drop \
        1,own,52:54:00:00:00:02,-,pass 1,foreign-unicast,02:00:00:00:bb:02,-,drop \
        1,table-unicast,02:00:00:00:aa:02,-,pass 1,other-multicast-allmulti,01:00:5e:00:00:02,-,pass \
        1,vlan-100-no-filter-entry,52:54:00:00:00:02,100,drop; do
        PEER_NET+=(--class "$class")
    done
fi

# The guest: l2fwd in the background; a watcher sends it SIGINT when the host says so over the
# control line. If l2fwd exits on its own (an error), the guest finishes at once.
VM_ARGS=()
if [ "$IOMMU" = off ]; then
    L2FWD_ARGS="--no-iommu $L2FWD_ARGS"
    VM_ARGS=(--no-iommu)
    [ "$NOIOMMU_BIND" = vfio ] && VM_ARGS=(--no-iommu-vfio)
fi
if [ -n "$PORT0_OPTS$PORT1_OPTS" ]; then
    L2FWD_ARGS="$L2FWD_ARGS pci:0000:00:03.0$PORT0_OPTS pci:0000:00:04.0$PORT1_OPTS"
fi
printf 'L2FWD_ARGS=%q\n' "$L2FWD_ARGS" >"$WORK/guest.sh"
cat >>"$WORK/guest.sh" <<'GUEST'
# shellcheck disable=SC2086 # word splitting of the extra options is intended (no globbing:
# device strings have brackets)
set -f
l2fwd --config /etc/l2fwd-vm.toml $L2FWD_ARGS &
set +f
pid=$!
(line=$(vm-wait-host 3600); echo "guest: host says '$line': SIGINT to l2fwd"; kill -INT "$pid") &
wait "$pid"
rc=$?
echo "L2FWD-EXIT $rc"
exit "$rc"
GUEST

# --- 4: boot, wait for l2fwd -------------------------------------------------------------------
TAG=$RING
[ "$IOMMU" = off ] && TAG=$RING-noiommu-$NOIOMMU_BIND
LOG=$OUT_DIR/console-$TAG.log
PEER_OUT=$OUT_DIR/vm-peer-$TAG.txt
VM_OUT=$OUT_DIR/run-vm-$TAG.txt
# Boot and start-up take about 10 s under TCG; the traffic about FRAMES/RATE s plus probing
# and draining; shutdown a few seconds.
TIMEOUT=$((180 + 2 * FRAMES / RATE))
say "ring=$RING queues=${QUEUES:-1} iommu=$IOMMU frames=$FRAMES per direction rate=$RATE pps per direction; console $LOG"
# A log left by an earlier run must not satisfy the waits below (run-vm.sh truncates it only
# after its own set-up).
rm -f "$LOG" "$PEER_OUT"
t_boot=$SECONDS
"${IN_NS[@]}" "$VM/run-vm.sh" "${VM_ARGS[@]}" --initrd "$INITRD" --ring "$RING" "${VM_NET[@]}" --ctl "$WORK/ctl" --monitor "$WORK/monitor.sock" \
    --log "$LOG" --timeout "$TIMEOUT" --quiet --script "$WORK/guest.sh" \
    --file "$ROOT/config/l2fwd-vm.toml:/etc/l2fwd-vm.toml" >"$VM_OUT" 2>&1 &
VMPID=$!
# Live view of the guest: l2fwd's lines (statistics included) as they reach the console.
tail -n +1 -s 0.2 --pid="$VMPID" -F "$LOG" 2>/dev/null | sed -u 's/\r$//' |
    grep --line-buffered -E '^(VM-READY|VFIO-BOUND|UIO-BOUND|L2FWD|l2fwd|guest:|VM-INIT-ERROR)|panicked|ERROR|WARN' |
    sed -u 's/^/  guest| /' &
TAILPID=$!

FAIL=()
if [ -n "$QUEUES" ]; then
    # QEMU makes the taps as it starts; they carry frames once up.
    for tap in "${TAPS[@]}"; do
        for _ in $(seq 300); do
            "${IN_NS[@]}" ip link set "$tap" up 2>/dev/null && break
            sleep 0.1
        done
        "${IN_NS[@]}" ip link show "$tap" >/dev/null 2>&1 || FAIL+=("QEMU made no tap $tap")
    done
fi
if [ "${#FAIL[@]}" -eq 0 ] && ! "$VM/wait-for.sh" "$LOG" '^L2FWD-READY' 180; then
    FAIL+=("l2fwd never got ready")
else
    say "l2fwd ready $((SECONDS - t_boot)) s after boot started; sending traffic"
fi

# --- 5: traffic --------------------------------------------------------------------------------
# One vm-peer run of $1 frames per direction, its output appended to $PEER_OUT.
run_peer() {
    local rc=0
    "${IN_NS[@]}" "$VM_PEER" run "${PEER_NET[@]}" --frames "$1" --rate "$RATE" --ready-timeout 60 \
        --expect-dst-mac-0to1 02:00:00:00:00:01 --expect-src-mac-0to1 52:54:00:00:00:02 \
        --expect-dst-mac-1to0 02:00:00:00:00:00 --expect-src-mac-1to0 52:54:00:00:00:01 \
        2> >(sed -u 's/^/  peer | /' >&2) | tee -a "$PEER_OUT" | sed -u 's/^/  peer | /' || rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || FAIL+=("vm-peer exit $rc (1: loss or corruption; 2: no run)")
}
# Takes NIC1's link down and up again through QEMU's monitor (set_link), each time waiting for
# l2fwd's message about it.
flap_link() {
    local state
    for state in down up; do
        local cmd=on
        [ "$state" = down ] && cmd=off
        t=$SECONDS
        python3 "$VM/monitor.py" "$WORK/monitor.sock" "set_link n1 $cmd" | sed 's/^/  /' ||
            { FAIL+=("QEMU's monitor refused set_link n1 $cmd"); return; }
        if "$VM/wait-for.sh" "$LOG" "^L2FWD-LINK port=1 state=$state t=" 30; then
            say "link down/up: l2fwd reported port 1 $state $((SECONDS - t)) s after set_link n1 $cmd"
        else
            FAIL+=("l2fwd did not report port 1's link $state within 30 s of set_link n1 $cmd")
            return
        fi
    done
}
t_traffic=$SECONDS
if [ "${#FAIL[@]}" -eq 0 ]; then
    if [ "$LINK_FLAP" -eq 1 ]; then
        # Half the frames, the link down and up, then the rest: traffic must resume, lossless.
        run_peer $((FRAMES / 2))
        [ "${#FAIL[@]}" -eq 0 ] && flap_link
        [ "${#FAIL[@]}" -eq 0 ] && run_peer $((FRAMES - FRAMES / 2))
    else
        run_peer "$FRAMES"
    fi
fi
t_traffic=$((SECONDS - t_traffic))

# --- 6: stop l2fwd, collect its summary -------------------------------------------------------
if kill -0 "$VMPID" 2>/dev/null; then
    timeout 5 sh -c "echo stop >'$WORK/ctl.in'" || true
fi
vm_rc=0
wait "$VMPID" || vm_rc=$?
VMPID=""
wait "$TAILPID" 2>/dev/null || true
TAILPID=""
CONSOLE=$WORK/console.txt
tr -d '\r' <"$LOG" >"$CONSOLE"
case "$vm_rc" in
    0) ;;
    126) FAIL+=("IOMMU fault or kernel oops on the console (run-vm.sh exit 126)") ;;
    124) FAIL+=("the VM timed out (run-vm.sh exit 124)") ;;
    125) FAIL+=("the guest crashed: no VMCMD-EXIT (run-vm.sh exit 125)") ;;
    254) FAIL+=("guest set-up failed: $(grep -m1 '^VM-INIT-ERROR' "$CONSOLE" || echo '?')") ;;
    *) FAIL+=("l2fwd exit $vm_rc: $(grep -m1 '^l2fwd: error' "$CONSOLE" || echo 'see the console')") ;;
esac
# Frames per receive queue of l2fwd, and vm-peer's RSS prediction of them.
RXQ=$WORK/rxq.txt
sed -n 's/^L2FWD-RXQ port=\([0-9]*\) queue=\([0-9]*\) rx=\([0-9]*\) .*/\1 \2 \3/p' "$CONSOLE" >"$RXQ"
rxq_min=$(awk 'NR == 1 || $3 < min { min = $3 } END { print (NR ? min : 0) }' "$RXQ")
[ -s "$RXQ" ] || FAIL+=("l2fwd printed no L2FWD-RXQ lines")
if [ -n "$QUEUES" ] && [ "$(wc -l <"$RXQ")" -ne $((2 * QUEUES)) ]; then
    FAIL+=("l2fwd reported $(wc -l <"$RXQ") receive queues, not 2 x $QUEUES")
fi
if [ -n "$QUEUES" ] && [ "$rxq_min" -eq 0 ]; then
    FAIL+=("a receive queue of l2fwd got no frame (rxq_min=0): the device did not spread the flows")
fi
RSS_TABLE=$WORK/rss.txt
if [ "$RSS_CHECK" -eq 1 ]; then
    sed -n 's/^RSS-PREDICT port=\([0-9]*\) queue=\([0-9]*\) frames=\([0-9]*\)$/\1 \2 \3/p' "$PEER_OUT" >"$WORK/predicted.txt"
    # port queue predicted seen
    join -j1 <(awk '{ print $1 ":" $2, $3 }' "$WORK/predicted.txt" | sort) \
        <(awk '{ print $1 ":" $2, $3 }' "$RXQ" | sort) | tr ':' ' ' | sort -n -k1,1 -k2,2 >"$RSS_TABLE"
    [ "$(wc -l <"$RSS_TABLE")" -eq $((2 * QUEUES)) ] || FAIL+=("RSS: predictions and l2fwd's queues do not pair up")
    awk '$3 != $4 { bad = 1 } END { exit bad }' "$RSS_TABLE" ||
        FAIL+=("RSS: frames per receive queue differ from the Toeplitz prediction (see below)")
fi
if [ "$FILTERS" -eq 1 ]; then
    grep -q '^FILTER ' "$PEER_OUT" || FAIL+=("vm-peer printed no FILTER lines")
    ! grep -q '^FILTER .* WRONG$' "$PEER_OUT" || FAIL+=("receive filters: a frame class was not passed or dropped as expected")
    [ "$(grep -c '^L2FWD-FILTER ' "$CONSOLE")" -eq 2 ] || FAIL+=("l2fwd did not set both ports' receive filters")
fi
grep -q '^L2FWD-POOL .* in_use=0 ' "$CONSOLE" || FAIL+=("l2fwd did not report every mbuf back in the pool")
grep -q '^L2FWD-DONE clean' "$CONSOLE" || FAIL+=("l2fwd did not finish cleanly")
if [ "$IOMMU" = off ] && [ "$(grep -c 'without an IOMMU: the device can read and write ALL' "$CONSOLE")" -ne 2 ]; then
    FAIL+=("l2fwd did not warn, once per port, that the devices can reach all memory")
fi
if grep -E 'vtd_iommu_translate|DMAR:.*([Ff]ault|\[DMA (Read|Write))' "$CONSOLE" >/dev/null; then
    FAIL+=("IOMMU faults on the console")
fi

# --- 7: summary --------------------------------------------------------------------------------
echo
say "summary (ring=$RING queues=${QUEUES:-1} iommu=$IOMMU, $FRAMES frames per direction at $RATE pps; traffic ${t_traffic} s, total $((SECONDS - started)) s)"
grep -E '^(L2FWD-PORT|L2FWD-LINK|L2FWD-FILTER|L2FWD-RSS|L2FWD-SUMMARY|L2FWD-RXQ|L2FWD-POOL|L2FWD-DONE|L2FWD-EXIT|l2fwd: error)' "$CONSOLE" | sed 's/^/  /' || true
grep -E '^(dir=|FILTER |elapsed_s=)' "$PEER_OUT" 2>/dev/null | sed 's/^/  /' || true
tail -n 2 "$VM_OUT" | sed 's/^/  /'
if [ -s "$RSS_TABLE" ]; then
    say "RSS: frames per receive queue, predicted by vm-peer's Toeplitz hash (key, table) vs. l2fwd's counters"
    awk -v t1="$RSS_TABLE1" '{ printf "  port %s rxq %s: predicted %s seen %s %s%s\n", $1, $2, $3, $4,
        ($3 == $4 ? "ok" : "MISMATCH"), ($1 == 1 ? " (table " t1 " and key changed at run time)" : " (default key and table)") }' "$RSS_TABLE"
fi
say "logs: $OUT_DIR"
# The runs' counters summed, their latencies the larger of theirs.
result=$(awk '/^RESULT / {
        n++
        for (i = 2; i <= NF; i++) {
            split($i, kv, "=")
            if (kv[1] ~ /_us$/) { if (kv[2] + 0 > v[kv[1]] + 0) v[kv[1]] = kv[2] } else v[kv[1]] += kv[2]
        }
    }
    END { if (n) printf "RESULT sent=%d received=%d lost=%d corrupted=%d p50_us=%s p99_us=%s\n",
        v["sent"], v["received"], v["lost"], v["corrupted"], v["p50_us"], v["p99_us"] }' "$PEER_OUT" 2>/dev/null || true)
if [ -z "$result" ]; then
    FAIL+=("vm-peer printed no RESULT")
    result="RESULT sent=0 received=0 lost=0 corrupted=0 p50_us=0 p99_us=0"
fi
if [ "${#FAIL[@]}" -gt 0 ]; then
    for f in "${FAIL[@]}"; do say "FAIL: $f"; done
else
    say "PASS"
fi
echo "RESULT ring=$RING queues=${QUEUES:-1} iommu=$IOMMU ${result#RESULT } rxq_min=$rxq_min"
[ "${#FAIL[@]}" -eq 0 ]
