#!/usr/bin/env bash
# Latency against load: pktgen through DPDK's vhost-user backend in macswap mode, at several
# fractions of the maximum rate, one latency line per rate and one plot with every curve.
#
#   scripts/bench/latency.sh [--split] [--sizes 64] [--flows 4] [--seconds S] [--max-seconds S]
#                            [--fractions 0.1,0.25,0.5,0.75,0.9] [--burst B] [--nice N]
#   PKTGEN_BIN=/path/to/pktgen scripts/bench/latency.sh ...   # a prebuilt pktgen; no build
#
# The vhost side: dpdk-testpmd with net_vhost, macswap forwarding on core 0 (`-l 0,1
# --main-lcore 1`); pktgen on core 1 (`--core 1`), one queue pair, packed rings unless --split.
# First pktgen runs as fast as it can for --max-seconds (default 3): the rate of frames that came
# back is the maximum. Then one run of --seconds (default 3) at each fraction of it, TSC-paced:
# each frame is stamped with its due time, so time spent waiting in pktgen counts.
# Printed: a table (fraction, rate, frames, lost, latency p50/p90/p99/p99.9/max in us), then
#   RESULT ring=<r> max_mpps=<m> p99_us=<at each fraction, comma-separated> plot=<file>
# The JSON summaries, logs and plots stay in $BENCH_DIR (default target/bench/latency); the
# plot with every curve is latency-<ring>.svg there.
# Not a pass/fail test: on a shared 2-core machine other work preempts the pollers, which shows
# in the tail (and often the median) at every rate, and as loss (a preempted pktgen leaves its
# receive ring full and the vhost side drops). --nice -10 (root) renices both pollers' threads
# so that they win the cores over other work (which then crawls for the length of the run).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

ring=packed sizes=64 flows=4 seconds=3 max_seconds=3 fractions="0.1,0.25,0.5,0.75,0.9" burst=32 nice=0
while [ $# -gt 0 ]; do
    case "$1" in
        --split) ring="split"; shift ;;
        --packed) ring="packed"; shift ;;
        --sizes) sizes="$2"; shift 2 ;;
        --flows) flows="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --max-seconds) max_seconds="$2"; shift 2 ;;
        --fractions) fractions="$2"; shift 2 ;;
        --burst) burst="$2"; shift 2 ;;
        --nice) nice="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "latency.sh: $*" >&2; exit 1; }
# shellcheck source=../lib/need.sh
. "$root/scripts/lib/need.sh"
need_commands awk:mawk sed:sed renice:bsdutils
command -v dpdk-testpmd >/dev/null || "$root/scripts/dpdk/install.sh" >&2
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found: run scripts/dpdk/install.sh"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (vhost side on core 0, pktgen on core 1)"

vhost="$root/scripts/dpdk/vhost-testpmd.sh"
pktgen="${PKTGEN_BIN:-$root/target/release/pktgen}"
out_dir="${BENCH_DIR:-$root/target/bench/latency}"
tag="lat$$"
sock="/tmp/$tag.sock"
mkdir -p "$out_dir"

cleanup() { "$vhost" stop --prefix "$tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [ -z "${PKTGEN_BIN:-}" ]; then
    need_commands cc:gcc    # cargo links with cc
    echo "building pktgen (release) ..." >&2
    cargo build --release -q -p virtio-pmd-apps --bin pktgen
fi
[ -x "$pktgen" ] || die "no pktgen binary at $pktgen"

# Number KEY of the JSON summary (the last line) in FILE.
field() { tail -n 1 "$1" | sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p"; }

# Renices every thread of process $1 to $nice (renice alone changes one thread only).
boost() {
    [ "$nice" = 0 ] && return 0
    local task
    for task in /proc/"$1"/task/*; do
        renice -n "$nice" -p "${task##*/}" > /dev/null 2>&1 || echo "latency.sh: cannot renice thread ${task##*/} (root needed for a negative --nice)" >&2
    done
}

# One pktgen run into $out_dir/$ring-NAME.json (stderr: NAME.log); extra options follow NAME.
run_pktgen() {
    local name="$1"
    shift
    nice -n "$nice" "$pktgen" --port "vhost:$sock" --ring "$ring" --core 1 --sizes "$sizes" --flows "$flows" \
        --burst "$burst" --huge-pages required --json "$@" > "$out_dir/$ring-$name.json" 2> "$out_dir/$ring-$name.log" \
        || { cat "$out_dir/$ring-$name.log" >&2; die "pktgen ($name) failed"; }
}

"$vhost" start --socket "$sock" --prefix "$tag" --fwd macswap --lcores 0,1 --main-lcore 1 \
    --app-extra "--burst=$burst" --forward > /dev/null
boost "$("$vhost" pid --prefix "$tag")"

echo "latency through DPDK vhost macswap: $ring ring, ${sizes} B, $flows flows, burst $burst" >&2
run_pktgen max --duration "$max_seconds"
max_mpps=$(field "$out_dir/$ring-max.json" rx_mpps)
max_lost=$(field "$out_dir/$ring-max.json" lost)
[ -n "$max_mpps" ] || die "no rx_mpps in $out_dir/$ring-max.json"
awk -v m="$max_mpps" 'BEGIN { exit !(m > 0) }' || die "nothing came back at the maximum rate"
printf '%-8s %9s %9s %7s %9s %9s %9s %9s %9s\n' fraction Mpps frames lost p50_us p90_us p99_us p99.9_us max_us
row() {
    local f="$1" file="$2"
    printf '%-8s %9.3f %9s %7s %9.1f %9.1f %9.1f %9.1f %9.1f\n' "$f" "$(field "$file" rx_mpps)" "$(field "$file" sent)" \
        "$(field "$file" lost)" "$(field "$file" p50_us)" "$(field "$file" p90_us)" "$(field "$file" p99_us)" \
        "$(field "$file" p999_us)" "$(field "$file" max_us)"
}
row max "$out_dir/$ring-max.json"

overlays=()
p99s=()
IFS=, read -r -a fraction_list <<< "$fractions"
last=$(( ${#fraction_list[@]} - 1 ))
for i in "${!fraction_list[@]}"; do
    f="${fraction_list[$i]}"
    rate=$(awk -v m="$max_mpps" -v f="$f" 'BEGIN { printf "%.0f", m * f * 1e6 }')
    plot_args=(--plot "$out_dir/$ring-$f.svg")
    # The last run draws every curve (the maximum's too) on the summary plot.
    if [ "$i" = "$last" ]; then
        plot_args=(--plot "$out_dir/latency-$ring.svg" "${overlays[@]}" --overlay "$out_dir/$ring-max.json")
    fi
    run_pktgen "$f" --rate "$rate" --duration "$seconds" "${plot_args[@]}"
    overlays+=(--overlay "$out_dir/$ring-$f.json")
    row "$f" "$out_dir/$ring-$f.json"
    p99s+=("$(field "$out_dir/$ring-$f.json" p99_us)")
done
[ "${max_lost:-0}" = 0 ] || echo "(at the maximum rate $max_lost frames were lost: the vhost side dropped them)" >&2
echo "RESULT ring=$ring max_mpps=$max_mpps fractions=$fractions p99_us=$(IFS=,; echo "${p99s[*]}") plot=$out_dir/latency-$ring.svg"
