#!/bin/bash
# mkinitramfs.sh: build the VM harness's initramfs (a gzip'ed newc cpio).
#
# Contents: busybox (static) with its applet links, the given static binaries in /bin, the VFIO
# modules fetched by fetch-guest.sh (/lib/modules), the extra modules (/lib/modules/extra, loaded
# only on demand with /bin/loadmod), /bin/bind-vfio.sh, and /init (scripts/vm/init.sh).
# The guest command is /vmcmd.sh: run-vm.sh appends it per run (--cmd/--script); --script here
# bakes a default into this image.
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 [--script FILE] [--file SRC[:DST]]... [--no-strip] OUT.cpio.gz [BINARY...]
  Build an initramfs for scripts/vm/run-vm.sh with the given static binaries in /bin.
  Their debug info is stripped (symbols stay, so backtraces name functions) unless --no-strip.
  --script FILE     bake FILE in as /vmcmd.sh (the guest command; run-vm.sh can override it)
  --file SRC[:DST]  add a file (DST: absolute path in the guest; default /SRC's basename)
  Needs scripts/vm/fetch-guest.sh to have run (it does so itself if target/vm is incomplete).
  Build Rust binaries static: RUSTFLAGS="-C target-feature=+crt-static" \\
    cargo build --release --target x86_64-unknown-linux-gnu
USAGE
}

die() { echo "mkinitramfs: error: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VM_DIR=${VM_DIR:-$ROOT/target/vm}

SCRIPT=""
FILES=()
STRIP=1
while [ $# -gt 0 ]; do
    case "$1" in
        --script) SCRIPT=${2:?--script needs a file}; shift ;;
        --file) FILES+=("${2:?--file needs SRC[:DST]}"); shift ;;
        --no-strip) STRIP=0 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "mkinitramfs: unknown option '$1'" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
OUT=$1
shift

# shellcheck source=../lib/need.sh
. "$ROOT/scripts/lib/need.sh"
# readelf: refuse dynamic binaries; strip: drop their debug info. (busybox: fetch-guest.sh's.)
need_commands cpio:cpio gzip:gzip readelf:binutils strip:binutils
if [ ! -s "$VM_DIR/modules/load-order" ] || [ ! -x "$VM_DIR/busybox" ]; then
    "$HERE/fetch-guest.sh" --dir "$VM_DIR"
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/vm-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,lib/modules/extra}

install -m 0755 "$VM_DIR/busybox" "$STAGE/bin/busybox"
# Applet links: every applet busybox knows, where it says it belongs (bin/sh, sbin/insmod, ...).
while read -r applet; do
    [ -e "$STAGE/$applet" ] && continue
    ln -s /bin/busybox "$STAGE/$applet"
done < <("$VM_DIR/busybox" --list-full)

install -m 0644 "$VM_DIR"/modules/*.ko "$VM_DIR/modules/load-order" "$STAGE/lib/modules/"
install -m 0644 "$VM_DIR"/modules/extra/*.ko "$VM_DIR/modules/extra/load-order" "$STAGE/lib/modules/extra/"
# The vfio module with no-IOMMU mode, when build-vfio-noiommu.sh made one (vmbind=vfio-noiommu).
if [ -s "$VM_DIR/noiommu/vfio.ko" ]; then
    mkdir -p "$STAGE/lib/modules/noiommu"
    install -m 0644 "$VM_DIR/noiommu/vfio.ko" "$STAGE/lib/modules/noiommu/"
fi
install -m 0755 "$HERE/init.sh" "$STAGE/init"
install -m 0755 "$ROOT/scripts/bind-vfio.sh" "$STAGE/bin/bind-vfio.sh"
install -m 0755 "$HERE/loadmod.sh" "$STAGE/bin/loadmod"
install -m 0755 "$HERE/vm-wait-host.sh" "$STAGE/bin/vm-wait-host"
echo "root:x:0:0:root:/root:/bin/sh" >"$STAGE/etc/passwd"

for bin in "$@"; do
    [ -f "$bin" ] || die "no such binary: $bin"
    if command -v readelf >/dev/null && readelf -lW "$bin" 2>/dev/null | grep -q 'program interpreter'; then
        die "$bin is dynamically linked; the guest has no libc. Build it static:" \
            "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --target x86_64-unknown-linux-gnu"
    fi
    install -m 0755 "$bin" "$STAGE/bin/$(basename "$bin")"
    if [ "$STRIP" -eq 1 ] && command -v strip >/dev/null; then
        strip --strip-debug "$STAGE/bin/$(basename "$bin")"
    fi
done
if [ -n "$SCRIPT" ]; then
    [ -f "$SCRIPT" ] || die "no such script: $SCRIPT"
    install -m 0755 "$SCRIPT" "$STAGE/vmcmd.sh"
fi
for spec in "${FILES[@]}"; do
    src=${spec%%:*}
    dst=/$(basename "$src")
    [ "$spec" = "$src" ] || dst=${spec#*:}
    [ -f "$src" ] || die "no such file: $src"
    mkdir -p "$STAGE$(dirname "$dst")"
    install -m 0755 "$src" "$STAGE$dst"
done

mkdir -p "$(dirname "$OUT")"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -4 >"$OUT.tmp.$$"
mv "$OUT.tmp.$$" "$OUT"
echo "mkinitramfs: wrote $OUT ($(du -k "$OUT" | cut -f1) KiB; kernel $(cat "$VM_DIR/kernel-version"))"
