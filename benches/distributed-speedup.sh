#!/usr/bin/env bash
# What data-parallel training buys on the CPU backend of this machine, as docs/distributed.md
# reports it:
#
#     benches/distributed-speedup.sh [--quick] [OUT]
#
# cnn-bn on MNIST, one epoch of 54,000 training images (the reference split; 844 steps of 64)
# without validation, at a global batch of 64, one run after another:
#   one     one process pinned to one core (taskset), batch 64;
#   pair    two independent processes at once, one per core, each on half the images at batch
#           32: the most two ranks could gain on this machine, which they share (caches, memory
#           bandwidth), with no exchange at all;
#   sync    mpirun -np 2, batch 32 per rank, synchronized BatchNorm;
#   nosync  mpirun -np 2, batch 32 per rank, --no-sync-bn.
# Each run's training seconds (for the pair, the slower one's) and, for the ranks, the seconds
# rank 0 spent exchanging (and waiting for rank 1) go to OUT/speedup.md (default
# runs/distributed). Needs a wgnorm built with
# `--features mpi` (WGNORM names it; default: built here) and OpenMPI's mpirun. --quick trains
# on 640 images, to check that the commands run.
set -euo pipefail
cd "$(dirname "$0")/.."
images=54000
if [ "${1:-}" = --quick ]; then
    images=640
    shift
fi
out="${1:-runs/distributed}"
if [ -z "${WGNORM:-}" ]; then
    cargo build --release --quiet --features mpi
    WGNORM=target/release/wgnorm
fi
data="${DATA:-../shared/data}/mnist"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
common=(train --model cnn-bn --device cpu --data-dir "$data" --epochs 1 --no-validation --seed 0)
whole=(--train-limit "$images")
# `field NAME FILE`: the last value of a number in a JSON file.
field() { grep -o "\"$1\": *[0-9.e-]*" "$2" | tail -n 1 | sed 's/.*: *//'; }

rm -rf "$out/one" "$out/pair0" "$out/pair1" "$out/sync" "$out/nosync"
taskset -c 0 "$WGNORM" "${common[@]}" "${whole[@]}" --batch-size 64 --out "$out/one" \
    >"$out/one.log" 2>&1
half=(--batch-size 32 --train-limit "$((images / 2))")
taskset -c 0 "$WGNORM" "${common[@]}" "${half[@]}" --out "$out/pair0" >"$out/pair0.log" 2>&1 &
taskset -c 1 "$WGNORM" "${common[@]}" "${half[@]}" --out "$out/pair1" >"$out/pair1.log" 2>&1
wait
mpirun -np 2 "$WGNORM" "${common[@]}" "${whole[@]}" --batch-size 32 --out "$out/sync" \
    >"$out/sync.log" 2>&1
mpirun -np 2 "$WGNORM" "${common[@]}" "${whole[@]}" --batch-size 32 --no-sync-bn \
    --out "$out/nosync" >"$out/nosync.log" 2>&1

one="$(field training_seconds "$out/one/metrics.json")"
{
    echo "| run | training s | exchanging s (rank 0) | speed-up over one core |"
    echo "| --- | --- | --- | --- |"
    printf '| one process, one core, batch 64 | %.1f | | 1.00 |\n' "$one"
    pair="$(python3 -c "print(max($(field training_seconds "$out/pair0/metrics.json"), \
        $(field training_seconds "$out/pair1/metrics.json")))")"
    printf '| two separate processes at once, half the images each, batch 32 | %.1f | | %s |\n' \
        "$pair" "$(python3 -c "print(f'{$one / $pair:.2f}')")"
    for run in sync nosync; do
        seconds="$(field training_seconds "$out/$run/metrics.json")"
        exchange="$(field exchange_seconds "$out/$run/metrics.json")"
        speedup="$(python3 -c "print(f'{$one / $seconds:.2f}')")"
        printf '| mpirun -np 2, 32 per rank, %s | %.1f | %.1f | %s |\n' \
            "$run" "$seconds" "$exchange" "$speedup"
    done
} | tee "$out/speedup.md"
