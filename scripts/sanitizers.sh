#!/usr/bin/env bash
# Runs tests under the sanitizers that nightly rustc offers without rebuilding the standard
# library (nightly here has no rust-src, so no -Zbuild-std):
#
# - AddressSanitizer, with LeakSanitizer, on the stress and port tests (pmd/tests/stress.rs,
#   pmd/tests/port.rs): the rings, the software device, the mempool and the port's set-up and
#   teardown, multi-threaded, under ASan's checks of every heap and stack access of our code.
# - ThreadSanitizer on the mempool's unit tests: every test whose path starts with `mbuf::`
#   (selected by module path, so that tests added to or renamed in pmd/src/mbuf/ are picked up).
#
#   scripts/sanitizers.sh            # both
#   scripts/sanitizers.sh asan       # one of them
#
# Each builds in its own target directory (target/asan, target/tsan) with the `ci` profile
# (optimised, with debug assertions). Fails when the nightly toolchain is missing, when a test
# fails, or when a sanitizer reports anything.
set -euo pipefail
cd "$(dirname "$0")/.."

which=("$@")
[ ${#which[@]} -eq 0 ] && which=(asan tsan)
for w in "${which[@]}"; do
    case "$w" in
        asan|tsan) ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown sanitizer run $w (asan or tsan; try --help)" >&2; exit 2 ;;
    esac
done

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "sanitizers.sh: the nightly toolchain is missing (rustup toolchain list): -Zsanitizer needs" >&2
    echo "it; install it with 'rustup toolchain install nightly'" >&2
    exit 1
fi

# An explicit --target keeps the flags off build scripts and proc macros. The standard library
# is not instrumented; the ABI check that would refuse to link it is waived for the sanitizer.
target=x86_64-unknown-linux-gnu
flags() { echo "-Zsanitizer=$1 -Cunsafe-allow-abi-mismatch=sanitizer -Cforce-frame-pointers=yes"; }

for w in "${which[@]}"; do
    started=$SECONDS
    case "$w" in
        asan)
            echo "==> AddressSanitizer: stress and port tests"
            RUSTFLAGS="$(flags address)" ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
                CARGO_TARGET_DIR=target/asan \
                cargo +nightly test -p virtio-pmd --features testing --profile ci --target "$target" \
                --test stress --test port
            ;;
        tsan)
            echo "==> ThreadSanitizer: mempool unit tests (mbuf::)"
            # libtest and std are not instrumented, so TSan misses how they synchronise and
            # reports their own hand-overs as races; two kinds, suppressed by name:
            # - std's mpmc channels (a blocked receiver parks on a futex inside std): libtest's,
            #   which carries each test's result to the main thread, and the one the pool's
            #   cross-thread test sends mbufs through;
            # - the drop of libtest's Arc around each test's closure (its fence is in libtest);
            # - the pool's registry of cache lengths (a Vec<Arc<AtomicUsize>> behind std's Mutex,
            #   whose futex lock is inside std): matched by that Vec's element type, which nothing
            #   else in the pool uses. The pool's lifetime (PoolRef, `outstanding`) and its
            #   stores and caches use only atomics compiled here, so TSan checks them.
            # A frame of std's channel code is in neither the pool's nor the rings' own stacks (no
            # test drops an mbuf inside a channel), so nothing of ours is hidden.
            suppressions=$(mktemp)
            trap 'rm -f "$suppressions"' EXIT
            printf '%s\n' 'race:std::sync::mpmc::' \
                'race:alloc::sync::Arc<std::sync::poison::mutex::Mutex<core::option::Option<test::run_test' \
                'race:alloc::vec::Vec<alloc::sync::Arc<core::sync::atomic::Atomic<usize>>>' \
                >"$suppressions"
            RUSTFLAGS="$(flags thread)" TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:suppressions=$suppressions" \
                CARGO_TARGET_DIR=target/tsan \
                cargo +nightly test -p virtio-pmd --features testing --profile ci --target "$target" \
                --lib -- mbuf::
            ;;
    esac
    echo "sanitizers.sh: $w passed in $((SECONDS - started)) s"
done
