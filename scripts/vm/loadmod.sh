#!/bin/sh
# loadmod: load one of the guest's extra modules (e.g. virtio_pci, virtio_net) with its
# dependencies, from /lib/modules/extra (installed by mkinitramfs.sh as /bin/loadmod).
# /init does not load these; error-path tests do, e.g. to give an unbound NIC to virtio-pci:
#   loadmod virtio_pci
set -eu
if [ $# -ne 1 ]; then
    echo "usage: loadmod MODULE   (one of: $(tr '\n' ' ' </lib/modules/extra/load-order))" >&2
    exit 2
fi
want=$(echo "$1" | tr '-' '_')
grep -qx "$want" /lib/modules/extra/load-order || {
    echo "loadmod: $1 is not in /lib/modules/extra" >&2
    exit 1
}
# load-order lists dependencies before their users: load everything up to the module itself.
while read -r m; do
    if ! grep -q "^$(echo "$m" | tr '-' '_') " /proc/modules; then
        insmod "/lib/modules/extra/$m.ko"
    fi
    [ "$m" = "$want" ] && break
done </lib/modules/extra/load-order
