#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what is missing first.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # everything but the VM stage
#
# Stages, fastest first: formatting, shellcheck on the scripts, rustdoc (warnings are errors) and
# lints; DPDK and huge pages installed (the vhost-user
# tests talk to DPDK's vhost backend); unit, property, stress, fault, independent-device and
# DPDK interop tests (cargo, `ci` profile: optimised, with debug assertions); the benches
# compiled and run once as tests; then the VM stage: l2fwd over VFIO in the QEMU guest, packed
# and split rings, 100000 frames each way from the host (scripts/l2fwd-vm.sh), 4 queue pairs with
# RSS over multi-queue taps (--queues 4 --rss-check), a link taken down and up (--link-flap),
# receive filters frame by frame (--filters), TCP between two network namespaces through l2fwd
# and through the guest kernel's bridge, offloads on and off and at MTU 9000 (--tcp
# --kernel-bridge), the same without a vIOMMU (physical addresses:
# uio_pci_generic, --no-iommu, both rings; VFIO's no-IOMMU mode, --no-iommu-vfio), and l2fwd's
# error paths on real devices
# (scripts/vm/l2fwd-errors.sh). Fails loudly on the first error; never skips silently.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "toolchain"
if ! command -v cargo >/dev/null; then
    echo "cargo is not installed: install Rust (rustup) first" >&2
    exit 1
fi
cargo --version
# shellcheck source=lib/need.sh
. scripts/lib/need.sh
# cargo links with cc; the tests run /usr/bin/kill (procps) on DPDK's testpmd. What the later
# stages run is installed by their own scripts (scripts/dpdk/install.sh, scripts/vm/fetch-guest.sh).
need_commands cc:gcc kill:procps
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt
fi

step "format"
cargo fmt --all -- --check

step "shellcheck on every shell script"
need_commands shellcheck:shellcheck
# -x follows the sourced scripts/lib/need.sh, found relative to each script (-P SCRIPTDIR).
git ls-files -z '*.sh' .ci/run | xargs -0 shellcheck -x -P SCRIPTDIR

step "rustdoc, warnings are errors (cargo doc --no-deps)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --profile ci

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

step "DPDK vhost-user backend and huge pages"
scripts/dpdk/install.sh

step "unit, property, stress, fault, independent-device and DPDK interop tests"
cargo test --workspace --profile ci

step "benches compile and run once"
cargo test -p virtio-pmd-benches --benches --profile ci

step "fuzz targets, 60 s of fuzzing in all (scripts/fuzz.sh)"
scripts/fuzz.sh

step "AddressSanitizer on the stress and port tests, ThreadSanitizer on the pool (scripts/sanitizers.sh)"
scripts/sanitizers.sh

if [ "$quick" = 1 ]; then
    echo "quick run: the VM stage was left out on request"
else
    # l2fwd over VFIO in the QEMU guest (TCG, emulated IOMMU), traffic from the host, every frame
    # checked; each run fails on any loss, corruption, IOMMU fault or mbuf missing at exit.
    vm_started=$SECONDS
    for ring in packed split; do
        step "VM: l2fwd, $ring ring, 100000 frames each way (scripts/l2fwd-vm.sh)"
        t=$SECONDS
        scripts/l2fwd-vm.sh --ring "$ring" --frames 100000
        echo "VM $ring ring: $((SECONDS - t)) s"
    done
    # Multi-queue: 4 pairs per NIC over multi-queue taps in a network namespace, RSS with the
    # default table on port 0 and a table changed at run time on port 1; every receive queue's
    # frames must equal vm-peer's Toeplitz prediction exactly (about 40 s).
    step "VM: l2fwd, 4 queue pairs, RSS checked against the Toeplitz prediction (scripts/l2fwd-vm.sh --queues 4)"
    t=$SECONDS
    scripts/l2fwd-vm.sh --queues 4 --rss-check --frames 20000 --no-build
    echo "VM multi-queue: $((SECONDS - t)) s"
    # NIC1's link down and up through QEMU's monitor mid-run: l2fwd reports both, traffic resumes.
    step "VM: l2fwd, link down and up mid-run (scripts/l2fwd-vm.sh --link-flap)"
    t=$SECONDS
    scripts/l2fwd-vm.sh --link-flap --frames 10000 --no-build
    echo "VM link flap: $((SECONDS - t)) s"
    # Receive filters frame by frame: promiscuous off, MAC table, all-multicast, VLAN filter.
    step "VM: l2fwd, receive filters checked frame by frame (scripts/l2fwd-vm.sh --filters)"
    t=$SECONDS
    scripts/l2fwd-vm.sh --filters --frames 8800 --no-build
    echo "VM receive filters: $((SECONDS - t)) s"
    # TCP through l2fwd, Linux's stack on both ends: offloads on (checksum, TSO, LRO, mergeable
    # buffers) and off, MTU 9000 (ping -M do -s 8972), a 64 MiB file checked by sha256, iperf3;
    # then the guest kernel's bridge on the same NICs in the same boot (about 70 s).
    step "VM: TCP through l2fwd and the kernel bridge, offloads on/off, MTU 9000 (scripts/l2fwd-vm.sh --tcp --kernel-bridge)"
    t=$SECONDS
    scripts/l2fwd-vm.sh --tcp --kernel-bridge --no-build
    echo "VM TCP: $((SECONDS - t)) s"
    # The same without a vIOMMU: NICs on uio_pci_generic, physical-address DMA (about 30 s each:
    # the binaries are built).
    for ring in packed split; do
        step "VM without a vIOMMU: l2fwd, $ring ring, 20000 frames each way (scripts/l2fwd-vm.sh --no-iommu)"
        t=$SECONDS
        scripts/l2fwd-vm.sh --no-iommu --ring "$ring" --frames 20000 --no-build
        echo "VM $ring ring, no IOMMU: $((SECONDS - t)) s"
    done
    # And through VFIO's no-IOMMU mode, with the guest's vfio module built with it (once, about a
    # minute: scripts/vm/build-vfio-noiommu.sh, cached in target/vm/noiommu).
    step "VM without a vIOMMU, VFIO no-IOMMU mode: l2fwd, packed ring (scripts/l2fwd-vm.sh --no-iommu-vfio)"
    t=$SECONDS
    scripts/l2fwd-vm.sh --no-iommu-vfio --frames 20000 --no-build
    echo "VM VFIO no-IOMMU: $((SECONDS - t)) s"
    step "VM: l2fwd error paths (scripts/vm/l2fwd-errors.sh)"
    t=$SECONDS
    scripts/vm/l2fwd-errors.sh --no-build
    echo "VM error paths: $((SECONDS - t)) s"
    echo "VM stages: $((SECONDS - vm_started)) s"
fi
echo "all tests passed in $((SECONDS - started)) s"
