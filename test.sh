#!/usr/bin/env bash
# Runs every test of the workspace (unit, integration, interoperability with LiberTEM-live)
# and the Python package's (pytest, against LiberTEM and LiberTEM-live from PyPI).
# Arguments go to `cargo test` (e.g. a test name filter); with arguments the Python tests
# are skipped (scripts/test-python.sh runs them alone).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-deps.sh
cargo test --workspace --all-targets "$@"
# The reduction kernels come in an AVX-512 variant and a portable one, chosen at compile
# time (target-cpu=native, .cargo/config.toml). On an AVX-512 machine the suite above tests
# the first; the processing tests run once more built for x86-64-v3 (AVX2, the portable
# build of docs/decisions/0005) so that the other is tested too. About 2 minutes.
if [ $# -eq 0 ] && grep -qw avx512bw /proc/cpuinfo 2>/dev/null; then
    echo "test.sh: the processing tests again, built without AVX-512 (x86-64-v3)"
    RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/portable \
        cargo test -p stemflow-processing --all-targets
fi
if [ $# -eq 0 ]; then
    echo "test.sh: the Python package (scripts/test-python.sh)"
    scripts/test-python.sh
    # Every decoder of untrusted input under libFuzzer (and AddressSanitizer where a nightly
    # toolchain exists), 10 s each from seeds made of ../shared/data: about 5 minutes with
    # the build. Longer runs: scripts/fuzz.sh SECONDS.
    echo "test.sh: every fuzz target briefly (scripts/fuzz.sh)"
    scripts/fuzz.sh 10
fi
