#!/usr/bin/env bash
# Runs one test target over many seeds and reports how many fail:
#
#   tests/seeds.sh TEST [FILTER] [COUNT]
#
# TEST is a file of tests/ without .rs (graph, batchnorm, ...), FILTER narrows it as
# `cargo test` does (empty: every test of the file), COUNT seeds are tried (default 20):
# WGNORM_TEST_SEED=1..COUNT. Each failing seed is printed, so that
# `WGNORM_TEST_SEED=S cargo test --release --test TEST FILTER` replays it. Exits 1 if any
# seed failed. Set CI=true as for the suite, so that GPU tests fail rather than skip.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: tests/seeds.sh TEST [FILTER] [COUNT]" >&2
    exit 2
fi
test_target=$1
filter=${2:-}
count=${3:-20}
if ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
    echo "COUNT must be a positive whole number, got '$count'" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
if [[ ! -f tests/$test_target.rs ]]; then
    echo "no tests/$test_target.rs" >&2
    exit 2
fi

# Build once; each seed then only runs the test binary.
cargo test --release --test "$test_target" --no-run --quiet

failed=()
for ((seed = 1; seed <= count; seed++)); do
    if ! WGNORM_TEST_SEED=$seed cargo test --release --quiet --test "$test_target" -- \
        ${filter:+"$filter"} >/dev/null 2>&1; then
        failed+=("$seed")
        echo "seed $seed failed"
    fi
done
echo "$test_target${filter:+ $filter}: ${#failed[@]} of $count seeds failed${failed[*]:+ (${failed[*]})}"
[[ ${#failed[@]} -eq 0 ]]
