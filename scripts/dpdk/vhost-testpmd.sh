#!/usr/bin/env bash
# DPDK's vhost-user backend (dpdk-testpmd with the net_vhost vdev), driven interactively through a
# FIFO on its stdin, for integration tests and benchmarks. One instance per --prefix (its EAL
# --file-prefix); its state lives in $VHOST_TESTPMD_STATE/<prefix>/ (default /tmp/vhost-testpmd):
#   pid      testpmd's pid            keeper   pid of the process holding the FIFO open
#   in       the FIFO on its stdin    out      everything it printed (line-buffered)
#   socket   the vhost-user socket path
#
# Subcommands:
#   start --socket PATH [--prefix P] [--queues N] [--fwd io|mac|macswap|txonly|rxonly|flowgen|csum]
#         [--txpkt-size BYTES] [--lcores 0,1] [--main-lcore 1] [--nb-cores 1] [--ring 1024]
#         [--mbufs 16384] [--vdev-extra ',k=v'] [--eal-extra '...'] [--app-extra '...']
#         [--forward | --tx-first N] [--timeout S]
#       Starts testpmd (server side of the socket), waits for its first prompt, prints its pid.
#       --forward sends `start` once it is up, --tx-first N sends `start tx_first N`.
#   cmd [--prefix P] [--timeout S] COMMAND...
#       Sends one testpmd command line and prints what it printed up to the next prompt.
#   send [--prefix P] COMMAND...
#       Sends one command line without waiting for the prompt. For a command after which the
#       forwarding lcores print (`set verbose 1`): testpmd writes its prompt a character at a
#       time, so their lines can split it, and `cmd` would wait for a prompt it cannot see.
#   stats [--prefix P]       = cmd "show port stats all"
#   wait-log [--prefix P] [--timeout S] REGEX
#       Waits until testpmd's output matches REGEX (e.g. "new device"), prints the matching line.
#   stop [--prefix P] [--timeout S]
#       Sends `quit` (which stops forwarding and prints the forward statistics), prints the
#       output, kills the process by pid if it is still alive after the timeout, and removes the
#       FIFO, the socket, /dev/hugepages/<prefix>* files and the state directory (kept, with
#       testpmd's output, when VHOST_TESTPMD_KEEP is set).
#   pid | log | dir [--prefix P]
#
# Exit status is non-zero, with a message on stderr, when something did not happen in time.
# Commands for one instance are serialised with flock, so concurrent callers do not interleave.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/need.sh
. "$here/../lib/need.sh"
# dpdk-testpmd itself (with its plugins and the huge pages) comes from install.sh: see cmd_start.
need_commands setsid:util-linux flock:util-linux mountpoint:util-linux awk:mawk

state_root="${VHOST_TESTPMD_STATE:-/tmp/vhost-testpmd}"
prompt='testpmd> '

die() { echo "vhost-testpmd.sh: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# A live process: exists and is not a zombie (a killed testpmd may wait a while to be reaped).
alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Prints the bytes of $dir/out after byte offset $1.
out_since() { tail -c "+$(($1 + 1))" "$dir/out" 2>/dev/null || true; }

out_size() { stat -c %s "$dir/out" 2>/dev/null || echo 0; }

# Waits until the output after offset $1 holds a prompt; prints that output without the prompt.
wait_prompt() {
    local from="$1" timeout="$2" pid deadline now text
    pid="$(cat "$dir/pid")"
    deadline=$(( $(date +%s%N) / 1000000 + timeout * 1000 ))
    while :; do
        text="$(out_since "$from")"
        if [[ "$text" == *"$prompt"* ]]; then
            printf '%s\n' "${text%"$prompt"*}"
            return 0
        fi
        alive "$pid" || { printf '%s\n' "$text"; die "testpmd (pid $pid) exited; see $dir/out"; }
        now=$(( $(date +%s%N) / 1000000 ))
        [ "$now" -lt "$deadline" ] || { printf '%s\n' "$text"; die "no prompt from testpmd within ${timeout}s"; }
        sleep 0.02
    done
}

send() {
    # Opened read-write, a FIFO never blocks on open, even when testpmd has just died; the line
    # then sits unread in the pipe, which is gone with the FIFO.
    local fd
    exec {fd}<>"$dir/in"
    printf '%s\n' "$*" >&"$fd"
    exec {fd}>&-
}

remove_files() {
    local prefix="$1"
    rm -f "/dev/hugepages/${prefix}"map_* "/dev/hugepages/${prefix}"seg* 2>/dev/null || true
    # Anything else DPDK named after the prefix (other EAL layouts).
    find /dev/hugepages -maxdepth 1 -name "${prefix}*" -type f -delete 2>/dev/null || true
    rm -rf "/var/run/dpdk/${prefix}" 2>/dev/null || true
    [ -f "$dir/socket" ] && rm -f "$(cat "$dir/socket")"
    rm -f "$dir/in" "$dir/keeper" "$dir/pid"
}

kill_pid() {
    local pid="$1"
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 20); do alive "$pid" || return 0; sleep 0.1; done
}

cmd_start() {
    local socket="" queues=1 fwd=io txpkt="" lcores="0,1" main_lcore=1 nb_cores=1 ring=1024
    local mbufs=16384 vdev_extra="" eal_extra="" app_extra="" then="" tx_first=32 timeout=30
    while [ $# -gt 0 ]; do
        case "$1" in
            --socket) socket="$2"; shift 2 ;;
            --prefix) prefix="$2"; shift 2 ;;
            --queues) queues="$2"; shift 2 ;;
            --fwd) fwd="$2"; shift 2 ;;
            --txpkt-size) txpkt="$2"; shift 2 ;;
            --lcores) lcores="$2"; shift 2 ;;
            --main-lcore) main_lcore="$2"; shift 2 ;;
            --nb-cores) nb_cores="$2"; shift 2 ;;
            --ring) ring="$2"; shift 2 ;;
            --mbufs) mbufs="$2"; shift 2 ;;
            --vdev-extra) vdev_extra="$2"; shift 2 ;;
            --eal-extra) eal_extra="$2"; shift 2 ;;
            --app-extra) app_extra="$2"; shift 2 ;;
            --forward) then=start; shift ;;
            --tx-first) then=tx_first; tx_first="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            *) die "start: unknown option $1" ;;
        esac
    done
    [ -n "$socket" ] || die "start: --socket PATH is required"
    case "$fwd" in io|mac|macswap|txonly|rxonly|flowgen|csum|icmpecho|5tswap) ;;
        *) die "start: unsupported forwarding mode '$fwd'" ;; esac
    # Our stdout is testpmd's pid for the caller: install.sh's report goes to stderr.
    if ! command -v dpdk-testpmd >/dev/null || ! mountpoint -q /dev/hugepages; then
        "$here/install.sh" >&2 || die "scripts/dpdk/install.sh failed"
    fi
    command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found: run scripts/dpdk/install.sh"
    mountpoint -q /dev/hugepages || die "no hugetlbfs at /dev/hugepages: run scripts/dpdk/install.sh"
    local free
    free="$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)"
    [ "$free" -ge 32 ] || die "only $free free 2 MiB huge pages (testpmd needs about 30): run scripts/dpdk/install.sh, or stop other DPDK processes"

    dir="$state_root/$prefix"
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && alive "$(cat "$dir/pid")"; then
        die "an instance with prefix '$prefix' is already running (pid $(cat "$dir/pid")): stop it with '$0 stop --prefix $prefix'"
    fi
    remove_files "$prefix"
    rm -f "$socket" "$dir/out"
    printf '%s\n' "$socket" > "$dir/socket"
    mkfifo "$dir/in"
    # Keep a writer on the FIFO for testpmd's whole life: without one it reads EOF and exits.
    # The keeper's stdin/stdout are detached so callers capturing our output are not held open.
    # shellcheck disable=SC2217 # sleep reads nothing: the redirections only detach it
    sleep infinity > "$dir/in" < /dev/null 2>/dev/null &
    echo $! > "$dir/keeper"

    local app_args=(-i "--nb-cores=$nb_cores" "--txd=$ring" "--rxd=$ring" "--rxq=$queues" "--txq=$queues"
        "--total-num-mbufs=$mbufs" --record-core-cycles "--forward-mode=$fwd")
    [ -n "$txpkt" ] && app_args+=("--txpkts=$txpkt")
    # shellcheck disable=SC2206
    app_args+=($app_extra)
    # shellcheck disable=SC2206
    local eal_args=(-l "$lcores" --main-lcore "$main_lcore" -n 1 --no-pci --single-file-segments
        "--file-prefix=$prefix" --vdev "net_vhost0,iface=$socket,queues=$queues$vdev_extra" $eal_extra)

    # stdbuf: testpmd's printf output would otherwise sit in a 4 KiB buffer, not in $dir/out.
    setsid stdbuf -oL -eL dpdk-testpmd "${eal_args[@]}" -- "${app_args[@]}" \
        < "$dir/in" > "$dir/out" 2>&1 &
    local pid=$!
    echo "$pid" > "$dir/pid"
    if ! wait_prompt 0 "$timeout" > /dev/null; then
        cat "$dir/out" >&2
        kill_pid "$pid"
        alive "$(cat "$dir/keeper" 2>/dev/null)" && kill "$(cat "$dir/keeper")" 2>/dev/null
        remove_files "$prefix"
        grep -q -i "hugepage" "$dir/out" && echo "hint: run scripts/dpdk/install.sh to reserve huge pages" >&2
        die "testpmd did not come up within ${timeout}s"
    fi
    [ -S "$socket" ] || die "testpmd is up but $socket is not a socket; see $dir/out"
    case "$then" in
        start) with_lock run_cmd "$timeout" start > /dev/null ;;
        tx_first) with_lock run_cmd "$timeout" "start tx_first $tx_first" > /dev/null ;;
    esac
    echo "$pid"
}

run_cmd() {
    local timeout="$1"; shift
    local from
    from="$(out_size)"
    send "$*"
    wait_prompt "$from" "$timeout"
}

with_lock() {
    exec 9> "$dir/lock"
    flock -w 60 9 || die "another caller holds $dir/lock"
    "$@"
}

require_running() {
    [ -f "$dir/pid" ] || die "no instance with prefix '$prefix' (no $dir/pid): start one with '$0 start'"
    alive "$(cat "$dir/pid")" || die "testpmd with prefix '$prefix' (pid $(cat "$dir/pid")) is not running; see $dir/out"
}

cmd_stop() {
    local timeout=10 pid keeper
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) prefix="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            *) die "stop: unknown option $1" ;;
        esac
    done
    dir="$state_root/$prefix"
    [ -d "$dir" ] || { echo "no instance with prefix '$prefix'" >&2; return 0; }
    pid="$(cat "$dir/pid" 2>/dev/null || true)"
    keeper="$(cat "$dir/keeper" 2>/dev/null || true)"
    if alive "$pid"; then
        local from deadline
        from="$(out_size)"
        send quit
        deadline=$(( $(date +%s) + timeout ))
        while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
        out_since "$from"
        if alive "$pid"; then
            echo "vhost-testpmd.sh: testpmd (pid $pid) did not quit within ${timeout}s; killing it" >&2
            kill_pid "$pid"
        fi
    fi
    alive "$keeper" && kill "$keeper" 2>/dev/null
    remove_files "$prefix"
    [ -n "${VHOST_TESTPMD_KEEP:-}" ] || rm -rf "$dir"
}

[ $# -ge 1 ] || usage
sub="$1"; shift
prefix="${VHOST_TESTPMD_PREFIX:-vhtpmd}"
case "$sub" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    cmd|send|stats|wait-log|pid|log|dir)
        timeout=10
        while [ $# -gt 0 ]; do
            case "$1" in
                --prefix) prefix="$2"; shift 2 ;;
                --timeout) timeout="$2"; shift 2 ;;
                *) break ;;
            esac
        done
        dir="$state_root/$prefix"
        case "$sub" in
            cmd) [ $# -ge 1 ] || die "cmd: no command given"; require_running; with_lock run_cmd "$timeout" "$*" ;;
            send) [ $# -ge 1 ] || die "send: no command given"; require_running; with_lock send "$*" ;;
            stats) require_running; with_lock run_cmd "$timeout" "show port stats all" ;;
            wait-log)
                [ $# -ge 1 ] || die "wait-log: no pattern given"
                deadline=$(( $(date +%s) + timeout ))
                until grep -E -m1 -- "$1" "$dir/out" 2>/dev/null; do
                    [ "$(date +%s)" -lt "$deadline" ] || die "'$1' did not appear in $dir/out within ${timeout}s"
                    sleep 0.05
                done ;;
            pid) cat "$dir/pid" ;;
            log) cat "$dir/out" ;;
            dir) echo "$dir" ;;
        esac ;;
    -h|--help|help) usage ;;
    *) die "unknown subcommand '$sub' (start, cmd, send, stats, wait-log, stop, pid, log, dir)" ;;
esac
