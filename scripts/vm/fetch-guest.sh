#!/bin/bash
# fetch-guest.sh: fetch the guest kernel, its VFIO modules and busybox for the QEMU VM harness.
#
# Installs the host packages the harness needs when their commands are missing (see "host
# packages" below: QEMU, cpio, kmod for depmod, the decompressors, binutils, python3; through
# scripts/lib/need.sh), downloads Debian's guest kernel (the real
# image package named by the `linux-image-amd64` meta package, resolved now, never hard-coded)
# and busybox-static with `apt-get download`, unpacks them with `dpkg -x` and leaves in $VM_DIR
# (default target/vm):
#
#   vmlinuz            the guest kernel (bzImage)
#   vmlinux            the same kernel uncompressed, when it has a PVH entry point (Xen ELF note
#                      PHYS32_ENTRY): QEMU boots it directly, skipping firmware and decompressor
#                      (about 3 s less under TCG); vmlinux.none marks a kernel without one
#   busybox            a static busybox
#   modules/*.ko       the modules the guest loads, decompressed (busybox insmod takes plain .ko)
#   modules/load-order the module names in the order /init loads them (dependencies first)
#   modules/extra/*.ko modules the guest does NOT load at boot (virtio-pci, virtio-net): error-path
#                      tests load them with `loadmod` to give a device to another driver
#   kernel-version     the kernel release (e.g. 6.1.0-56-amd64)
#
# Everything is cached: a second run with the files present does nothing (use --force to refresh).
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 [--force] [--dir DIR]
  Fetch the guest kernel + modules + busybox for the VM harness into DIR (default: target/vm).
  --force   download and unpack again even when the cache is complete
USAGE
}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VM_DIR=${VM_DIR:-$ROOT/target/vm}
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --dir) VM_DIR=${2:?--dir needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fetch-guest: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# Modules loaded at boot, in this order (vm-harness.md). Their dependencies from modules.dep are
# added in front of them automatically.
BOOT_MODULES="irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci"
# Modules shipped but not loaded: virtio_pci/virtio_net for error-path tests that give a NIC to the
# kernel's own driver; bridge for selftest.sh, which forwards with the kernel instead of l2fwd;
# uio_pci_generic for the runs without a vIOMMU (l2fwd-vm.sh --no-iommu).
EXTRA_MODULES="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net bridge uio uio_pci_generic"

die() { echo "fetch-guest: error: $*" >&2; exit 1; }

cache_complete() {
    [ -s "$VM_DIR/vmlinuz" ] && [ -x "$VM_DIR/busybox" ] && [ -s "$VM_DIR/modules/load-order" ] \
        && grep -qx uio_pci_generic "$VM_DIR/modules/extra/load-order" 2>/dev/null \
        && [ -s "$VM_DIR/kernel-version" ] && { [ -s "$VM_DIR/vmlinux" ] || [ -e "$VM_DIR/vmlinux.none" ]; }
}

# --- host packages --------------------------------------------------------------------------
# What the harness runs on the host, command:package. Here: apt-get/apt-cache (apt, the installer
# itself), flock, dpkg -x, depmod, the module and kernel decompressors, readelf (the PVH check),
# awk. For the other harness scripts: qemu-system-x86_64 and cpio (run-vm.sh, mkinitramfs.sh),
# strip (mkinitramfs.sh), python3 (run-vm.sh --sock-buf: qemu-udp-fds.py makes QEMU's UDP
# sockets). busybox is not installed: busybox-static is downloaded below, for the guest.
# shellcheck source=../lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need_commands qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod dpkg:dpkg flock:util-linux \
    xz:xz-utils zstd:zstd gzip:gzip readelf:binutils strip:binutils awk:mawk python3:python3-minimal

# One fetch at a time per cache (parallel harness runs all call this script).
mkdir -p "$VM_DIR"
exec 9>"$VM_DIR/.fetch.lock"
flock 9

if [ "$FORCE" -eq 0 ] && cache_complete; then
    echo "fetch-guest: cached in $VM_DIR (kernel $(cat "$VM_DIR/kernel-version")); --force to refresh"
    exit 0
fi

# --- resolve and download -------------------------------------------------------------------
mkdir -p "$VM_DIR/debs"
cd "$VM_DIR/debs"

# The candidate version of the meta package, then the image package its Depends names.
candidate() { apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'; }
meta_ver=$(candidate linux-image-amd64)
if [ -z "$meta_ver" ] || [ "$meta_ver" = "(none)" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq || die "apt-get update failed"
        meta_ver=$(candidate linux-image-amd64)
    fi
fi
if [ -z "$meta_ver" ] || [ "$meta_ver" = "(none)" ]; then
    die "apt knows no linux-image-amd64: run apt-get update (Debian archive needed)"
fi
image_pkg=$(apt-cache show "linux-image-amd64=$meta_ver" \
    | sed -n 's/^Depends: *//p' | head -n1 | tr ',' '\n' \
    | sed -n 's/^ *\(linux-image-[0-9][^ ]*-amd64\).*/\1/p' | head -n1)
[ -n "$image_pkg" ] || die "cannot find the kernel image package in linux-image-amd64 $meta_ver Depends"
echo "fetch-guest: linux-image-amd64 $meta_ver -> $image_pkg"

download() { # $1 = package; downloads its .deb into the current directory unless one is there
    if ! ls "$1"_*.deb >/dev/null 2>&1; then
        # apt warns that root downloads unsandboxed into this directory: harmless, keep it quiet.
        apt-get download "$1" >"$1.log" 2>&1 \
            || { cat "$1.log" >&2; die "apt-get download $1 failed (network? apt-get update?)"; }
        rm -f "$1.log"
    fi
    find . -maxdepth 1 -name "$1_*.deb" | sort | tail -n1
}
image_deb=$(download "$image_pkg")
busybox_deb=$(download busybox-static)

# --- unpack ---------------------------------------------------------------------------------
rm -rf "$VM_DIR/root" "$VM_DIR/modules"
mkdir -p "$VM_DIR/root" "$VM_DIR/modules/extra"
dpkg -x "$image_deb" "$VM_DIR/root"
dpkg -x "$busybox_deb" "$VM_DIR/root"

kver=$(find "$VM_DIR/root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
[ -n "$kver" ] || die "no lib/modules/<version> in $image_deb"
kimg=$(ls "$VM_DIR/root/boot/vmlinuz-$kver" 2>/dev/null) || die "no boot/vmlinuz-$kver in $image_deb"
install -m 0644 "$kimg" "$VM_DIR/vmlinuz"
install -m 0755 "$VM_DIR/root/bin/busybox" "$VM_DIR/busybox"

# Extract the ELF kernel from the bzImage: find the compressed payload by its magic, decompress,
# and keep the result only if it is an ELF with a PVH entry note (type 0x12).
extract_vmlinux() {
    local img=$1 out=$2 magic tool off
    for pair in '\xfd\x37\x7a\x58\x5a\x00|xz -dc' '\x1f\x8b\x08|gzip -dc' '\x28\xb5\x2f\xfd|zstd -qdc'; do
        magic=${pair%%|*}
        tool=${pair#*|}
        off=$(LC_ALL=C grep -obUaP "$magic" "$img" | head -n1 | cut -d: -f1 || true)
        [ -n "$off" ] || continue
        # Trailing data after the payload makes the decompressor complain: the output is complete.
        # shellcheck disable=SC2086 # $tool is a command with its options
        tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null || true
        if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
            && readelf -nW "$out" 2>/dev/null | grep -q 'Unknown note type: (0x00000012)'; then
            return 0
        fi
    done
    rm -f "$out"
    return 1
}
rm -f "$VM_DIR/vmlinux" "$VM_DIR/vmlinux.none"
if command -v readelf >/dev/null && extract_vmlinux "$VM_DIR/vmlinuz" "$VM_DIR/vmlinux"; then
    echo "fetch-guest: extracted vmlinux with a PVH entry point (fast boot)"
else
    echo "fetch-guest: no PVH-bootable vmlinux in this kernel: booting the bzImage (slower)"
    touch "$VM_DIR/vmlinux.none"
fi
moddir="$VM_DIR/root/lib/modules/$kver"

# modules.dep is not in the package (depmod writes it at install time): build it here.
depmod -b "$VM_DIR/root" "$kver" || die "depmod failed for $kver"

# Print the path (relative to $moddir) of a module by name; '-' and '_' are the same.
modpath() {
    local want=${1//-/_}
    awk -F: -v want="$want" '{
        n = $1; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n)
        if (n == want) { print $1; exit }
    }' "$moddir/modules.dep"
}
# Print the dependency paths of a module path, deepest first, then the module itself.
deps_then_self() {
    local p=$1 d
    for d in $(awk -F: -v p="$p" '$1 == p { print $2 }' "$moddir/modules.dep" | tr ' ' '\n' | tac); do
        deps_then_self "$d"
    done
    echo "$p"
}
# Copy a module to $2, decompressing it; print its plain file name.
copy_module() {
    local src=$moddir/$1 out=$2 base
    base=$(basename "$1")
    case "$base" in
        *.ko.xz) xz -dc "$src" >"$out/${base%.xz}"; base=${base%.xz} ;;
        *.ko.zst) zstd -qdc "$src" >"$out/${base%.zst}"; base=${base%.zst} ;;
        *.ko.gz) gzip -dc "$src" >"$out/${base%.gz}"; base=${base%.gz} ;;
        *.ko) cp "$src" "$out/$base" ;;
        *) die "unexpected module file $1" ;;
    esac
    echo "$base"
}

# Builtins are not in modules.dep (e.g. irqbypass may be built in): then nothing to load.
builtin() { grep -q "/${1//-/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null; }

: >"$VM_DIR/modules/load-order"
seen=" "
for m in $BOOT_MODULES; do
    p=$(modpath "$m")
    if [ -z "$p" ]; then
        builtin "$m" && { echo "fetch-guest: $m is built into $kver"; continue; }
        # vfio_virqfd was folded into vfio in later kernels: tolerate only that one.
        [ "$m" = vfio_virqfd ] && { echo "fetch-guest: no $m module in $kver (merged into vfio)"; continue; }
        die "module $m not found in $image_pkg"
    fi
    for d in $(deps_then_self "$p"); do
        case "$seen" in *" $d "*) continue ;; esac
        seen="$seen$d "
        f=$(copy_module "$d" "$VM_DIR/modules")
        echo "${f%.ko}" >>"$VM_DIR/modules/load-order"
    done
done
: >"$VM_DIR/modules/extra/load-order"
for m in $EXTRA_MODULES; do
    p=$(modpath "$m")
    if [ -z "$p" ]; then
        builtin "$m" && continue
        die "module $m not found in $image_pkg"
    fi
    for d in $(deps_then_self "$p"); do
        case "$seen" in *" $d "*) continue ;; esac
        seen="$seen$d "
        f=$(copy_module "$d" "$VM_DIR/modules/extra")
        echo "${f%.ko}" >>"$VM_DIR/modules/extra/load-order"
    done
done

echo "$kver" >"$VM_DIR/kernel-version"
rm -rf "$VM_DIR/root"
echo "fetch-guest: kernel $kver, boot modules: $(tr '\n' ' ' <"$VM_DIR/modules/load-order")"
echo "fetch-guest: extra modules: $(tr '\n' ' ' <"$VM_DIR/modules/extra/load-order")"
echo "fetch-guest: ready in $VM_DIR"
