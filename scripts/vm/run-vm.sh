#!/bin/bash
# run-vm.sh: boot the QEMU guest of the VM harness and run one guest command in it.
#
# The machine (docs: shared/docs/vm-harness.md): q35 with an emulated Intel IOMMU (aw-bits=48,
# so IOVA = a user virtual address is valid), N virtio-net-pci functions (modern only,
# iommu_platform=on, packed or split ring), each wired to two host UDP ports with `-netdev dgram`:
# QEMU listens on the NIC's "qemu" port and sends what the guest transmits to its "peer" port;
# every datagram is one raw Ethernet frame. NIC i sits at guest BDF 0000:00:0(3+i).0 with MAC
# 52:54:00:00:00:0(i+1). The guest's /init binds the NICs to vfio-pci, prints VM-READY, runs the
# command and prints VMCMD-EXIT <rc> (see init.sh). With --no-iommu the machine has no vIOMMU:
# no intel-iommu device, NIC0 with iommu_platform=off and the others with iommu_platform=on (a
# device offering ACCESS_PLATFORM without an IOMMU: its addresses are then physical), and /init
# binds the NICs to uio_pci_generic (vmbind=uio).
#
# The console goes to the log file (and to stdout unless --quiet) as it comes, so a caller can run
# this in the background and wait for a marker with wait-for.sh. At the end the log is searched for
# IOMMU faults (DMAR, vtd_iommu_translate) and kernel oopses/panics: any is a failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VM_DIR=${VM_DIR:-$ROOT/target/vm}
QEMU=${QEMU:-qemu-system-x86_64}

usage() {
    cat <<USAGE
usage: $0 [options]
  Boot the harness VM, run a guest command, power off; exit with the command's exit code.
  guest command (one of; default: the initramfs's baked /vmcmd.sh):
    --cmd 'SHELL TEXT'     run this shell text in the guest (becomes /vmcmd.sh)
    --script FILE          run this shell script in the guest (becomes /vmcmd.sh)
    --file SRC[:DST]       also put SRC into the guest at DST (default /<basename>); repeatable
  machine:
    --initrd FILE          base initramfs from mkinitramfs.sh (default: $VM_DIR/initramfs.cpio.gz,
                           built with no extra binaries if missing)
    --ring packed|split    virtqueue format the NICs offer (default packed)
    --nics N               number of virtio-net NICs (default 2)
    --port-base P          NIC i: qemu port P+10i, peer port P+10i+1 (default 40001)
    --ports Q0:P0,Q1:P1..  explicit qemu:peer UDP ports per NIC on 127.0.0.1 (overrides --port-base)
    --taps T0,T1..         wire NIC i to a host tap named Ti (QEMU -netdev tap, vhost=off) instead of
                           UDP ports: the multi-queue backend. QEMU creates the taps in the namespace
                           it runs in: run this under \`ip netns exec NS\` (l2fwd-vm.sh --queues does)
    --queues N             queue pairs per NIC with --taps (multi_queue taps; mq=on, rss=on and
                           hash=on on the NICs, vectors=2N+2); default 1
    --nic-props I=PROPS    more virtio-net-pci properties for NIC I, appended to its -device (e.g.
                           1=host_mtu=9000 or 2=csum=off,guest_csum=off); repeatable
    --sock-buf BYTES       make the NICs' UDP sockets here, with BYTES of receive/send buffer, and
                           hand them to QEMU (qemu-udp-fds.py; needs python3). Default 0: QEMU's
                           own sockets, with the system default buffer (about 208 KiB), which a
                           host stall of a few tens of ms overflows under steady traffic
    --no-iommu             no vIOMMU: NIC0 iommu_platform=off, the others on; NICs bound to
                           uio_pci_generic in the guest (vmbind=uio)
    --no-iommu-vfio        the same, the NICs bound to vfio-pci in VFIO's no-IOMMU mode
                           (vmbind=vfio-noiommu; needs build-vfio-noiommu.sh's module)
    --mem SIZE             guest memory (default 1G)      --smp N   guest cpus (default 2)
    --append 'ARGS'        extra kernel arguments; those without a dot are /init's environment:
                           vmskip=BDF,..  vmbind=none|uio  vmhugepages=N
  run:
    --timeout SECS         wall-clock limit for the whole run (default 120)
    --log FILE             console log (default $VM_DIR/console.log)
    --quiet                do not stream the console to stdout
    --interactive          keep stdin on the console (e.g. --cmd sh to get a shell)
    --monitor SOCK         QEMU's human monitor on the unix socket SOCK (e.g. for \`set_link n1 off\`;
                           NIC i's netdev is n<i>); scripts/vm/monitor.py sends commands to it
    --ctl BASE             a host-to-guest control line: creates FIFOs BASE.in/BASE.out wired to
                           the guest's /dev/ttyS1; the guest waits with \`vm-wait-host [SECS]\`
                           (prints the line), the host writes one with
                           \`timeout 5 sh -c 'echo stop >BASE.in'\`
  environment: VM_ACCEL=tcg|kvm|auto (default tcg; auto probes KVM once and caches the answer),
               QEMU (default qemu-system-x86_64), QEMU_EXTRA_ARGS (appended, split on spaces),
               VM_DIR (default target/vm)
  exit: the guest command's exit code; 254 guest set-up failed (see VM-INIT-ERROR);
        124 timeout; 125 no VMCMD-EXIT line (guest crashed); 126 IOMMU fault or kernel
        oops/panic in the console (even if the command succeeded); 2 usage error
USAGE
}

die() { echo "run-vm: error: $*" >&2; exit 2; }

CMD=""
SCRIPT=""
FILES=()
INITRD=""
RING=packed
NICS=2
PORT_BASE=40001
PORTS=""
MEM=1G
SMP=2
APPEND=""
TIMEOUT=120
LOG=""
QUIET=0
INTERACTIVE=0
CTL=""
SOCK_BUF=0
TAPS=""
QUEUES=1
MONITOR=none
NIC_PROPS=()
NO_IOMMU=0
NO_IOMMU_BIND=uio
while [ $# -gt 0 ]; do
    case "$1" in
        --cmd) CMD=${2?--cmd needs shell text}; shift ;;
        --script) SCRIPT=${2:?--script needs a file}; shift ;;
        --file) FILES+=("${2:?--file needs SRC[:DST]}"); shift ;;
        --initrd) INITRD=${2:?--initrd needs a file}; shift ;;
        --ring) RING=${2:?--ring needs packed or split}; shift ;;
        --nics) NICS=${2:?--nics needs a number}; shift ;;
        --port-base) PORT_BASE=${2:?--port-base needs a port}; shift ;;
        --ports) PORTS=${2:?--ports needs Q0:P0,Q1:P1}; shift ;;
        --mem) MEM=${2:?--mem needs a size}; shift ;;
        --monitor) MONITOR="unix:${2:?--monitor needs a socket path},server=on,wait=off"; shift ;;
        --taps) TAPS=${2:?--taps needs tap names}; shift ;;
        --queues) QUEUES=${2:?--queues needs a number}; shift ;;
        --nic-props) NIC_PROPS+=("${2:?--nic-props needs I=PROPS}"); shift ;;
        --sock-buf) SOCK_BUF=${2:?--sock-buf needs a number of bytes}; shift ;;
        --smp) SMP=${2:?--smp needs a number}; shift ;;
        --no-iommu) NO_IOMMU=1 ;;
        --no-iommu-vfio) NO_IOMMU=1; NO_IOMMU_BIND=vfio-noiommu ;;
        --append) APPEND=${2?--append needs arguments}; shift ;;
        --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift ;;
        --log) LOG=${2:?--log needs a file}; shift ;;
        --quiet) QUIET=1 ;;
        --interactive) INTERACTIVE=1 ;;
        --ctl) CTL=${2:?--ctl needs a path}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-vm: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

case "$RING" in
    packed) PACKED=on ;;
    split) PACKED=off ;;
    *) die "--ring must be packed or split, not '$RING'" ;;
esac
if ! [[ "$NICS" =~ ^[0-8]$ ]]; then die "--nics must be 0..8"; fi
if ! [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]]; then die "--timeout must be a number of seconds"; fi
if ! [[ "$SOCK_BUF" =~ ^[0-9]+$ ]]; then die "--sock-buf must be a number of bytes"; fi
if ! [[ "$QUEUES" =~ ^[1-9][0-9]*$ ]] || [ "$QUEUES" -gt 64 ]; then die "--queues must be 1..64"; fi
TAP_NAMES=()
if [ -n "$TAPS" ]; then
    IFS=, read -r -a TAP_NAMES <<<"$TAPS"
    [ "${#TAP_NAMES[@]}" -eq "$NICS" ] || die "--taps names ${#TAP_NAMES[@]} taps, --nics is $NICS"
    [ "$SOCK_BUF" -eq 0 ] || die "--sock-buf is for UDP sockets, not --taps"
    # Taps are made in this namespace: never in the machine's own (vm-harness.md).
    [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] ||
        die "--taps: run under \`ip netns exec NS\`, so that the taps live in a namespace of their own"
elif [ "$QUEUES" -gt 1 ]; then
    die "--queues needs --taps: a dgram netdev has one queue pair"
fi
[ -z "$CMD" ] || [ -z "$SCRIPT" ] || die "give --cmd or --script, not both"
# NIC i's extra properties, ",PROPS" or empty.
EXTRA_PROPS=()
for spec in "${NIC_PROPS[@]}"; do
    [[ "$spec" =~ ^([0-9])=([a-z0-9_]+=[A-Za-z0-9_.:]+(,[a-z0-9_]+=[A-Za-z0-9_.:]+)*)$ ]] ||
        die "--nic-props '$spec' is not I=PROP=VALUE[,PROP=VALUE..]"
    [ "${BASH_REMATCH[1]}" -lt "$NICS" ] || die "--nic-props '$spec': there is no NIC ${BASH_REMATCH[1]} (--nics $NICS)"
    EXTRA_PROPS[BASH_REMATCH[1]]+=",${BASH_REMATCH[2]}"
done
[ -n "$LOG" ] || LOG=$VM_DIR/console.log

# --- per-NIC UDP ports ------------------------------------------------------------------------
QPORTS=()
PPORTS=()
if [ -n "$PORTS" ]; then
    IFS=, read -r -a pairs <<<"$PORTS"
    [ "${#pairs[@]}" -eq "$NICS" ] || die "--ports lists ${#pairs[@]} NICs, --nics is $NICS"
    for pair in "${pairs[@]}"; do
        [[ "$pair" =~ ^([0-9]+):([0-9]+)$ ]] || die "--ports entry '$pair' is not QEMU_PORT:PEER_PORT"
        QPORTS+=("${BASH_REMATCH[1]}")
        PPORTS+=("${BASH_REMATCH[2]}")
    done
else
    [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || die "--port-base must be a port number"
    for ((i = 0; i < NICS; i++)); do
        QPORTS+=($((PORT_BASE + 10 * i)))
        PPORTS+=($((PORT_BASE + 10 * i + 1)))
    done
fi

# --- guest files ------------------------------------------------------------------------------
# fetch-guest.sh installs the harness's host packages; these are the commands run here.
"$HERE/fetch-guest.sh" --dir "$VM_DIR" >/dev/null
# shellcheck source=../lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need_commands "$QEMU":qemu-system-x86 cpio:cpio flock:util-linux awk:mawk || exit 2
# --sock-buf: qemu-udp-fds.py makes the NICs' sockets.
[ "$SOCK_BUF" -eq 0 ] || need_commands python3:python3-minimal || exit 2
if [ -z "$INITRD" ]; then
    INITRD=$VM_DIR/initramfs.cpio.gz
    (
        flock 9
        for src in "$HERE/init.sh" "$HERE/loadmod.sh" "$HERE/vm-wait-host.sh" "$ROOT/scripts/bind-vfio.sh" "$VM_DIR/kernel-version"; do
            if [ ! -s "$INITRD" ] || [ "$src" -nt "$INITRD" ]; then
                "$HERE/mkinitramfs.sh" "$INITRD" >/dev/null
                break
            fi
        done
    ) 9>"$VM_DIR/.initramfs.lock"
fi
[ -s "$INITRD" ] || die "no initramfs $INITRD (build one with scripts/vm/mkinitramfs.sh)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-vm.XXXXXX")
QPID=""
TPID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; fi
    if [ -n "$TPID" ] && kill -0 "$TPID" 2>/dev/null; then kill "$TPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The guest command and extra files go into a small uncompressed cpio appended to the base
# initramfs: the kernel unpacks concatenated archives in order, later files replacing earlier ones.
RUN_INITRD=$INITRD
if [ -n "$CMD" ] || [ -n "$SCRIPT" ] || [ "${#FILES[@]}" -gt 0 ]; then
    mkdir -p "$WORK/overlay"
    if [ -n "$CMD" ]; then
        printf '%s\n' "$CMD" >"$WORK/overlay/vmcmd.sh"
    elif [ -n "$SCRIPT" ]; then
        [ -f "$SCRIPT" ] || die "no such script: $SCRIPT"
        cp "$SCRIPT" "$WORK/overlay/vmcmd.sh"
    fi
    for spec in "${FILES[@]}"; do
        src=${spec%%:*}
        dst=/$(basename "$src")
        [ "$spec" = "$src" ] || dst=${spec#*:}
        [ -f "$src" ] || die "no such file: $src"
        mkdir -p "$WORK/overlay$(dirname "$dst")"
        cp "$src" "$WORK/overlay$dst"
        chmod 0755 "$WORK/overlay$dst"
    done
    RUN_INITRD=$WORK/initrd
    cp "$INITRD" "$RUN_INITRD"
    # A newc header must start 4-byte aligned; the kernel skips zero padding between archives.
    pad=$(( (4 - $(stat -c %s "$RUN_INITRD") % 4) % 4 ))
    head -c "$pad" /dev/zero >>"$RUN_INITRD"
    (cd "$WORK/overlay" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >>"$RUN_INITRD"
fi

# The uncompressed ELF kernel boots through its PVH entry point, skipping the firmware and the
# decompressor (about 3 s less under TCG); fetch-guest.sh extracts it when the kernel has one.
KERNEL=$VM_DIR/vmlinuz
[ -s "$VM_DIR/vmlinux" ] && KERNEL=$VM_DIR/vmlinux

# --- accelerator ------------------------------------------------------------------------------
# KVM on these machines hangs after "Booting from ROM": TCG unless asked, or probed and working.
probe_kvm() {
    local cache=$VM_DIR/accel-probe key
    key="$(uname -r) $($QEMU --version | head -n1)"
    if [ -f "$cache" ] && [ "$(head -n1 "$cache")" = "$key" ]; then
        tail -n1 "$cache"
        return
    fi
    local answer=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        # /bin/true as init: the kernel panics at once, panic=-1 reboots, -no-reboot exits QEMU.
        # Where KVM is broken QEMU either aborts (e.g. "failed to set MSR") or hangs until timeout.
        if timeout 20 "$QEMU" -machine q35,accel=kvm -cpu host -m 256M -nographic -no-reboot \
            -kernel "$KERNEL" -initrd "$INITRD" \
            -append "console=ttyS0 panic=-1 rdinit=/bin/true" </dev/null 2>&1 \
            | grep -q "Linux version"; then
            answer=kvm
        fi
    fi
    printf '%s\n%s\n' "$key" "$answer" >"$cache"
    echo "$answer"
}
ACCEL=${VM_ACCEL:-tcg}
case "$ACCEL" in
    tcg|kvm) ;;
    auto) ACCEL=$(probe_kvm) ;;
    *) die "VM_ACCEL must be tcg, kvm or auto, not '$ACCEL'" ;;
esac
CPU=max
[ "$ACCEL" = kvm ] && CPU=host

# --- QEMU -------------------------------------------------------------------------------------
if [ "$NO_IOMMU" -eq 1 ]; then
    IOMMU_ARGS=()
    KERNEL_IOMMU="vmbind=$NO_IOMMU_BIND"
else
    IOMMU_ARGS=(-device "intel-iommu,intremap=on,caching-mode=on,aw-bits=48")
    KERNEL_IOMMU="intel_iommu=on"
fi
ARGS=(-machine "q35,accel=$ACCEL,kernel-irqchip=split" -cpu "$CPU" -m "$MEM" -smp "$SMP"
    -no-reboot -vga none -serial stdio "${IOMMU_ARGS[@]}"
    -kernel "$KERNEL" -initrd "$RUN_INITRD"
    -append "console=ttyS0 $KERNEL_IOMMU tsc=reliable panic=-1 quiet $APPEND")
if [ -n "$CTL" ]; then
    for f in "$CTL.in" "$CTL.out"; do
        [ -p "$f" ] || { rm -f "$f"; mkfifo "$f"; }
    done
    ARGS+=(-chardev "pipe,id=ctl,path=$CTL" -serial chardev:ctl)
fi
if [ -n "${QEMU_EXTRA_ARGS:-}" ]; then
    read -r -a extra <<<"$QEMU_EXTRA_ARGS"
    ARGS+=("${extra[@]}")
fi
for ((i = 0; i < NICS; i++)); do
    platform=on
    [ "$NO_IOMMU" -eq 1 ] && [ "$i" -eq 0 ] && platform=off
    mac=52:54:00:00:00:$(printf '%02x' $((i + 1)))
    addr=$(printf '0x%x' $((3 + i)))
    if [ -n "$TAPS" ]; then
        netdev="tap,id=n$i,ifname=${TAP_NAMES[i]},script=no,downscript=no,vhost=off"
        nic="virtio-net-pci,netdev=n$i,addr=$addr,mac=$mac,packed=$PACKED,iommu_platform=$platform,disable-legacy=on${EXTRA_PROPS[i]:-}"
        if [ "$QUEUES" -gt 1 ]; then
            netdev+=",queues=$QUEUES"
            nic+=",mq=on,vectors=$((2 * QUEUES + 2)),rss=on,hash=on"
        fi
        ARGS+=(-netdev "$netdev" -device "$nic")
        echo "run-vm: NIC$i guest 0000:00:$(printf '%02x' $((3 + i))).0 mac $mac ring=$RING tap ${TAP_NAMES[i]} queues=$QUEUES${EXTRA_PROPS[i]:-}"
        continue
    fi
    ARGS+=(-netdev "dgram,id=n$i,local.type=inet,local.host=127.0.0.1,local.port=${QPORTS[i]},remote.type=inet,remote.host=127.0.0.1,remote.port=${PPORTS[i]}"
        -device "virtio-net-pci,netdev=n$i,addr=$addr,mac=$mac,packed=$PACKED,iommu_platform=$platform,disable-legacy=on${EXTRA_PROPS[i]:-}")
    echo "run-vm: NIC$i guest 0000:00:$(printf '%02x' $((3 + i))).0 mac $mac ring=$RING iommu_platform=$platform qemu 127.0.0.1:${QPORTS[i]} peer 127.0.0.1:${PPORTS[i]}${EXTRA_PROPS[i]:-}"
done
QEMU_CMD=("$QEMU")
if [ "$SOCK_BUF" -gt 0 ]; then
    QEMU_CMD=(python3 "$HERE/qemu-udp-fds.py" "$SOCK_BUF" "$QEMU")
    echo "run-vm: NIC sockets made by qemu-udp-fds.py with $SOCK_BUF-byte buffers"
fi
echo "run-vm: accel=$ACCEL timeout=${TIMEOUT}s log=$LOG"

mkdir -p "$(dirname "$LOG")"
: >"$LOG"
START=$(date +%s.%N)
RC=0
if [ "$INTERACTIVE" -eq 1 ]; then
    timeout -k 5 "$TIMEOUT" "${QEMU_CMD[@]}" "${ARGS[@]}" -display none -monitor "$MONITOR" 2>&1 | tee "$LOG" || RC=$?
    [ "$RC" -eq 124 ] || RC=0
else
    "${QEMU_CMD[@]}" "${ARGS[@]}" -display none -monitor "$MONITOR" </dev/null >"$LOG" 2>&1 &
    QPID=$!
    if [ "$QUIET" -eq 0 ]; then
        tail -n +1 -s 0.1 -f --pid="$QPID" "$LOG" &
        TPID=$!
    fi
    deadline=$(($(date +%s) + TIMEOUT))
    while kill -0 "$QPID" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kill "$QPID" 2>/dev/null || true
            RC=124
            break
        fi
        sleep 0.2
    done
    wait "$QPID" 2>/dev/null || true
    QPID=""
    if [ -n "$TPID" ]; then wait "$TPID" 2>/dev/null || true; TPID=""; fi
fi
END=$(date +%s.%N)
ELAPSED=$(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.2f", b - a }')

# --- verdict ----------------------------------------------------------------------------------
# Console lines end in \r\n: strip the \r before matching.
CLEAN=$WORK/console.txt
tr -d '\r' <"$LOG" >"$CLEAN"
READY=$(sed -n 's/^VM-READY uptime \([0-9.]*\)s.*/\1/p' "$CLEAN" | head -n1)
if [ -n "$READY" ]; then READY="${READY}s"; else READY=never; fi
echo "run-vm: QEMU ran ${ELAPSED}s (start to poweroff); guest uptime at VM-READY: $READY"
if grep -E 'vtd_iommu_translate|DMAR:.*([Ff]ault|\[DMA (Read|Write)|\[INTR-REMAP)' "$CLEAN" >"$WORK/faults"; then
    echo "run-vm: FAIL: IOMMU faults in the console ($LOG):" >&2
    head -n 20 "$WORK/faults" >&2
    exit 126
fi
if grep -E 'Kernel panic|BUG:|Oops|general protection fault|WARNING: CPU' "$CLEAN" >"$WORK/oops"; then
    echo "run-vm: FAIL: kernel oops/panic in the console ($LOG):" >&2
    head -n 20 "$WORK/oops" >&2
    exit 126
fi
if [ "$RC" -eq 124 ]; then
    echo "run-vm: FAIL: timeout after ${TIMEOUT}s (last console lines below; log $LOG)" >&2
    tail -n 5 "$CLEAN" >&2
    exit 124
fi
GUEST_RC=$(sed -n 's/^VMCMD-EXIT \([0-9]*\)$/\1/p' "$CLEAN" | tail -n1)
if [ -z "$GUEST_RC" ]; then
    echo "run-vm: FAIL: the guest printed no VMCMD-EXIT line (crash? see $LOG)" >&2
    tail -n 5 "$CLEAN" >&2
    exit 125
fi
if grep -q '^VM-INIT-ERROR' "$CLEAN"; then
    echo "run-vm: FAIL: guest set-up: $(grep '^VM-INIT-ERROR' "$CLEAN" | head -n1)" >&2
fi
echo "run-vm: guest command exit code $GUEST_RC"
exit "$GUEST_RC"
