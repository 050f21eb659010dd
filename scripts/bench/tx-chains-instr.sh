#!/usr/bin/env bash
# Instructions per packet of multi-segment transmit: direct descriptor chains (one descriptor per
# segment) against indirect tables (one descriptor per packet, VIRTIO_F_INDIRECT_DESC), for
# packets of 2, 3 and 4 segments of 64 bytes, packed and split rings of 1024, bursts of 32,
# against the software device as a sink stepped inline (benches/src/lib.rs, TxChainsRig).
#
#   scripts/bench/tx-chains-instr.sh [--iterations N]
#
# Each case runs target/release/tx-chains-instr under `valgrind --tool=callgrind`, collecting
# only inside its measured loop (`--toggle-collect`): building the packets (allocation and
# chaining, the same for both layouts), tx_burst, reclaim, and the device's reading of the
# descriptors and tables. Two figures per case: the driver's (TxQueue::transmit_chains, the
# chains path of tx_burst, with its reclaim, inclusive) and the whole loop's (with the packets'
# building and the software device, whose reading of a table costs it more than a chain).
# Run it under the heavy lock (flock /tmp/virtio-pmd-heavy.lock). Printed last, one line per
# ring format, the driver's instructions per packet:
#   RESULT tx_chains ring=<r> seg2_chain=<n> seg2_indirect=<n> seg3_chain=.. seg4_indirect=<n>
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

iterations=2000
while [ $# -gt 0 ]; do
    case "$1" in
        --iterations) iterations="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/need.sh
. "$root/scripts/lib/need.sh"
need_commands valgrind:valgrind callgrind_annotate:valgrind python3:python3-minimal cc:gcc

cargo build --release -q -p virtio-pmd-benches --bin tx-chains-instr
out="$root/target/bench/tx-chains"
mkdir -p "$out"
printf '%-7s %-9s %s\n' ring segments "instr/pkt: driver chain, indirect | whole loop chain, indirect"
for ring in packed split; do
    line="RESULT tx_chains ring=$ring"
    for segments in 2 3 4; do
        drivers="" wholes=""
        for layout in chain indirect; do
            file="$out/$ring-$segments-$layout.out"
            valgrind --tool=callgrind --dump-instr=no --toggle-collect='tx_chains_instr::measured' \
                --callgrind-out-file="$file" "$root/target/release/tx-chains-instr" \
                "$ring" "$layout" "$segments" "$iterations" > "$out/$ring-$segments-$layout.log" 2>&1 \
                || { cat "$out/$ring-$segments-$layout.log" >&2; exit 1; }
            packets=$(sed -n 's/^packets=//p' "$out/$ring-$segments-$layout.log")
            read -r driver whole < <(callgrind_annotate --inclusive=yes --threshold=100 "$file" | python3 -c '
import re, sys
packets = int(sys.argv[1])
total = driver = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s+\(.*?\)\s+(\S.*)", line)
    if not m:
        continue
    n = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in line:
        total = n
    elif "TxQueue::transmit_chains" in m.group(2):
        driver = max(driver, n)
print(f"{driver / packets:.1f} {total / packets:.1f}")' "$packets")
            drivers="$drivers $driver" wholes="$wholes $whole"
            line="$line seg${segments}_$layout=$driver"
        done
        printf '%-7s %-9s %s |%s\n' "$ring" "$segments" "$drivers" "$wholes"
    done
    echo "$line"
done
