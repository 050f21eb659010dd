#!/usr/bin/env bash
# Where fwd's instructions go per forwarded packet, in the vhost-user loopback (mac mode against
# DPDK's vhost testpmd in mac mode, `start tx_first 32`), measured with callgrind (perf counters
# are not available on these machines; instruction counts do not depend on the noise either).
#
#   scripts/bench/callgrind-fwd.sh [--split] [--seconds S] [--packet-classes] [--dpdk]
#   FWD_BIN=/path/to/fwd scripts/bench/callgrind-fwd.sh ...   # a prebuilt fwd (A/B tests); no build
#
# Two runs of target/release/fwd under `valgrind --tool=callgrind --dump-instr=no`:
#   1. with traffic for S seconds (default 6): under callgrind fwd is the slow side, yet it still
#      polls empty rings now and then (whenever the vhost core is preempted);
#   2. without traffic for 3 seconds: the cost of one empty poll, per function.
# The per-packet table subtracts the empty polls of run 1 (rx_burst calls minus the tx_burst
# calls, one per non-empty poll in mac mode) at the cost measured in run 2, then divides by the
# packets received, and groups the self cost by the library function it was inlined into.
# --packet-classes runs fwd with `--packet-classes` (the per-frame class statistics: size bins,
# multicast, broadcast), to set its cost beside the plain figure. Printed last:
#   RESULT fwd ring=<r> packet_classes=<on|off> instr_per_pkt=<n> packets=<p>
#
# --dpdk counts DPDK's virtio-user testpmd instead, in the same loopback and the same way (mac
# forwarding, rings of 1024, burst 32; DPDK's default devargs unless DPDK_DEVARGS=",in_order=1,..."):
#   dpdk-testpmd -l 0,1 --main-lcore 0 --vdev net_virtio_user0,path=SOCK,packed_vq=1|0,queue_size=1024
#                --forward-mode=mac --record-burst-stats
# under `valgrind --tool=callgrind --separate-threads=yes`. Debian's DPDK is stripped (no symbol
# for testpmd's loop or the PMD's burst functions), so the count is the forwarding thread's whole
# total (the thread with the most instructions: loop, rx, tx, mac rewrite, mempool), not split
# by phase; the empty polls (testpmd's RX-bursts minus its TX-bursts: in mac mode each burst
# that got frames is sent on as one) are taken out at the cost per empty burst measured without
# traffic, as for fwd. Printed last:
#   RESULT dpdk ring=<r> instr_per_pkt=<n> packets=<p> rx_bursts=<b> tx_bursts=<t> empty_poll_instr=<e>
# Output files stay in target/bench/callgrind/ (inspect them with callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

ring=packed seconds=6 dpdk=0 classes=off
while [ $# -gt 0 ]; do
    case "$1" in
        --split) ring="split"; shift ;;
        --dpdk) dpdk=1; shift ;;
        --packet-classes) classes=on; shift ;;
        --seconds) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/need.sh
. "$root/scripts/lib/need.sh"
# valgrind runs fwd, callgrind_annotate reads its output, python3 makes the table; cargo links
# with cc. dpdk-testpmd (the vhost side) comes from scripts/dpdk/install.sh, run by vhost-testpmd.sh.
need_commands valgrind:valgrind callgrind_annotate:valgrind python3:python3-minimal setsid:util-linux cc:gcc

vhost="$root/scripts/dpdk/vhost-testpmd.sh"
out="$root/target/bench/callgrind"
tag="cg$$"
sock="/tmp/$tag.sock"
mkdir -p "$out"
fwd_pid=""
cleanup() {
    if [ -n "$fwd_pid" ]; then kill -TERM "$fwd_pid" 2>/dev/null || true; fi
    "$vhost" stop --prefix "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# DPDK's virtio-user testpmd under callgrind, run NAME TRAFFIC(0|1) SECONDS (as `run` below).
run_dpdk() {
    local name="$1" traffic="$2" secs="$3" packed_vq=1 prefix="$tag-vu"
    [ "$ring" = split ] && packed_vq=0
    "$vhost" start --socket "$sock" --prefix "$tag" --fwd mac --lcores 0,1 --main-lcore 1 > /dev/null
    rm -f "$out/$name.out"*
    setsid valgrind --tool=callgrind --dump-instr=no --separate-threads=yes --callgrind-out-file="$out/$name.out" \
        dpdk-testpmd -l 0,1 --main-lcore 0 -n 1 --no-pci --single-file-segments --file-prefix="$prefix" \
        --vdev "net_virtio_user0,path=$sock,queues=1,packed_vq=$packed_vq,queue_size=1024${DPDK_DEVARGS:-}" \
        -- --forward-mode=mac --nb-cores=1 --txd=1024 --rxd=1024 --burst=32 --total-num-mbufs=16384 \
        --stats-period 1000 --record-burst-stats < /dev/null > "$out/$name.log" 2>&1 &
    fwd_pid=$!
    "$vhost" wait-log --prefix "$tag" --timeout 120 "virtio is now ready for processing" > /dev/null \
        || { tail -20 "$out/$name.log" >&2; echo "callgrind-fwd.sh: DPDK's testpmd did not come up under valgrind" >&2; exit 1; }
    sleep 2
    if [ "$traffic" = 1 ]; then
        "$vhost" cmd --prefix "$tag" "start tx_first 32" > /dev/null
    fi
    sleep "$secs"
    kill -INT "$fwd_pid"
    wait "$fwd_pid" || true
    fwd_pid=""
    "$vhost" stop --prefix "$tag" > /dev/null
    rm -f /dev/hugepages/"$prefix"*
    rm -rf /var/run/dpdk/"$prefix"
}

if [ "$dpdk" = 1 ]; then
    need_commands dpdk-testpmd:dpdk-dev
    echo "callgrind: DPDK virtio-user testpmd mac, $ring ring, ${seconds}s with traffic, 3s without ..." >&2
    run_dpdk "dpdk-$ring" 1 "$seconds"
    run_dpdk "dpdk-$ring-empty" 0 3
    exec python3 - "$out/dpdk-$ring" "$out/dpdk-$ring-empty" "$ring" <<'EOF'
import glob, re, sys

traffic, empty, ring = sys.argv[1:4]

def busiest_thread(prefix):
    """Instructions of the thread that ran the most (the forwarding lcore)."""
    totals = []
    for path in glob.glob(prefix + ".out*"):
        m = re.search(r"^(?:summary|totals):\s+(\d+)", open(path).read(), re.M)
        if m:
            totals.append(int(m.group(1)))
    if not totals:
        sys.exit(f"callgrind-fwd.sh: no callgrind output at {prefix}.out*")
    return max(totals)

def forward_stats(prefix):
    """(RX-packets, RX-bursts, TX-bursts) from testpmd's last forward statistics."""
    log = open(prefix + ".log", errors="replace").read().replace("\x1b", "")
    at = log.rfind("Forward statistics for port 0")
    block = log[at:] if at >= 0 else log
    packets = int(re.findall(r"RX-packets:\s+(\d+)", block)[0])
    def bursts(way):
        found = re.findall(way + r"-bursts\s*:\s*(\d+)", block)
        if not found:
            sys.exit(f"callgrind-fwd.sh: no {way}-bursts line (--record-burst-stats) in {prefix}.log")
        return int(found[0])
    return packets, bursts("RX"), bursts("TX") if packets else 0

t_instr, e_instr = busiest_thread(traffic), busiest_thread(empty)
packets, rx_bursts, tx_bursts = forward_stats(traffic)
_, e_bursts, _ = forward_stats(empty)
if packets == 0:
    sys.exit("callgrind-fwd.sh: DPDK's testpmd forwarded nothing under valgrind")
# In mac mode a receive burst that got frames is followed by one transmit burst: the others
# were empty polls.
empty_polls = rx_bursts - tx_bursts
empty_cost = e_instr / max(e_bursts, 1)
per_packet = (t_instr - empty_polls * empty_cost) / packets
print(f"DPDK virtio-user testpmd, mac, {ring}: forwarding thread {t_instr} instructions, {packets} packets,")
print(f"  {rx_bursts} receive bursts, {tx_bursts} of them with frames; empty poll = {empty_cost:.0f} instructions")
print(f"RESULT dpdk ring={ring} instr_per_pkt={per_packet:.1f} packets={packets} rx_bursts={rx_bursts} "
      f"tx_bursts={tx_bursts} empty_poll_instr={empty_cost:.0f}")
EOF
fi

fwd="${FWD_BIN:-$root/target/release/fwd}"
[ -n "${FWD_BIN:-}" ] || cargo build --release -q -p virtio-pmd-apps --bin fwd
[ -x "$fwd" ] || { echo "callgrind-fwd.sh: no fwd binary at $fwd" >&2; exit 1; }
fwd_extra=()
[ "$classes" = on ] && fwd_extra=(--packet-classes)

# run NAME TRAFFIC(0|1) SECONDS
run() {
    local name="$1" traffic="$2" secs="$3"
    "$vhost" start --socket "$sock" --prefix "$tag" --fwd mac --lcores 0,1 --main-lcore 1 > /dev/null
    setsid valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/$name.out" \
        "$fwd" --port "vhost:$sock" --forward-mode mac --cores 1 --ring "$ring" \
        --huge-pages required "${fwd_extra[@]}" < /dev/null > "$out/$name.log" 2>&1 &
    fwd_pid=$!
    "$vhost" wait-log --prefix "$tag" --timeout 60 "virtio is now ready for processing" > /dev/null
    sleep 1
    if [ "$traffic" = 1 ]; then
        "$vhost" cmd --prefix "$tag" "start tx_first 32" > /dev/null
    fi
    sleep "$secs"
    kill -TERM "$fwd_pid"
    wait "$fwd_pid" || true
    fwd_pid=""
    "$vhost" stop --prefix "$tag" > /dev/null
}

echo "callgrind: fwd mac, $ring ring, packet classes $classes, ${seconds}s with traffic, 3s without ..." >&2
name="fwd-$ring"
[ "$classes" = on ] && name="fwd-$ring-classes"
run "$name" 1 "$seconds"
run "$name-empty" 0 3

python3 - "$out/$name.out" "$out/$name-empty.out" "$out/$name.log" "$ring" "$classes" <<'EOF'
import re, subprocess, sys

traffic_out, empty_out, log, ring, classes = sys.argv[1:6]

def annotate(path, *args):
    return subprocess.run(["callgrind_annotate", "--threshold=100", *args, path],
                          capture_output=True, text=True, check=True).stdout

def self_costs(path):
    """{(source file, function it was inlined into): instructions}"""
    costs, started = {}, False
    for line in annotate(path, "--inclusive=no", "--auto=no").splitlines():
        if "file:function" in line:
            started = True
            continue
        m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*?)(\s+\[.*\])?$", line)
        if started and m:
            src, _, fn = m.group(2).partition(":")
            costs[(src, fn)] = costs.get((src, fn), 0) + int(m.group(1).replace(",", ""))
    return costs

def calls(path, callee):
    text = annotate(path, "--inclusive=yes", "--tree=calling")
    found = re.findall(r">\s+\S*" + re.escape(callee) + r"\S*\s+\(([\d,]+)x\)", text)
    return max((int(n.replace(",", "")) for n in found), default=0)

summary = open(log).read()
packets = int(re.search(r"FWD-SUMMARY .*?rx_pkts=(\d+)", summary).group(1))
rx_calls, tx_calls = calls(traffic_out, "RxQueue::rx_burst"), calls(traffic_out, "TxQueue::tx_burst")
empty_calls = calls(empty_out, "RxQueue::rx_burst")
empty_polls = rx_calls - tx_calls
traffic, empty = self_costs(traffic_out), self_costs(empty_out)

def phase(src, fn):
    if "reclaim" in fn and fn.count("{{closure}}") >= 2 or "Recycler" in fn:
        return "tx completion: mempool put (recycler)"
    if "reclaim" in fn:
        return "tx completion: used-ring poll"
    if "refill" in fn:
        return "rx refill: mempool get + descriptor write"
    if "receive" in fn:
        return "rx per-packet hand-off (header flags, mbuf fields)"
    if "RxQueue::rx_burst" in fn:
        return "rx burst: used-ring poll (+ inlined pool/refill glue)"
    if "TxQueue::tx_burst" in fn:
        return "tx burst: header + descriptor write"
    if "publish" in fn or "notify" in fn.lower():
        return "publish + kick decision"
    if "ClassCounters" in fn or "PacketClasses" in fn:
        return "packet classes (size bins, multicast, broadcast)"
    if "fwd::engine" in fn:
        return "fwd app: loop, MAC rewrite, rdtsc"
    if "ArrayQueue" in fn or "PoolShared" in fn or "give_back" in fn:
        return "mempool shared store (cache flush/refill)"
    return None

phases, files = {}, {}
for (src, fn), cost in traffic.items():
    p = phase(src, fn)
    if p is None:
        continue
    per = (cost - empty.get((src, fn), 0) / max(empty_calls, 1) * empty_polls) / packets
    phases[p] = phases.get(p, 0) + per
    short = src.split("/src/")[-1] if "/rustc/" not in src else "std (" + src.rsplit("/", 1)[-1] + ")"
    files[(p, short)] = files.get((p, short), 0) + per

empty_cost = sum(c for (s, f), c in empty.items() if phase(s, f)) / max(empty_calls, 1)
print(f"packets {packets}, rx_burst calls {rx_calls} ({tx_calls} non-empty), empty poll = {empty_cost:.0f} instructions")
print(f"{'instr/pkt':>9}  phase (source files inlined into it)")
for p, v in sorted(phases.items(), key=lambda kv: -kv[1]):
    detail = ", ".join(f"{s} {c:.0f}" for (pp, s), c in sorted(files.items(), key=lambda kv: -kv[1]) if pp == p and c >= 1)
    print(f"{v:9.1f}  {p}  [{detail}]")
print(f"{sum(phases.values()):9.1f}  total per forwarded packet (empty polls excluded)")
print(f"RESULT fwd ring={ring} packet_classes={classes} instr_per_pkt={sum(phases.values()):.1f} packets={packets}")
EOF
