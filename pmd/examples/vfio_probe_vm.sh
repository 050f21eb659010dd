#!/bin/bash
# vfio_probe_vm.sh: run the vfio_probe example in the VM harness guest, on real virtio-net-pci
# functions behind an emulated IOMMU, and check the VFIO transport's success and error paths.
#
# Three boots (scripts/vm/run-vm.sh):
#   1. packed rings, with extra functions for the error paths:
#        00:05.0 virtio-net, left unbound (vmskip), later given to virtio-pci
#        00:06.0 legacy-only virtio-net (disable-modern=on)
#        00:07.0 transitional virtio-net (1af4:1000) with the modern capabilities
#        00:08.0 virtio-rng (not a network device)
#        00:09.0 + 00:09.1 a multifunction virtio-net: one IOMMU group; .1 left unbound, later
#                given to virtio-pci, which makes the group not viable
#      probe both NICs in one container; a group held by another process; removal while open.
#   2. split rings: probe both NICs.
#   3. IOMMU off (intel_iommu=off): the no-IOMMU error.
# Each probe transmits one frame per port by hand; a host listener checks each NIC's UDP peer
# port got exactly the frames sent, byte for byte.
# Exit 0 when every step did what it should; the console logs are in target/vm-vfio-probe/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/target/vm-vfio-probe
RUN_VM=$ROOT/scripts/vm/run-vm.sh
PORT_BASE=${PORT_BASE:-47001}
mkdir -p "$OUT"

echo "vfio_probe_vm: building the static example"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --target x86_64-unknown-linux-gnu --example vfio_probe)
BIN=$OUT/vfio_probe
cp "$ROOT/target/x86_64-unknown-linux-gnu/release/examples/vfio_probe" "$BIN"
strip "$BIN" 2>/dev/null || true

cat >"$OUT/guest-errors.sh" <<'GUEST'
P=/bin/vfio_probe
fail=0
step() {
    echo "== STEP $*"
    if "$@"; then echo "== STEP-OK $1 $2 $3"; else echo "== STEP-FAIL $*"; fail=1; fi
}
for g in /sys/kernel/iommu_groups/*; do echo "iommu group ${g##*/}: $(ls "$g/devices" | tr '\n' ' ')"; done
sh /bin/bind-vfio.sh 0000:00:06.0 0000:00:07.0 || fail=1

step $P probe 0000:00:03.0 0000:00:04.0
step $P probe 0000:00:07.0
step $P probe 0000:00:09.0
step $P expect legacy 0000:00:06.0 "legacy-only"
step $P expect not-found 0000:00:0a.0 "lspci"
step $P expect not-found 00:99.0 "expected DDDD:BB:DD.F"
step $P expect not-virtio-net 0000:00:08.0 "1af4:1044"
step $P expect not-bound 0000:00:05.0 "no driver bound"

# Another process holds group of 00:03.0.
rm -f /tmp/held
$P hold 0000:00:03.0 120 /tmp/held &
holder=$!
i=0
while [ ! -e /tmp/held ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
step $P expect group-busy 0000:00:03.0 "fuser -v /dev/vfio/"
kill $holder
wait $holder 2>/dev/null
step $P probe 0000:00:03.0

# Give the unbound functions (00:05.0, 00:09.1) to the kernel's virtio-pci driver.
loadmod virtio_pci
for d in 0000:00:05.0 0000:00:09.1; do echo "$d driver: $(basename "$(readlink /sys/bus/pci/devices/$d/driver)")"; done
step $P expect not-bound 0000:00:05.0 "bound to virtio-pci"
step $P expect not-viable 0000:00:09.0 "0000:00:09.1 (bound to virtio-pci)"

# Last: the function disappears.
step $P remove-while-open 0000:00:04.0
echo "VFIO-PROBE-RESULT fail=$fail"
exit $fail
GUEST

# The host side of the NICs: QEMU sends each frame the guest transmits on NIC i to UDP port
# PORT_BASE + 10i + 1. The listener records them until told to stop, then checks that NIC i got
# exactly the expected number of probe frames, each the 64 bytes vfio_probe built.
cat >"$OUT/listen.py" <<'PY'
import signal, socket, sys
base, expect = int(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")]
socks = []
for i in range(len(expect)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", base + 10 * i + 1))
    s.setblocking(False)
    socks.append(s)
got = [[] for _ in expect]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
import select
print("LISTENING", flush=True)
while not stop:
    r, _, _ = select.select(socks, [], [], 0.1)
    for s in r:
        got[socks.index(s)].append(s.recv(65536))
ok = True
for i, frames in enumerate(got):
    mac = bytes([0x52, 0x54, 0, 0, 0, i + 1])
    text = ("vfio_probe 0000:00:%02x.0" % (3 + i)).encode()
    want = b"\xff" * 6 + mac + b"\x88\xb5" + text
    want += bytes(64 - len(want))
    good = sum(1 for f in frames if f == want)
    print("HOST NIC%d: %d frames, %d as sent by vfio_probe, %d expected" % (i, len(frames), good, expect[i]))
    ok = ok and good == expect[i] and len(frames) == expect[i]
print("HOST-FRAMES", "OK" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY

rc_all=0
run() {
    local name=$1 expect=$2
    shift 2
    echo "vfio_probe_vm: --- $name ---"
    local rc=0 lrc=0
    python3 "$OUT/listen.py" "$PORT_BASE" "$expect" >"$OUT/$name.host.txt" 2>&1 &
    local listener=$!
    local waited=0
    while ! grep -q LISTENING "$OUT/$name.host.txt" 2>/dev/null; do
        if ! kill -0 "$listener" 2>/dev/null || [ $waited -ge 100 ]; then
            echo "vfio_probe_vm: the host listener did not start:" >&2
            cat "$OUT/$name.host.txt" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    "$RUN_VM" --quiet --log "$OUT/$name.log" --timeout 300 --file "$BIN:/bin/vfio_probe" "$@" || rc=$?
    kill -TERM "$listener"
    wait "$listener" || lrc=$?
    cat "$OUT/$name.host.txt"
    [ "$lrc" -eq 0 ] || rc_all=1
    if [ -f "$OUT/$name.log" ]; then
        tr -d '\r' <"$OUT/$name.log" | grep -E '^(== |VFIO-PROBE|PROBE-|EXPECTED-ERROR|REMOVE-OK|iommu group|0000:|  |IOMMU |DMA region|mapped IOVAs|VFIO-BOUND|VMCMD-EXIT|.*driver: )|WARN|ERROR|panicked' || true
    fi
    echo "vfio_probe_vm: $name: exit $rc"
    [ "$rc" -eq 0 ] || rc_all=1
}

EXTRA="-device virtio-net-pci,addr=0x6,disable-modern=on,disable-legacy=off"
EXTRA+=" -device virtio-net-pci,addr=0x7,disable-legacy=off"
EXTRA+=" -device virtio-rng-pci,addr=0x8,disable-legacy=on,iommu_platform=on"
EXTRA+=" -device virtio-net-pci,addr=0x9.0,multifunction=on,disable-legacy=on,iommu_platform=on"
EXTRA+=" -device virtio-net-pci,addr=0x9.1,disable-legacy=on,iommu_platform=on"
QEMU_EXTRA_ARGS=$EXTRA run errors-packed 2,1,0 --nics 3 --port-base "$PORT_BASE" \
    --append "vmskip=0000:00:05.0,0000:00:09.1" --script "$OUT/guest-errors.sh"
run split 1,1 --ring split --port-base "$PORT_BASE" \
    --cmd '/bin/vfio_probe probe 0000:00:03.0 0000:00:04.0'
run no-iommu 0,0 --port-base "$PORT_BASE" --append "intel_iommu=off vmbind=none" \
    --cmd '/bin/vfio_probe expect no-iommu 0000:00:03.0 intel_iommu=on'
echo "vfio_probe_vm: $([ $rc_all -eq 0 ] && echo PASS || echo FAIL) (logs in $OUT)"
exit $rc_all
