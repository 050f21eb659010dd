#!/bin/bash
# build-vfio-noiommu.sh: the harness guest's vfio module with VFIO's no-IOMMU mode
# (CONFIG_VFIO_NOIOMMU), which Debian's kernel is built without, compiled once from Debian's
# kernel source of the same version and cached:
#
#   target/vm/noiommu/vfio.ko    (VM_DIR/noiommu; mkinitramfs.sh puts it in the initramfs as
#                                 /lib/modules/noiommu/vfio.ko, /init loads it instead of the
#                                 stock vfio.ko with vmbind=vfio-noiommu)
#
# How: `apt-get download` of linux-source-<major>, linux-headers-<kver>, linux-headers-<abi>-common
# and linux-kbuild-<major> at the guest kernel's package version (fetch-guest.sh picked it),
# unpacked with `dpkg -x` under target/vm/noiommu/build (nothing is installed); the three objects
# of vfio.ko (vfio_main, iova_bitmap, container) built as an external module against the
# headers, with CONFIG_VFIO_NOIOMMU defined. Its exported symbols and their CRCs are those of the
# stock module (same source, same headers), so the stock vfio_iommu_type1 and vfio-pci load on
# top of it. The module is unsigned: Debian's kernel loads it, tainted (no MODULE_SIG_FORCE).
# Takes about a minute (a 139 MB download, one member of a .tar.xz, three C files).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VM_DIR=${VM_DIR:-$ROOT/target/vm}
OUT=$VM_DIR/noiommu
die() { echo "build-vfio-noiommu: error: $*" >&2; exit 1; }

"$HERE/fetch-guest.sh" >/dev/null
kver=$(cat "$VM_DIR/kernel-version")
if [ -s "$OUT/vfio.ko" ] && [ "$(cat "$OUT/kernel-version" 2>/dev/null)" = "$kver" ]; then
    echo "build-vfio-noiommu: $OUT/vfio.ko (for $kver) is there"
    exit 0
fi
# shellcheck source=../lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need_commands make:make cc:gcc dpkg-deb:dpkg tar:tar xz:xz-utils modinfo:kmod apt-get:apt

image_deb=$(find "$VM_DIR/debs" -name "linux-image-${kver}_*.deb" | head -n1)
[ -n "$image_deb" ] || die "no linux-image-$kver package in $VM_DIR/debs (run scripts/vm/fetch-guest.sh)"
version=$(dpkg-deb -f "$image_deb" Version)      # e.g. 6.1.172-1
major=$(echo "$kver" | cut -d. -f1,2)             # 6.1
abi=${kver%-*}                                    # 6.1.0-48
t=$SECONDS
rm -rf "$OUT/build"
mkdir -p "$OUT/build/debs" "$OUT/build/root" "$OUT/build/module"
packages="linux-source-$major=$version linux-headers-$kver=$version linux-headers-$abi-common=$version linux-kbuild-$major=$version"
echo "build-vfio-noiommu: downloading $packages"
# shellcheck disable=SC2086 # one argument per package
(cd "$OUT/build/debs" && apt-get download -q $packages 2>&1 | grep -v '^W: Download is performed unsandboxed') ||
    die "apt-get download failed: the archive no longer has version $version of the kernel packages" \
        "(fetch-guest.sh with a newer kernel, then run this again)"
for deb in "$OUT/build/debs"/*.deb; do dpkg-deb -x "$deb" "$OUT/build/root"; done
headers=$OUT/build/root/usr/src/linux-headers-$kver
common=$OUT/build/root/usr/src/linux-headers-$abi-common
# The headers' Makefile includes the common tree by its installed path: point it at ours.
sed -i "s#^include /usr/src/linux-headers-$abi-common/Makefile#include $common/Makefile#" "$headers/Makefile"
grep -q "^# CONFIG_VFIO_NOIOMMU is not set" "$headers/.config" ||
    echo "build-vfio-noiommu: note: the kernel's .config does not say CONFIG_VFIO_NOIOMMU is unset"
src=linux-source-$major/drivers/vfio
tar -xJf "$OUT/build/root/usr/src/linux-source-$major.tar.xz" -C "$OUT/build" \
    "$src/vfio_main.c" "$src/iova_bitmap.c" "$src/container.c" "$src/vfio.h"
cp "$OUT/build/$src"/{vfio_main.c,iova_bitmap.c,container.c,vfio.h} "$OUT/build/module/"
# drivers/vfio/Makefile's vfio.ko, with the option Debian leaves out.
printf 'obj-m := vfio.o\nvfio-y := vfio_main.o iova_bitmap.o container.o\nccflags-y := -DCONFIG_VFIO_NOIOMMU=1\n' \
    >"$OUT/build/module/Kbuild"
make -s -C "$headers" M="$OUT/build/module" modules 2>&1 | grep -v 'Skipping BTF generation' || true
ko=$OUT/build/module/vfio.ko
[ -s "$ko" ] || die "the build made no vfio.ko (see the output above)"
modinfo -F parm "$ko" | grep -q '^enable_unsafe_noiommu_mode:' || die "$ko has no enable_unsafe_noiommu_mode"
[ "$(modinfo -F vermagic "$ko")" = "$(modinfo -F vermagic "$VM_DIR/modules/vfio.ko")" ] ||
    die "$ko's vermagic differs from the stock module's"
install -m 0644 "$ko" "$OUT/vfio.ko"
echo "$kver" >"$OUT/kernel-version"
rm -rf "$OUT/build"
echo "build-vfio-noiommu: built $OUT/vfio.ko for $kver ($version) in $((SECONDS - t)) s"
