# shellcheck shell=sh
# need.sh: install the Debian packages that bring the commands a script calls, when they are missing.
# Sourced (by bash scripts and by the POSIX sh script bind-vfio.sh):
#
#   . "$ROOT/scripts/lib/need.sh"
#   need_commands qemu-system-x86_64:qemu-system-x86 depmod:kmod cpio:cpio
#   need_packages libc6-dev      # packages that bring no command of their own (libraries, plugins)
#
# need_commands takes COMMAND:PACKAGE pairs: a command the script runs and the Debian 12 package
# that brings it. A command counts as present when it is an executable file on PATH (a shell
# builtin of the same name, like bash's kill, does not count: programs that exec it need the file).
# When some are missing, their packages are installed with one
#   apt-get install -y --no-install-recommends PACKAGE...
# (as root, else through sudo), preceded by one `apt-get update` when apt knows none of them, and
# retried once after an `apt-get update` when the install fails (stale package lists). Then every
# command is looked up again; a missing one is reported with its package and the function returns 1
# (callers run under `set -e`, or add `|| exit N`). need_packages does the same for packages,
# checked with dpkg-query.
#
# Not listed by the scripts: the commands of the shell, coreutils, grep, sed and findutils. Every
# Debian system has them (Essential packages: dpkg does not remove them without being forced).
#
# Installs from concurrent runs (the VM harness runs in parallel) take turns on a lock file, and
# apt waits for dpkg's own lock. Set NEED_QUIET=1 to drop the "installing" line.

# depmod, modprobe and ip live in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin; export PATH ;; esac

# need_have CMD: is CMD an executable file on PATH (or, when it holds a '/', at that path)?
need_have() {
    case $1 in */*) [ -f "$1" ] && [ -x "$1" ]; return ;; esac
    _need_found=$(command -v "$1" 2>/dev/null) || return 1
    case $_need_found in /*) return 0 ;; esac
    # A builtin, function or alias: look for the file itself.
    _need_ifs=$IFS
    IFS=:
    for _need_dir in $PATH; do
        if [ -f "${_need_dir:-.}/$1" ] && [ -x "${_need_dir:-.}/$1" ]; then IFS=$_need_ifs; return 0; fi
    done
    IFS=$_need_ifs
    return 1
}

# need_installed PKG: is the Debian package installed?
need_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

_need_who() { basename -- "${0:-need}"; }

# _need_apt PKG...: install the packages (root or sudo); prints apt's output only on failure.
_need_apt() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$(_need_who): cannot install $*: no apt-get on this machine (the scripts expect Debian 12)" >&2
        return 1
    fi
    _need_sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "$(_need_who): need to install $* but not root and no sudo: run as root, or: apt-get install $*" >&2
            return 1
        fi
        _need_sudo=sudo
    fi
    [ "${NEED_QUIET:-0}" = 1 ] || echo "$(_need_who): installing $* (apt-get install --no-install-recommends)" >&2
    _need_log=$(mktemp "${TMPDIR:-/tmp}/need-apt.XXXXXX") || return 1
    _need_lock=${TMPDIR:-/tmp}/virtio-pmd-apt.lock
    if ! { : >>"$_need_lock"; } 2>/dev/null; then _need_lock=/dev/null; fi
    chmod a+rw "$_need_lock" 2>/dev/null || true
    # A subshell, so that the lock's descriptor never clashes with the caller's. Its status:
    # 0 or 1 (installed or not), plus 10 when it ran `apt-get update`.
    (
        if command -v flock >/dev/null 2>&1; then flock 8; fi
        # shellcheck disable=SC2086 # $_need_sudo is empty or one word
        apt_run() { $_need_sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
        updated=${NEED_APT_UPDATED:-0}
        # Fresh images ship without package lists: then apt knows none of the packages.
        if [ "$updated" != 1 ]; then
            known=0
            for p in "$@"; do
                if apt-cache show "$p" >/dev/null 2>&1; then known=1; break; fi
            done
            if [ "$known" = 0 ]; then
                apt_run update -qq || exit 11
                updated=2
            fi
        fi
        if apt_run install -y -qq --no-install-recommends "$@"; then
            [ "$updated" = 2 ] && exit 10
            exit 0
        fi
        # Stale package lists (the archive moved on): update once, try again.
        [ "$updated" = 2 ] && exit 11
        [ "$updated" = 1 ] && exit 1
        apt_run update -qq || exit 11
        apt_run install -y -qq --no-install-recommends "$@" || exit 11
        exit 10
    ) 8>>"$_need_lock" >"$_need_log" 2>&1
    _need_rc=$?
    if [ "$_need_rc" -ge 10 ]; then
        # One update per run: the installs after it (here and in the scripts this one starts) use it.
        NEED_APT_UPDATED=1
        export NEED_APT_UPDATED
        _need_rc=$((_need_rc - 10))
    fi
    if [ "$_need_rc" -ne 0 ]; then
        tail -n 20 "$_need_log" >&2
        echo "$(_need_who): apt-get install $* failed: is Debian's package archive reachable?" >&2
    fi
    rm -f "$_need_log"
    return "$_need_rc"
}

# need_commands CMD:PKG...: make sure every CMD is on PATH, installing its PKG when missing.
need_commands() {
    _need_pkgs=""
    _need_for=""
    for _need_spec in "$@"; do
        _need_cmd=${_need_spec%%:*}
        _need_pkg=${_need_spec#*:}
        if [ "$_need_cmd" = "$_need_spec" ] || [ -z "$_need_cmd" ] || [ -z "$_need_pkg" ]; then
            echo "$(_need_who): need_commands: '$_need_spec' is not COMMAND:PACKAGE" >&2
            return 2
        fi
        need_have "$_need_cmd" && continue
        _need_for="$_need_for $_need_cmd"
        case " $_need_pkgs " in *" $_need_pkg "*) ;; *) _need_pkgs="$_need_pkgs $_need_pkg" ;; esac
    done
    [ -n "$_need_pkgs" ] || return 0
    [ "${NEED_QUIET:-0}" = 1 ] || echo "$(_need_who): missing:$_need_for" >&2
    # shellcheck disable=SC2086 # one word per package
    _need_apt $_need_pkgs || true
    hash -r 2>/dev/null || true
    _need_bad=0
    for _need_spec in "$@"; do
        _need_cmd=${_need_spec%%:*}
        _need_pkg=${_need_spec#*:}
        if ! need_have "$_need_cmd"; then
            echo "$(_need_who): '$_need_cmd' is missing; it comes with the Debian package $_need_pkg (apt-get install $_need_pkg)" >&2
            _need_bad=1
        fi
    done
    return "$_need_bad"
}

# need_packages PKG...: make sure every Debian package is installed.
need_packages() {
    _need_pkgs=""
    for _need_pkg in "$@"; do
        need_installed "$_need_pkg" || _need_pkgs="$_need_pkgs $_need_pkg"
    done
    [ -n "$_need_pkgs" ] || return 0
    # shellcheck disable=SC2086 # one word per package
    _need_apt $_need_pkgs || true
    _need_bad=0
    for _need_pkg in "$@"; do
        if ! need_installed "$_need_pkg"; then
            echo "$(_need_who): the Debian package $_need_pkg is not installed (apt-get install $_need_pkg)" >&2
            _need_bad=1
        fi
    done
    return "$_need_bad"
}
