#!/bin/bash
# l2fwd-errors.sh: l2fwd's error paths on real devices, in one boot of the VM harness.
#
# The guest starts with NIC0 (0000:00:03.0) bound to vfio-pci and NIC1 (0000:00:04.0) left on no
# driver (vmskip), and runs l2fwd into each error, expecting a clear message and a non-zero exit:
#   missing-bdf    a PCI address with no device behind it (after NIC0 was opened: exit 1)
#   bad-bdf        a malformed PCI address (usage: exit 2)
#   unknown-key    a config file with a key l2fwd does not know (names key and file: exit 2)
#   no-driver      NIC1 on no driver (exit 1)
#   virtio-pci     NIC1 given to the kernel's virtio-pci driver (exit 1)
#                  ... then NIC1 is bound to vfio-pci (scripts/bind-vfio.sh)
#   ring-size      a ring size the device refuses (configuration: exit 2)
#   no-hugepages   huge_pages = "required" with no huge pages reserved (exit 1)
#   refused-command  a control command the device answers with VIRTIO_NET_ERR: the port option
#                  rx_offloads=off sends VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, which QEMU refuses
#                  on a backend without a virtio-net header (a UDP socket); the error names the
#                  command (exit 1)
#   too-many-pairs NIC0 (mq=on on a one-queue UDP backend: max_virtqueue_pairs 1) with --queues 2
#   no-ctrl-queue  NIC2 (0000:00:05.0, ctrl_vq=off, never forwarded) with --queues 2: the device
#                  offers no control queue (configuration: exit 2)
#                  ... each of the three with L2FWD-POOL showing every mbuf back
#   group-busy     a second l2fwd on the NICs while a first one (the holder) runs (exit 1); the
#                  holder then stops on SIGTERM, cleanly, with every mbuf back in its pool
# and last, on the same devices in the same boot, a normal run with traffic from the host
# (vm-peer, both ways, every frame checked), stopped with SIGINT over the control line.
#
# Then a second boot, without a vIOMMU (run-vm.sh --no-iommu: NIC0 on uio_pci_generic, NIC1 left
# out of /init's binding):
#   no-group       l2fwd over VFIO: NIC0 has no IOMMU group; the error says to use
#                  uio_pci_generic and --no-iommu (exit 1)
#   uio-virtio-pci l2fwd --no-iommu with NIC1 bound to neither vfio-pci nor uio_pci_generic: on
#                  virtio-pci (loading uio_pci_generic with loadmod loads virtio_pci before it,
#                  which takes the unbound NIC1) (exit 1)
#                  ... then NIC1 is bound to uio_pci_generic (scripts/bind-vfio.sh --uio)
#   pa-no-hugepages  --no-iommu with no huge pages reserved (exit 1)
#   pa-hugepages-short  --no-iommu with huge pages for the pool and port 0 only: port 1 fails
#                  after port 0 posted its receive buffers; every mbuf back in the pool (exit 1)
# and a final run with traffic, split ring, in physical-address mode.
#
# The host checks every expected message and exit code on the console, and that the console has
# no IOMMU fault (run-vm.sh). Exit 0 when every check passed. Logs in target/l2fwd-errors/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT_DIR=${L2FWD_ERRORS_DIR:-$ROOT/target/l2fwd-errors}
TRIPLE=x86_64-unknown-linux-gnu
L2FWD=$ROOT/target/$TRIPLE/ci/l2fwd
VM_PEER=$ROOT/target/ci/vm-peer

usage() {
    cat <<USAGE
usage: $0 [--port-base P] [--frames N] [--rate PPS] [--no-build]
  Boot the harness VM once and run l2fwd into its error paths, then a clean run with traffic.
  --port-base P   host UDP ports on 127.0.0.1 (default 44001)
  --frames N      frames per direction of the final run (default 2000)
  --rate PPS      their rate per direction (default 2000)
  --no-build      use target/$TRIPLE/ci/l2fwd and target/ci/vm-peer as they are
USAGE
}

PORT_BASE=44001
FRAMES=2000
RATE=2000
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --port-base) PORT_BASE=${2:-}; shift ;;
        --frames) FRAMES=${2:-}; shift ;;
        --rate) RATE=${2:-}; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "l2fwd-errors: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for v in "$PORT_BASE" "$FRAMES" "$RATE"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "l2fwd-errors: '$v' is not a positive number" >&2; exit 2; }
done

say() { printf 'l2fwd-errors: %s\n' "$*"; }
started=$SECONDS
mkdir -p "$OUT_DIR"
"$HERE/fetch-guest.sh" >/dev/null
if [ "$BUILD" -eq 1 ]; then
    # shellcheck source=../lib/need.sh
    . "$ROOT/scripts/lib/need.sh"
    # cargo links with cc; the static l2fwd needs libc's static archive (libc6-dev).
    need_commands cc:gcc
    need_packages libc6-dev
    say "building l2fwd (static) and vm-peer"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile ci \
        --target "$TRIPLE" -p virtio-pmd-apps --bin l2fwd)
    (cd "$ROOT" && cargo build --quiet --profile ci -p vm-peer --bin vm-peer)
fi
for bin in "$L2FWD" "$VM_PEER"; do
    [ -x "$bin" ] || { echo "l2fwd-errors: missing $bin (run without --no-build)" >&2; exit 1; }
done
INITRD=$OUT_DIR/l2fwd.cpio.gz
"$HERE/mkinitramfs.sh" "$INITRD" "$L2FWD" >/dev/null

WORK=$(mktemp -d "${TMPDIR:-/tmp}/l2fwd-errors.XXXXXX")
VMPID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$VMPID" ] && kill -0 "$VMPID" 2>/dev/null; then kill "$VMPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf 'ring = "packed"\nburts = 32\nports = ["0000:00:03.0"]\n' >"$WORK/l2fwd-bad.toml"

# What both boots' guest scripts start with: the devices' names and the case runner.
cat >"$WORK/prelude.sh" <<'GUEST'
fail=0
A=0000:00:03.0
B=0000:00:04.0
CFG=/etc/l2fwd-vm.toml
# case NAME WANT_RC COMMAND...: run it, show its output, check the exit code.
case_() {
    name=$1 want=$2
    shift 2
    echo "== CASE $name: $*"
    "$@" >/tmp/case.out 2>&1
    rc=$?
    sed 's/^/   /' /tmp/case.out
    if [ "$rc" -eq "$want" ]; then echo "== CASE-OK $name rc=$rc"; else echo "== CASE-FAIL $name rc=$rc wanted $want"; fail=1; fi
}
drv() { d=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$d" || echo "no driver"; }
# final_run L2FWD-ARGS...: last, the same devices still work: l2fwd runs until the host, which
# sends traffic once it sees L2FWD-READY, says it is done; then the boot's verdict.
final_run() {
    echo "guest: final run on $A ($(drv $A)) and $B ($(drv $B))${1:+, $*}"
    l2fwd --config $CFG "$@" &
    pid=$!
    (line=$(vm-wait-host 600); echo "guest: host says '$line': SIGINT to l2fwd"; kill -INT "$pid") &
    wait $pid
    rc=$?
    if [ $rc -eq 0 ]; then echo "== CASE-OK final-run rc=$rc"; else echo "== CASE-FAIL final-run rc=$rc"; fail=1; fi
    echo "L2FWD-ERRORS-GUEST fail=$fail"
    exit $fail
}

GUEST

cp "$WORK/prelude.sh" "$WORK/guest.sh"
cat >>"$WORK/guest.sh" <<'GUEST'
echo "guest: $A on $(drv $A), $B on $(drv $B)"
case_ missing-bdf 1 l2fwd --stats-interval 0 $A 0000:00:0a.0
case_ bad-bdf 2 l2fwd 00:99.0
case_ unknown-key 2 l2fwd --config /etc/l2fwd-bad.toml
case_ no-driver 1 l2fwd --config $CFG
loadmod virtio_pci
echo "guest: after loadmod virtio_pci: $A on $(drv $A), $B on $(drv $B)"
case_ virtio-pci 1 l2fwd --config $CFG
sh /bin/bind-vfio.sh $B || fail=1
echo "guest: $A on $(drv $A), $B on $(drv $B)"
case_ ring-size 2 l2fwd --config $CFG --ring-size 4096
pages=$(cat /proc/sys/vm/nr_hugepages)
echo 0 >/proc/sys/vm/nr_hugepages
case_ no-hugepages 1 l2fwd --config $CFG --huge-pages required
echo "$pages" >/proc/sys/vm/nr_hugepages
echo "guest: huge pages back to $(cat /proc/sys/vm/nr_hugepages)"
# The device's refusals, each with the pool checked after it: POOL-OK when the case's output has
# l2fwd's pool line with every mbuf back.
C=0000:00:05.0
pool_ok() {
    if grep -q '^L2FWD-POOL .* in_use=0 .*every mbuf is back in the pool' /tmp/case.out; then echo "== POOL-OK $1"; fi
}
case_ refused-command 1 l2fwd --stats-interval 0 --duration 1 pci:$A,rx_offloads=off
pool_ok refused-command
case_ too-many-pairs 1 l2fwd --stats-interval 0 --queues 2 $A
pool_ok too-many-pairs
case_ no-ctrl-queue 2 l2fwd --stats-interval 0 --queues 2 $C
pool_ok no-ctrl-queue

# group-busy: a holder l2fwd on both NICs, a second one must fail; then the holder stops on SIGTERM.
l2fwd --config $CFG --stats-interval 0 >/tmp/holder.out 2>&1 &
holder=$!
i=0
while ! grep -q '^L2FWD-READY' /tmp/holder.out && [ $i -lt 300 ] && kill -0 $holder 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
case_ group-busy 1 l2fwd --config $CFG
kill -TERM $holder
wait $holder
rc=$?
sed 's/^/   holder| /' /tmp/holder.out
if [ $rc -eq 0 ] && grep -q '^L2FWD-DONE clean' /tmp/holder.out; then echo "== CASE-OK holder-sigterm rc=$rc"; else echo "== CASE-FAIL holder-sigterm rc=$rc"; fail=1; fi

final_run
GUEST

# name|regex that must be on the console
# shellcheck disable=SC2034 # read by boot through a nameref
CHECKS=(
    "missing-bdf|^   l2fwd: error: port 1: PCI device 0000:00:0a\.0 not found"
    "bad-bdf|^   l2fwd: error: port '00:99\.0': '00:99\.0' is not a PCI address"
    "unknown-key|^   l2fwd: error: config file /etc/l2fwd-bad\.toml: TOML parse error"
    "unknown-key|unknown field .burts."
    "no-driver|^   l2fwd: error: port 1: PCI device 0000:00:04\.0 is not bound to vfio-pci \(no driver bound\)"
    "virtio-pci|^   l2fwd: error: port 1: PCI device 0000:00:04\.0 is not bound to vfio-pci \(bound to virtio-pci\)"
    "ring-size|^   l2fwd: error: port 0 \(0000:00:03\.0\): .*refused ring size 4096"
    "no-hugepages|^   l2fwd: error: .*huge pages"
    "group-busy|^   l2fwd: error: port 0: IOMMU group [0-9]+ of PCI device 0000:00:03\.0 is in use"
    "refused-command|^   l2fwd: error: .*receive offloads: .*the device refused VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET"
    "too-many-pairs|^   l2fwd: error: .*2 queue pairs asked for, but the device's max_virtqueue_pairs is lower: ask for at most 1"
    "no-ctrl-queue|^   l2fwd: error: port 0 \(0000:00:05\.0\): .*2 queue pairs asked for.*offers no control queue .*ctrl_vq=on"
    "refused-command|^== POOL-OK refused-command"
    "too-many-pairs|^== POOL-OK too-many-pairs"
    "no-ctrl-queue|^== POOL-OK no-ctrl-queue"
    "holder-sigterm|^   holder\| L2FWD-POOL .* in_use=0 .*every mbuf is back in the pool"
    "holder-sigterm|^   holder\| L2FWD-DONE clean"
    "final-run|^L2FWD-POOL .* in_use=0 .*every mbuf is back in the pool"
    "final-run|^L2FWD-DONE clean"
)
CASES="missing-bdf bad-bdf unknown-key no-driver virtio-pci ring-size no-hugepages refused-command too-many-pairs
    no-ctrl-queue group-busy holder-sigterm final-run"

# The guest of the boot without a vIOMMU: NIC0 on uio_pci_generic, NIC1 on no driver (vmskip).
cp "$WORK/prelude.sh" "$WORK/guest-noiommu.sh"
cat >>"$WORK/guest-noiommu.sh" <<'GUEST'
echo "guest: no vIOMMU: $A on $(drv $A), $B on $(drv $B)"
case_ no-group 1 l2fwd --config $CFG --stats-interval 0
case_ uio-virtio-pci 1 l2fwd --config $CFG --no-iommu
sh /bin/bind-vfio.sh --uio $B || fail=1
echo "guest: $A on $(drv $A), $B on $(drv $B)"
pages=$(cat /proc/sys/vm/nr_hugepages)
echo 0 >/proc/sys/vm/nr_hugepages
case_ pa-no-hugepages 1 l2fwd --config $CFG --no-iommu
# One huge page for a 512-mbuf pool and two for port 0 (its rings, its control queue): port 1
# finds none, after port 0 posted its receive buffers.
echo 3 >/proc/sys/vm/nr_hugepages
case_ pa-hugepages-short 1 l2fwd --config $CFG --no-iommu --pool-size 512 --pool-cache 64
echo "$pages" >/proc/sys/vm/nr_hugepages
echo "guest: huge pages back to $(cat /proc/sys/vm/nr_hugepages)"
final_run --no-iommu
GUEST
# shellcheck disable=SC2034 # read by boot through a nameref
CHECKS_NOIOMMU=(
    "no-group|^   l2fwd: error: port 0: no usable IOMMU for VFIO: 0000:00:03\.0 has no IOMMU group .*uio_pci_generic.*--no-iommu"
    "uio-virtio-pci|^   l2fwd: error: port 1: PCI device 0000:00:04\.0 is not bound to uio_pci_generic \(bound to virtio-pci\): run .scripts/bind-vfio\.sh --uio 0000:00:04\.0."
    "pa-no-hugepages|^   l2fwd: error: mbuf pool of [0-9]+ mbufs: cannot get [0-9]+ bytes of 2 MiB huge pages"
    "pa-hugepages-short|^   l2fwd: error: port 1 \(0000:00:04\.0\): cannot get [0-9]+ bytes of 2 MiB huge pages"
    "pa-hugepages-short|^   L2FWD-POOL size=512 available=512 in_use=0 .*every mbuf is back in the pool"
    "final-run|WARN.* 0000:00:04\.0: opened through uio_pci_generic without an IOMMU: the device can read and write ALL"
    "final-run|^L2FWD-POOL .* in_use=0 .*every mbuf is back in the pool"
    "final-run|^L2FWD-DONE clean"
)
CASES_NOIOMMU="no-group uio-virtio-pci pa-no-hugepages pa-hugepages-short final-run"

FAIL=()
# boot NAME GUEST CHECKS_ARRAY CASES RUN-VM-ARGS...: one boot running GUEST, traffic from the host
# once the final l2fwd is ready, then every check of CHECKS_ARRAY and every case of CASES on the
# console. Failures go to FAIL, prefixed with NAME.
boot() {
    local name=$1 guest=$2 cases=$4
    local -n checks=$3
    shift 4
    local log=$OUT_DIR/console-$name.log peer_rc=0 vm_rc=0 console=$WORK/console-$name.txt c re case_name
    rm -f "$log"
    say "boot '$name': console $log"
    "$HERE/run-vm.sh" "$@" --initrd "$INITRD" --port-base "$PORT_BASE" --sock-buf $((4 << 20)) \
        --ctl "$WORK/ctl" --log "$log" --timeout 300 --quiet --script "$guest" \
        --file "$ROOT/config/l2fwd-vm.toml:/etc/l2fwd-vm.toml" --file "$WORK/l2fwd-bad.toml:/etc/l2fwd-bad.toml" \
        >"$OUT_DIR/run-vm-$name.txt" 2>&1 &
    VMPID=$!
    if "$HERE/wait-for.sh" "$log" '^L2FWD-READY' 240; then
        say "$name: error cases done, final l2fwd ready: $FRAMES frames each way at $RATE pps"
        "$VM_PEER" run --port-base "$PORT_BASE" --frames "$FRAMES" --rate "$RATE" --ready-timeout 30 --quiet \
            >"$OUT_DIR/vm-peer-$name.txt" 2>&1 || peer_rc=$?
        timeout 5 sh -c "echo stop >'$WORK/ctl.in'" || true
        [ "$peer_rc" -eq 0 ] || FAIL+=("$name final-run: vm-peer exit $peer_rc")
    else
        FAIL+=("$name: the final l2fwd never got ready")
    fi
    wait "$VMPID" || vm_rc=$?
    VMPID=""
    tr -d '\r' <"$log" >"$console"

    echo
    say "$name: console, l2fwd's lines:"
    grep -E '^(== |guest:|   |L2FWD-|l2fwd: error|VFIO-BOUND|VFIO-SKIPPED|UIO-BOUND)' "$console" | grep -v 'L2FWD-STATS' |
        sed 's/^/  /' || true
    for c in "${checks[@]}"; do
        case_name=${c%%|*}
        re=${c#*|}
        if grep -Eq -- "$re" "$console"; then
            say "ok   $name $case_name: /$re/"
        else
            say "MISS $name $case_name: /$re/"
            FAIL+=("$name $case_name: no console line matches /$re/")
        fi
    done
    for case_name in $cases; do
        grep -q "^== CASE-OK $case_name " "$console" ||
            FAIL+=("$name $case_name: $(grep -m1 "^== CASE-FAIL $case_name " "$console" || echo 'never ran')")
    done
    [ "$vm_rc" -eq 0 ] || FAIL+=("$name: run-vm.sh exit $vm_rc (126: IOMMU fault or oops; see $log)")
    tail -n 2 "$OUT_DIR/run-vm-$name.txt" | sed 's/^/  /'
    grep '^RESULT' "$OUT_DIR/vm-peer-$name.txt" 2>/dev/null | sed "s/^/  $name final run: /" || true
}

# NIC2 (0000:00:05.0) only for the no-control-queue cases: without ctrl_vq, and so without the
# features that need it.
boot iommu "$WORK/guest.sh" CHECKS "$CASES" --append "vmskip=0000:00:04.0" --nics 3 \
    --nic-props 0=mq=on \
    --nic-props 2=ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,ctrl_rx_extra=off,ctrl_mac_addr=off,guest_announce=off
boot noiommu "$WORK/guest-noiommu.sh" CHECKS_NOIOMMU "$CASES_NOIOMMU" --no-iommu --ring split --append "vmskip=0000:00:04.0"

say "took $((SECONDS - started)) s; logs in $OUT_DIR"
if [ "${#FAIL[@]}" -gt 0 ]; then
    for f in "${FAIL[@]}"; do say "FAIL: $f"; done
    exit 1
fi
say "PASS: every error path gave its message and exit code; the devices worked afterwards"
