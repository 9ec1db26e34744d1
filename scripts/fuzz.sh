#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: the decoders of untrusted input) for a while.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 10 s, every target)
#
# Installs cargo-fuzz when missing. Uses the nightly toolchain with AddressSanitizer when
# rustup has one; otherwise the stable toolchain without a sanitizer (coverage-guided, and
# panics, overflows, huge allocations and hangs are still caught). Seeds are built from the
# captures in ../shared/data (scripts/fuzz-seeds.py); each target's corpus grows in
# target/fuzz-corpus/<target>. Any crash, leak, allocation over 1 GiB or input that takes
# over 5 s fails the run and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(merlin_mpx merlin_hdr merlin_mq1 dectris_json dectris_cbor bslz4 lz4 zmtp
        scpi_reply npy_header tpx3_stream)
fi
shared="${STEMFLOW_SHARED:-../shared}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
    sanitizer=(--sanitizer address)
else
    echo "no nightly toolchain: fuzzing on stable without a sanitizer"
    toolchain=()
    sanitizer=(--sanitizer none)
fi

corpus=target/fuzz-corpus
python3 scripts/fuzz-seeds.py "$corpus" "$shared/data" >/dev/null
cargo "${toolchain[@]}" fuzz build "${sanitizer[@]}" >/dev/null 2>target/fuzz-build.log ||
    { cat target/fuzz-build.log; exit 1; }

failed=0
for t in "${targets[@]}"; do
    log="target/fuzz-$t.log"
    if cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        printf '%-14s %10s executions in %s s, no failure\n' "$t" "$runs" "$secs"
    else
        echo "FUZZ FAILURE in $t (log: $log):"
        grep -E 'ERROR|SUMMARY|panicked|artifact' "$log" | head -20
        failed=1
    fi
done
exit "$failed"
