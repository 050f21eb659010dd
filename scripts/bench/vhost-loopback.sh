#!/usr/bin/env bash
# The virtio-user loopback benchmark (DPDK DTS style): our driver against DPDK's own virtio PMD,
# alternating in one run, against the same DPDK vhost-user backend.
#
#   scripts/bench/vhost-loopback.sh [--split] [--mode loopback|txonly|rxonly] [--variant plain|mergeable]
#                                   [--runs N] [--seconds S] [--warmup S] [--burst B] [--nice N]
#                                   [--sides dpdk,dpdk-fast,dpdk-vec,ours] [--ring-size N]
#   FWD_BIN=/path/to/fwd scripts/bench/vhost-loopback.sh ...   # a prebuilt fwd (A/B tests); no build
#   FWD_EXTRA="--mbuf-cache 512" scripts/bench/vhost-loopback.sh ...   # more fwd options
#
# Each measurement starts a fresh vhost side: dpdk-testpmd with net_vhost on core 0
# (`-l 0,1 --main-lcore 1`), then the virtio side on core 1:
#   dpdk       dpdk-testpmd --vdev net_virtio_user0,path=SOCK,queues=1,packed_vq=1|0,queue_size=N
#              (--main-lcore 0) --forward-mode=MODE --txd=N --rxd=N --record-core-cycles
#              (virtio-user's defaults: mrg_rxbuf=1, in_order=1, not vectorized: DPDK picks its
#              mergeable receive path, packed; its in-order paths, split)
#   dpdk-fast  the same with in_order=1,mrg_rxbuf=0,vectorized=1. Packed: DPDK's vectorized paths
#              (they need AVX512F/BW/VL and EAL's --force-max-simd-bitwidth=512, given when the
#              CPU has them; without, DPDK falls back to its scalar paths). Split: its in-order
#              paths (DPDK turns split vectorized receive off under IN_ORDER, silently)
#   dpdk-vec   split only: in_order=0,mrg_rxbuf=0,vectorized=1, DPDK's vectorized split receive
#              path (with its standard transmit path)
#   ours       target/release/fwd --port vhost:SOCK --forward-mode MODE --cores 1 --rxd N --txd N
#              --huge-pages required
# --variant (default plain):
#   plain      ours on its one-buffer receive and one-descriptor transmit paths, against dpdk,
#              dpdk-fast and (split) dpdk-vec
#   mergeable  ours with mergeable receive buffers and transmit chains (fwd --max-pkt-len 9018:
#              frames may exceed a 2048-byte buffer), against dpdk (DPDK's default, mrg_rxbuf=1)
# Which receive and transmit paths each side ran is printed once per side (PATH lines): DPDK's
# from its log (`--log-level=pmd.net.virtio.*:info`: set_rxtx_funcs() names them), ours from
# fwd's port line.
# --mode (default loopback):
#   loopback  both sides forward in mac mode; the vhost side starts with `start tx_first 32`. The
#             vhost core is the bottleneck here: both drivers land near its speed whatever they
#             cost themselves (their busy cycles per packet tell them apart).
#   txonly    the virtio side generates (txonly), the vhost side only receives (rxonly) and
#             counts: the virtio driver's transmit path is the bottleneck, its speed shows in Mpps.
#   rxonly    the reverse: the vhost side generates (txonly), the virtio side only receives
#             (rxonly); what the virtio side took is the vhost side's TX-packets (the rest is
#             dropped there).
# Both sides get rings of --ring-size N descriptors (default 1024, as in DTS). The queue_size
# devarg matters: virtio-user's own default is 256, and testpmd's --txd/--rxd cannot exceed it.
# Once the backend reports the device ready, traffic starts. After --warmup seconds (default 1)
# the vhost side's counters are cleared; --seconds later (default 3) its RX-packets (TX-packets in
# rxonly mode: what the virtio side took) over the measured time is the throughput, the same way
# for every side. Busy cycles per packet come from each virtio side's own report at exit
# (testpmd's `CPU cycles/packet`, fwd's `cycles_per_pkt`, same definition).
# --runs N rounds (default 6), each measuring every side once in turn (dpdk, dpdk-fast, ours, dpdk,
# ...): short runs, alternated, so that a slow spell of the machine hits every side alike.
#
# 64-byte frames, burst 32, one queue pair; packed rings unless --split.
# Not a pass/fail test: the machine is shared and noisy; compare only ratios from one run. Other
# processes on the two cores inflate both Mpps and cycles (the TSC keeps counting while a poller
# is preempted); --nice -10 (root) renices every thread of both pollers once they run, so that
# they win the cores over other work (which then crawls for the length of the run).
# Three lines at the end, each comparing ours with dpdk (ratio), dpdk-fast (ratio_fast) and
# dpdk-vec (ratio_vec):
#   BEST    the fastest run of each side (noise only ever slows a run down);
#   PAIRED  the median over the rounds of each round's ratio (ours / dpdk in the same round:
#           a slow spell that hits one round cancels out);
#   RESULT mode=<m> ring=<packed|split> ours_mpps=<x> dpdk_mpps=<y> ratio=<x/y> ours_cycles_per_pkt=<a>
#          dpdk_cycles_per_pkt=<b> dpdk_fast_mpps=<z> ratio_fast=<x/z> dpdk_fast_cycles_per_pkt=<c>
#          [dpdk_vec_mpps=.. ratio_vec=.. dpdk_vec_cycles_per_pkt=..]
#           medians over the runs (sides left out by --sides are left out of the lines).
# Logs are kept in $BENCH_DIR (default target/bench/vhost-loopback).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

ring=packed ring_size=1024 runs=6 seconds=3 warmup=1 burst=32 nice=0 sides="" mode=loopback variant=plain
while [ $# -gt 0 ]; do
    case "$1" in
        --split) ring="split"; shift ;;
        --packed) ring="packed"; shift ;;
        --runs) runs="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --burst) burst="$2"; shift 2 ;;
        --ring-size) ring_size="$2"; shift 2 ;;
        --nice) nice="$2"; shift 2 ;;
        --sides) sides="$2"; shift 2 ;;
        --mode) mode="$2"; shift 2 ;;
        --variant) variant="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

vhost="$root/scripts/dpdk/vhost-testpmd.sh"
fwd="${FWD_BIN:-$root/target/release/fwd}"
read -r -a fwd_extra <<< "${FWD_EXTRA:-}"
out_dir="${BENCH_DIR:-$root/target/bench/vhost-loopback}"
tag="vlb$$"
sock="/tmp/$tag.sock"
vprefix="$tag-vh"
uprefix="$tag-vu"
packed_vq=1
[ "$ring" = split ] && packed_vq=0
fast_devargs=",in_order=1,mrg_rxbuf=0,vectorized=1"
vec_devargs=",in_order=0,mrg_rxbuf=0,vectorized=1"
case "$variant" in
    plain) default_sides="dpdk,dpdk-fast,ours"; [ "$ring" = split ] && default_sides="dpdk,dpdk-fast,dpdk-vec,ours" ;;
    mergeable) default_sides="dpdk,ours"; fwd_extra+=(--max-pkt-len 9018) ;;
    *) echo "--variant: unknown variant '$variant' (plain, mergeable)" >&2; exit 2 ;;
esac
sides="${sides:-$default_sides}"
fast_eal=()
if [ "$ring" = packed ] && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    fast_eal=(--force-max-simd-bitwidth=512)
fi
# Forwarding modes of the vhost and virtio sides, the vhost counter that measures, the start.
case "$mode" in
    loopback) vhost_fwd=mac virtio_fwd=mac measured=RX-packets start_cmd="start tx_first 32" ;;
    txonly) vhost_fwd=rxonly virtio_fwd=txonly measured=RX-packets start_cmd="start" ;;
    rxonly) vhost_fwd=txonly virtio_fwd=rxonly measured=TX-packets start_cmd="start" ;;
    *) echo "--mode: unknown mode '$mode' (loopback, txonly, rxonly)" >&2; exit 2 ;;
esac
mkdir -p "$out_dir"

die() { echo "vhost-loopback.sh: $*" >&2; exit 1; }
# shellcheck source=../lib/need.sh
. "$root/scripts/lib/need.sh"
need_commands setsid:util-linux renice:bsdutils awk:mawk
# dpdk-testpmd (the DPDK side and the vhost backend), its plugins and the huge pages.
command -v dpdk-testpmd >/dev/null || "$root/scripts/dpdk/install.sh" >&2
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found: run scripts/dpdk/install.sh"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (vhost side on core 0, virtio side on core 1)"

virtio_pid=""
cleanup() {
    if [ -n "$virtio_pid" ] && kill -0 "$virtio_pid" 2>/dev/null; then
        kill -INT "$virtio_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$virtio_pid" 2>/dev/null || true
    fi
    "$vhost" stop --prefix "$vprefix" >/dev/null 2>&1 || true
    rm -f /dev/hugepages/"$uprefix"* /dev/hugepages/"$vprefix"* "$sock"
    rm -rf /var/run/dpdk/"$uprefix"
}
trap cleanup EXIT

if [ -z "${FWD_BIN:-}" ]; then
    need_commands cc:gcc    # cargo links with cc
    echo "building fwd (release) ..." >&2
    cargo build --release -q -p virtio-pmd-apps --bin fwd
fi
[ -x "$fwd" ] || die "no fwd binary at $fwd"

now_ns() { date +%s%N; }

# Renices every thread of process $1 to $nice (renice alone changes one thread only).
boost() {
    [ "$nice" = 0 ] && return 0
    local task
    for task in /proc/"$1"/task/*; do
        renice -n "$nice" -p "${task##*/}" > /dev/null 2>&1 || echo "vhost-loopback.sh: cannot renice thread ${task##*/} (root needed for a negative --nice)" >&2
    done
}

# vhost side's counter NAME of port 0.
counter() {
    "$vhost" stats --prefix "$vprefix" | awk -v name="$1:" '{ for (i = 1; i < NF; i++) if ($i == name) { print $(i + 1); exit } }'
}

# The receive and transmit paths side $1 ran, from its log $2: "rx=<path> tx=<path>".
paths_of() {
    local side="$1" log="$2" rx tx
    case "$side" in
        dpdk*)
            # set_rxtx_funcs(): virtio: using packed ring vectorized Rx path on port 0
            rx=$(tr -d '\033' < "$log" | sed -n 's/.*virtio: using \(.*\) Rx path on port.*/\1/p' | tail -1)
            tx=$(tr -d '\033' < "$log" | sed -n 's/.*virtio: using \(.*\) Tx path on port.*/\1/p' | tail -1) ;;
        ours)
            # port 0: rx path simple (one buffer per frame) | tx path simple (...) | ...
            rx=$(sed -n 's/^port 0: rx path \(.*\) | tx path .*/\1/p' "$log" | head -1)
            tx=$(sed -n 's/^port 0: rx path .* | tx path \([^|]*[^ |]\) |.*/\1/p' "$log" | head -1) ;;
    esac
    echo "rx='${rx:-unknown}' tx='${tx:-unknown}'"
}

# One measurement of side $1 (dpdk|dpdk-fast|dpdk-vec|ours), run $2; prints "MPPS CYCLES".
measure() {
    local side="$1" run="$2"
    # A subshell of its own (command substitution): stop what it started if it fails.
    trap cleanup EXIT
    local log="$out_dir/$mode-$variant-$ring-$side-$run.log" vlog="$out_dir/$mode-$variant-$ring-$side-$run-vhost.log"
    "$vhost" start --socket "$sock" --prefix "$vprefix" --fwd "$vhost_fwd" --lcores 0,1 --main-lcore 1 --ring "$ring_size" \
        --app-extra "--burst=$burst" > /dev/null
    case "$side" in
        dpdk|dpdk-fast|dpdk-vec)
            local devargs="" eal=()
            [ "$side" = dpdk-fast ] && devargs="$fast_devargs" eal=("${fast_eal[@]}")
            [ "$side" = dpdk-vec ] && devargs="$vec_devargs"
            setsid dpdk-testpmd -l 0,1 --main-lcore 0 -n 1 --no-pci --single-file-segments --file-prefix="$uprefix" "${eal[@]}" \
                --log-level='pmd.net.virtio.*:info' \
                --vdev "net_virtio_user0,path=$sock,queues=1,packed_vq=$packed_vq,queue_size=$ring_size$devargs" \
                -- --forward-mode="$virtio_fwd" --nb-cores=1 --txd="$ring_size" --rxd="$ring_size" --burst="$burst" \
                --total-num-mbufs=16384 --stats-period 1000 \
                --record-core-cycles < /dev/null > "$log" 2>&1 &
            ;;
        ours)
            setsid "$fwd" --port "vhost:$sock" --forward-mode "$virtio_fwd" --cores 1 --ring "$ring" --rxd "$ring_size" \
                --txd "$ring_size" --burst "$burst" --huge-pages required "${fwd_extra[@]}" < /dev/null > "$log" 2>&1 &
            ;;
    esac
    virtio_pid=$!
    "$vhost" wait-log --prefix "$vprefix" --timeout 30 "virtio is now ready for processing" > /dev/null \
        || { cat "$log" >&2; die "$side: the virtio side never became ready (see $log)"; }
    sleep 0.3
    boost "$("$vhost" pid --prefix "$vprefix")"
    boost "$virtio_pid"
    # In loopback, traffic starts with 32 bursts from the vhost side; retry if they were sent too
    # early.
    local tries=0
    while :; do
        "$vhost" cmd --prefix "$vprefix" "$start_cmd" > /dev/null
        sleep 0.3
        [ "$(counter "$measured")" -gt 0 ] && break
        tries=$((tries + 1))
        [ "$tries" -lt 5 ] || die "$side: no traffic after $start_cmd (see $log)"
        "$vhost" cmd --prefix "$vprefix" stop > /dev/null
    done
    sleep "$warmup"
    "$vhost" cmd --prefix "$vprefix" "clear port stats all" > /dev/null
    local t0 t1 packets
    t0=$(now_ns)
    sleep "$seconds"
    packets=$(counter "$measured")
    t1=$(now_ns)
    case "$side" in dpdk*) kill -INT "$virtio_pid" ;; ours) kill -TERM "$virtio_pid" ;; esac
    local _
    for _ in $(seq 100); do kill -0 "$virtio_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$virtio_pid" 2>/dev/null && { kill -KILL "$virtio_pid"; die "$side did not exit on its signal"; }
    wait "$virtio_pid" 2>/dev/null || true
    virtio_pid=""
    "$vhost" stop --prefix "$vprefix" > "$vlog" 2>&1 || true
    rm -f /dev/hugepages/"$uprefix"*
    rm -rf /var/run/dpdk/"$uprefix"
    local cycles
    case "$side" in
        dpdk*) cycles=$(tr -d '\033' < "$log" | sed -n 's/.*CPU cycles\/packet=\([0-9.]*\).*/\1/p' | tail -1) ;;
        ours) cycles=$(sed -n 's/^FWD-SUMMARY .*cycles_per_pkt=\([0-9.]*\).*/\1/p' "$log" | tail -1) ;;
    esac
    [ -n "$cycles" ] || die "$side: no cycles/packet figure in $log"
    [ "$run" = 1 ] && echo "PATH $side $(paths_of "$side" "$log")" >> "$paths"
    # (The vhost side's own cycles/packet figure is not printed: it covers its whole session,
    # start-up and shutdown included, not the measured window.)
    awk -v p="$packets" -v t0="$t0" -v t1="$t1" -v c="$cycles" -v side="$side" -v run="$run" '
        BEGIN { mpps = p / ((t1 - t0) / 1e9) / 1e6
                printf "run %d %-4s %7.3f Mpps  %7.2f busy cycles/pkt\n", run, side, mpps, c > "/dev/stderr"
                printf "%.3f %.2f\n", mpps, c }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for side in ${sides//,/ }; do
    case "$side" in dpdk|dpdk-fast|dpdk-vec|ours) ;; *) die "--sides: unknown side '$side' (dpdk, dpdk-fast, dpdk-vec, ours)" ;; esac
done
echo "vhost-user $mode ($variant), $ring ring of $ring_size, 64-byte frames, burst $burst: $runs x ($sides), ${seconds}s each after ${warmup}s warm-up" >&2
results="$out_dir/$mode-$variant-$ring-results"
paths="$out_dir/$mode-$variant-$ring-paths"
: > "$results"
: > "$paths"
for run in $(seq "$runs"); do
    for side in ${sides//,/ }; do
        result=$(measure "$side" "$run") || exit 1
        echo "$side $run $result" >> "$results"
    done
done

# Column $2 (3: Mpps, 4: cycles) of side $1's runs.
column_of() { awk -v side="$1" -v col="$2" '$1 == side { print $col }' "$results"; }
# Side $1's ratio to side $2 in each round.
paired() { awk -v a="$1" -v b="$2" '$1 == a { x[$2] = $3 } $1 == b { y[$2] = $3 }
                                     END { for (r in x) if (y[r] > 0) printf "%.3f\n", x[r] / y[r] }' "$results"; }
has() { [[ ",$sides," == *",$1,"* ]]; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
best() { awk -v side="$1" '$1 == side && $3 > m { m = $3; c = $4 } END { printf "%s %s\n", m, c }' "$results"; }

cat "$paths"
# The fast sides must have run the paths they stand for.
while read -r _ side rest; do
    case "$side:$ring" in
        dpdk-fast:packed|dpdk-vec:split) want=vectorized ;;
        dpdk-fast:split) want=inorder ;;
        *) continue ;;
    esac
    [[ "$rest" == *"rx='"*"$want"* ]] || echo "WARNING $side did not run DPDK's $want receive path ($rest): its figures are not DPDK's fastest" >&2
done < "$paths"
best_line="BEST mode=$mode variant=$variant ring=$ring"
paired_line="PAIRED mode=$mode variant=$variant ring=$ring"
result_line="RESULT mode=$mode variant=$variant ring=$ring"
has ours && { read -r ob oc < <(best ours); best_line+=" ours_mpps=$ob ours_cycles_per_pkt=$oc"
    ours_mpps=$(column_of ours 3 | median); ours_cycles=$(column_of ours 4 | median)
    result_line+=" ours_mpps=$ours_mpps"; }
for other in dpdk dpdk-fast dpdk-vec; do
    has "$other" || continue
    key="${other/-/_}"
    suffix="${key#dpdk}"
    read -r db dc < <(best "$other")
    best_line+=" ${key}_mpps=$db ${key}_cycles_per_pkt=$dc"
    mpps=$(column_of "$other" 3 | median)
    cycles=$(column_of "$other" 4 | median)
    if has ours; then
        best_line+=" ratio$suffix=$(div "$ob" "$db")"
        paired_line+=" ratio$suffix=$(paired ours "$other" | median)"
        result_line+=" ${key}_mpps=$mpps ratio$suffix=$(div "$ours_mpps" "$mpps")"
        [ "$other" = dpdk ] && result_line+=" ours_cycles_per_pkt=$ours_cycles"
    else
        result_line+=" ${key}_mpps=$mpps"
    fi
    result_line+=" ${key}_cycles_per_pkt=$cycles"
done
echo "$best_line"
has ours && [ "$sides" != ours ] && echo "$paired_line"
echo "$result_line"
