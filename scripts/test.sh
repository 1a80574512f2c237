#!/usr/bin/env bash
# Runs gymforge's whole test suite on a fresh machine: installs the system packages it needs,
# then builds and runs every test (unit, integration, sandbox containment, end to end). The
# sandbox's Python environment is provisioned from PyPI by the first test that needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo test --workspace --all-targets --locked --no-fail-fast
