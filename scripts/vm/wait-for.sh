#!/bin/bash
# wait-for.sh: wait until a line of a (growing) console log matches a pattern.
#
# For callers that start run-vm.sh in the background and must not send traffic before the guest
# is ready. Stops early, with exit 1, when the guest already finished (VMCMD-EXIT in the log).
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 LOG REGEX [TIMEOUT_SECS]
  Wait until a line of LOG matches the extended regex REGEX (default timeout 120 s).
  Exit 0 when it does; 1 when the guest exits first (VMCMD-EXIT) or the timeout passes.
USAGE
}

if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage >&2; exit 2; fi
LOG=$1
RE=$2
TIMEOUT=${3:-120}
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "wait-for: timeout '$TIMEOUT' is not a number" >&2; exit 2; }

deadline=$(($(date +%s) + TIMEOUT))
while :; do
    if [ -f "$LOG" ]; then
        if tr -d '\r' <"$LOG" | grep -Eq -- "$RE"; then
            exit 0
        fi
        if tr -d '\r' <"$LOG" | grep -q '^VMCMD-EXIT '; then
            echo "wait-for: the guest exited before printing /$RE/ ($LOG)" >&2
            exit 1
        fi
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "wait-for: no line matching /$RE/ in $LOG after ${TIMEOUT}s" >&2
        exit 1
    fi
    sleep 0.2
done
