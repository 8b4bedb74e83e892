#!/bin/bash
# Runs the fuzz targets built by fuzz/build.sh, each SECONDS seconds, one
# after another.  Usage: fuzz/run.sh SECONDS [TARGET...]
#
# Each target starts from its seeds (fuzz/corpus/TARGET, read only) and
# from what earlier runs found (build/fuzz/corpus/TARGET, where new inputs
# go).  Crash inputs land in build/fuzz/artifacts/, logs in
# build/fuzz/logs/.  Prints one line per target; exits 1 if any crashed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_BUILD:-$ROOT/build/fuzz}
SECONDS_EACH=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for b in "$OUT"/bin/fuzz_*; do
        [ -x "$b" ] && targets+=("$(basename "$b")")
    done
fi

if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets in $OUT/bin; run make fuzz-build" >&2
    exit 1
fi

mkdir -p "$OUT/artifacts" "$OUT/logs"

# the key file target's seeds with keys are made by fuzz/build.sh

failed=0

for t in "${targets[@]}"; do
    bin=$OUT/bin/$t
    work=$OUT/corpus/$t
    log=$OUT/logs/$t.log
    mkdir -p "$work"

    dirs=("$work" "$ROOT/fuzz/corpus/$t")
    [ -d "$OUT/seeds/$t" ] && dirs+=("$OUT/seeds/$t")

    "$bin" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
        -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$OUT/artifacts/$t-" "${dirs[@]}" \
        >"$log" 2>&1
    rc=$?

    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)

    if [ $rc -eq 0 ]; then
        echo "fuzz: $t: ok, ${runs:-?} runs in $SECONDS_EACH s, ${cov:-cov: ?}"
    else
        failed=1
        echo "fuzz: $t: FAILED (exit $rc), ${runs:-?} runs; log $log"
        grep -E 'ERROR:|runtime error|assertion failed|Test unit written' \
            "$log" | head -5 | sed 's/^/    /'
    fi
done

exit $failed
