#!/usr/bin/env bash
# Runs every test of the workspace (unit, integration, interoperability with LiberTEM-live).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-deps.sh
exec cargo test --workspace --all-targets "$@"
