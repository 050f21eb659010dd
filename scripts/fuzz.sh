#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/) and runs each for a bounded time; fails on any crash,
# leak or hang. The targets play the device or the vhost-user backend against the driver's own
# code and check its invariants (pmd/src/testing/fuzz.rs says which).
#
#   scripts/fuzz.sh                   # every target, 60 seconds of fuzzing in all
#   scripts/fuzz.sh --time 600        # a longer campaign, split evenly between the targets
#   scripts/fuzz.sh pci_caps          # some targets only (they share the time)
#
# Needs the nightly toolchain (sanitizer instrumentation); installs cargo-fuzz (crates.io) and a
# C++ compiler (libFuzzer's runtime, Debian's g++) when missing. Each target starts from the
# seeds kept in fuzz/seeds/<target> plus what earlier runs on this machine found
# (fuzz/corpus/<target>, not kept in git). A crash is saved in fuzz/artifacts/<target>/; the
# message says how to replay it. Prints, per target, the executions libFuzzer reports.
set -euo pipefail
cd "$(dirname "$0")/.."

total=60
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) total="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain list): cargo-fuzz needs it for" >&2
    echo "sanitizer instrumentation; install it with 'rustup toolchain install nightly'" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null; then
    echo "fuzz.sh: installing a C++ compiler for libFuzzer's runtime (Debian g++)"
    apt-get install -y g++ || { apt-get update && apt-get install -y g++; }
fi

if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
per_target=$(( total / ${#targets[@]} ))
if [ "$per_target" -lt 1 ]; then
    echo "fuzz.sh: $total s is less than a second per target" >&2
    exit 2
fi

started=$SECONDS
cargo +nightly fuzz build
echo "fuzz.sh: built in $((SECONDS - started)) s; ${#targets[@]} targets, $per_target s each"

summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    log=$(mktemp)
    # -timeout: one input running this long is a hang (no target needs more than milliseconds).
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$per_target" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n 1 || true)
        echo "fuzz.sh: $target FAILED; replay with: cargo +nightly fuzz run $target ${artifact:-fuzz/artifacts/$target/<file>}" >&2
        rm -f "$log"
        exit 1
    fi
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    summary+=("$(printf '%-18s %s (corpus %s inputs)' "$target" "$done_line" "$corpus")")
    rm -f "$log"
done

echo
echo "fuzz.sh: executions per target"
printf '  %s\n' "${summary[@]}"
echo "fuzz.sh: no crash in $((SECONDS - started)) s"
