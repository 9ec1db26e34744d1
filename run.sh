#!/usr/bin/env bash
# The main job: builds stemflow and runs it. With no arguments it runs one 4D-STEM scan on
# the embedded simulated instrument and writes out/ (HDF5 + PNG images).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-deps.sh
exec cargo run --release -q -p stemflow -- "$@"
