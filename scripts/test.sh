#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what is missing first.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # unit, property, stress and fault tests only (no VM, no DPDK)
#
# Stages, fastest first: formatting and lints; unit, property, stress, fault and independent-device
# tests (cargo, `ci` profile: optimised, with debug assertions); the benches compiled and run
# once as tests. Fails loudly on the first error; never skips silently.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt
fi

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

step "unit, property, stress, fault and independent-device tests"
cargo test --workspace --profile ci

step "benches compile and run once"
cargo test -p virtio-pmd-benches --benches --profile ci

if [ "$quick" = 1 ]; then
    echo "quick run: VM and DPDK stages left out on request"
fi
echo "all tests passed in $((SECONDS - started)) s"
