#!/usr/bin/env bash
# One run of wgnorm's measurements on a machine with a GPU, needing no network and no Rust
# toolchain: a wgnorm binary, the MNIST folder and a folder for the results.
#
#   benches/gpu-check.sh WGNORM_BINARY MNIST_DIR OUT_DIR
#
# Writes into OUT_DIR: devices.txt; kernels.{txt,json} and train.{txt,json} (`wgnorm bench` on
# the GPU and the CPU, the train suite with one reference epoch on each); torch-cuda.{txt,json}
# where python3 has a PyTorch that sees a CUDA or ROCm GPU; summary.txt, the lines worth reading
# first. Each part has its own time limit so that the whole stays under 8 minutes; a part that
# fails or runs out of time is named in the summary and the others still run.
#
# Environment:
#   WGNORM_ADAPTER   pick the adapter whose name contains this (default: wgnorm's choice)
#   VK_DRIVER_FILES  the Vulkan driver's ICD file(s), where the loader does not find them
#   PYTHON           the Python to run benches/torch_reference.py with (default python3)
#   REPS             timed repetitions per measurement (default 20)
# A Vulkan loader (libvulkan.so.1) placed beside the binary is used when the system has none.

set -uo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 WGNORM_BINARY MNIST_DIR OUT_DIR" >&2
    exit 2
fi
binary=$(realpath "$1")
mnist=$(realpath "$2")
out=$3
here=$(dirname "$(realpath "$0")")
python=${PYTHON:-python3}
reps=${REPS:-20}

[ -x "$binary" ] || { echo "$binary is not an executable wgnorm binary" >&2; exit 2; }
[ -d "$mnist" ] || { echo "$mnist is not a folder holding the MNIST files" >&2; exit 2; }
mkdir -p "$out" || exit 2
out=$(realpath "$out")

if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && [ -e "$(dirname "$binary")/libvulkan.so.1" ]; then
    export LD_LIBRARY_PATH="$(dirname "$binary")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# Mesa warns on every run where this is unset.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR=$(mktemp -d)
    export XDG_RUNTIME_DIR
fi

summary="$out/summary.txt"
started=$(date +%s)
{
    echo "wgnorm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    echo "binary: $binary ($("$binary" --version 2>&1))"
    echo "adapter request: ${WGNORM_ADAPTER:-none (wgnorm picks)}"
} >"$summary"

# part NAME SECONDS COMMAND...: runs COMMAND with its output in NAME.txt, noting the outcome.
part() {
    local name=$1 seconds=$2
    shift 2
    local began=$(date +%s)
    timeout "$seconds" "$@" >"$out/$name.txt" 2>&1
    local status=$?
    local took=$(($(date +%s) - began))
    case $status in
        0) echo "$name: done in ${took} s" >>"$summary" ;;
        124) echo "$name: stopped at its limit of ${seconds} s (partial output in $name.txt)" >>"$summary" ;;
        *) echo "$name: failed with status $status after ${took} s: $(tail -n 1 "$out/$name.txt")" >>"$summary" ;;
    esac
    return 0
}

part devices 30 "$binary" devices
part kernels 120 "$binary" bench --suite kernels --device both --reps "$reps" --json "$out/kernels.json"
part train 180 "$binary" bench --suite train --device both --reps "$reps" --data-dir "$mnist" \
    --json "$out/train.json"
if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    part torch-cuda 140 "$python" "$here/torch_reference.py" "$mnist" --device cuda --reps "$reps" \
        --json "$out/torch-cuda.json"
else
    echo "torch-cuda: skipped ($python has no PyTorch that sees a CUDA or ROCm GPU)" >>"$summary"
fi

{
    echo
    echo "== devices"
    cat "$out/devices.txt"
    echo
    echo "== ceilings and BatchNorm fwd+bwd"
    grep -E "copy .* stream|fwd\+bwd +(gpu|cpu)" "$out/kernels.txt"
    echo
    echo "== training steps, kernels of a step, reference epoch"
    grep -E "^ +(bn|nobn) +[0-9]+ +(gpu|cpu)|in all$|one epoch|first bn step" "$out/train.txt"
    echo
    echo "== matrix products of a bn step at batch 32, each alone"
    grep -E " (Forward|WeightGrad|InputGrad) " "$out/train.txt"
    if [ -s "$out/torch-cuda.txt" ]; then
        echo
        echo "== PyTorch on the GPU"
        grep -E "^torch|fwd\+bwd|ms/step|epoch" "$out/torch-cuda.txt"
    fi
    echo
    echo "total: $(($(date +%s) - started)) s"
} >>"$summary" 2>&1
cat "$summary"
