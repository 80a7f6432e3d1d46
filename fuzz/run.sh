#!/usr/bin/env bash
# Runs each fuzz target for 60 s (or $1 seconds), starting from the checked-in seeds, and prints
# one summary line per target. Needs the nightly toolchain and `cargo install cargo-fuzz`.
# A crash stops that target, leaves the input in fuzz/artifacts/<target>/, and makes this fail.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
status=0
for target in idx npy checkpoint; do
    mkdir -p "corpus/$target" logs
    log="logs/$target.log"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1
    code=$?
    runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    if [ "$code" -eq 0 ]; then
        echo "$target: ${runs:-no summary}, $cov, corpus $corpus files, no crash"
    else
        echo "$target: FAILED (exit $code), see fuzz/$log and fuzz/artifacts/$target/"
        status=1
    fi
done
exit "$status"
