#!/bin/sh
# /init of the VM harness's initramfs (installed by mkinitramfs.sh; runs under busybox ash).
#
# 1. mounts proc, sys, devtmpfs, tmpfs on /tmp;
# 2. loads the modules listed in /lib/modules/load-order (the VFIO stack), in that order;
# 3. reserves $vmhugepages (default 64) 2 MiB hugepages and mounts hugetlbfs on /dev/hugepages;
# 4. binds every PCI function with vendor 0x1af4, device 0x1041 (modern virtio-net) to vfio-pci
#    with /bin/bind-vfio.sh, except those listed in $vmskip; prints `VFIO-BOUND <bdf> group=<n> ...`;
# 5. prints `VM-READY`, runs the guest command `/bin/sh /vmcmd.sh` (run-vm.sh appends it to the
#    initramfs; mkinitramfs.sh --script bakes a default), prints `VMCMD-EXIT <rc>`;
# 6. powers off (QEMU exits).
#
# Kernel parameters without a dot reach /init as environment variables (run-vm.sh --append):
#   vmskip=BDF[,BDF...]  leave these functions alone (unbound; tests may bind them elsewhere)
#   vmbind=none          bind no device at all
#   vmbind=vfio-noiommu  load /lib/modules/noiommu/vfio.ko (built with CONFIG_VFIO_NOIOMMU by
#                        build-vfio-noiommu.sh) instead of the stock vfio, with
#                        enable_unsafe_noiommu_mode=1: vfio-pci binds without an IOMMU
#   vmbind=uio           bind them to uio_pci_generic instead (loaded from /lib/modules/extra; for
#                        a VM without a vIOMMU); prints `UIO-BOUND <bdf>`
#   vmhugepages=N        hugepages to reserve (0: none, and hugetlbfs is still mounted)
# If a set-up step fails, /init prints `VM-INIT-ERROR <what>` and `VMCMD-EXIT 254`, then powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

fatal() {
    echo "VM-INIT-ERROR $*"
    echo "VMCMD-EXIT 254"
    sync
    poweroff -f
    sleep 5
    exit 1
}

mount -t proc proc /proc || fatal "mount /proc"
mount -t sysfs sysfs /sys || fatal "mount /sys"
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/hugepages /dev/pts /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "VM-INIT kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, uptime $(cut -d' ' -f1 /proc/uptime)s"

while read -r m; do
    [ -n "$m" ] || continue
    if [ "$m" = vfio ] && [ "${vmbind:-}" = vfio-noiommu ]; then
        [ -f /lib/modules/noiommu/vfio.ko ] ||
            fatal "vmbind=vfio-noiommu but no /lib/modules/noiommu/vfio.ko (run scripts/vm/build-vfio-noiommu.sh)"
        insmod /lib/modules/noiommu/vfio.ko enable_unsafe_noiommu_mode=1 || fatal "insmod the no-IOMMU vfio failed"
        continue
    fi
    insmod "/lib/modules/$m.ko" || fatal "insmod $m failed"
done </lib/modules/load-order

pages=${vmhugepages:-64}
echo "$pages" >/proc/sys/vm/nr_hugepages || fatal "cannot reserve $pages hugepages"
got=$(cat /proc/sys/vm/nr_hugepages)
[ "$got" -ge "$pages" ] || fatal "only $got of $pages hugepages reserved (give the guest more memory: run-vm.sh --mem)"
mount -t hugetlbfs nodev /dev/hugepages || fatal "mount hugetlbfs"

if [ "${vmbind:-}" != none ]; then
    skip=" $(echo "${vmskip:-}" | tr ',' ' ') "
    bind=""
    for d in /sys/bus/pci/devices/*; do
        if [ "$(cat "$d/vendor")" != 0x1af4 ] || [ "$(cat "$d/device")" != 0x1041 ]; then
            continue
        fi
        bdf=$(basename "$d")
        case "$skip" in
            *" $bdf "*) echo "VFIO-SKIPPED $bdf" ;;
            *) bind="$bind $bdf" ;;
        esac
    done
    if [ -n "$bind" ] && [ "${vmbind:-}" = uio ]; then
        loadmod uio_pci_generic || fatal "loading uio_pci_generic failed"
        # shellcheck disable=SC2086 # one argument per BDF
        sh /bin/bind-vfio.sh --uio $bind || fatal "bind-vfio.sh --uio$bind failed"
    elif [ -n "$bind" ]; then
        # shellcheck disable=SC2086 # one argument per BDF
        sh /bin/bind-vfio.sh $bind || fatal "bind-vfio.sh$bind failed"
    else
        echo "VFIO-NONE no virtio-net function to bind"
    fi
fi

echo "VM-READY uptime $(cut -d' ' -f1 /proc/uptime)s"
if [ -f /vmcmd.sh ]; then
    cd /root 2>/dev/null || cd /
    sh /vmcmd.sh
    rc=$?
else
    echo "VM-INIT-ERROR no /vmcmd.sh: pass a guest command (run-vm.sh --cmd/--script)"
    rc=254
fi
echo "VMCMD-EXIT $rc"
sync
poweroff -f
sleep 5
