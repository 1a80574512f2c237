#!/usr/bin/env bash
# Runs gymforge's whole test suite on a fresh machine: installs the system packages it needs,
# then builds and runs every test (unit, integration, sandbox containment, end to end), then
# checks the formatting (rustfmt.toml) and the lints (the workspace's [lints] table, clippy
# warnings as errors). The sandbox's Python environment is provisioned from PyPI by the first
# test that needs it; the tests that need PostgreSQL start their own servers on loopback with
# the package bootstrap.sh installs. Exits non-zero when any of the three fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh --tests

# rustfmt and clippy are toolchain components; rustup installs them when they are missing.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "scripts/test.sh: cargo fmt or cargo clippy is missing and there is no rustup to install them; install the toolchain's rustfmt and clippy components" >&2
        exit 1
    fi
    rustup component add rustfmt clippy
fi

status=0
cargo test --workspace --all-targets --locked --no-fail-fast || status=1
if ! cargo fmt --all -- --check; then
    echo "scripts/test.sh: the tree is not formatted; run cargo fmt --all" >&2
    status=1
fi
if ! cargo clippy --workspace --all-targets --locked -- -D warnings; then
    echo "scripts/test.sh: clippy found warnings (see above)" >&2
    status=1
fi
exit "$status"
