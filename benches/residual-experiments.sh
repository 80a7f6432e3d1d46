#!/usr/bin/env bash
# The measurements behind the residual networks in docs/training.md and docs/normalization.md,
# one command per experiment:
#
#     benches/residual-experiments.sh [--quick] against-pytorch|deep [OUT]
#
# against-pytorch  resnet8 (seeds 0, 1, 2) and resnet20 (seed 0) on Fashion-MNIST: 5 epochs,
#                  batch 32, Adam 1e-3, Keras' initialization, wgnorm's CPU backend beside the
#                  same networks in PyTorch on one thread (tests/independent/torch_train.py), the
#                  two at once on this machine (one core each); writes OUT/against-pytorch.md (test
#                  accuracy, and each run's training seconds over its epochs, validation passes
#                  included).
# deep             resnet20 and resnet56 with BatchNorm, GroupNorm (8 groups) and no
#                  normalization, and the same depths without the skip connections (plain20,
#                  plain56), on part of MNIST, with every layer's gradient norm (--log-grad-norms);
#                  writes OUT/deep.md (benches/grad_norms_by_depth.py).
#
# Results go to OUT (default runs/residual). --quick trains on a few dozen images only, to check
# that the commands run. WGNORM names the binary (default: built here with cargo),
# PYTHON a Python with torch and numpy (default /usr/bin/python3), DATA the folder holding mnist/
# and fashion-mnist/ (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = --quick ]; then
    quick=1
    shift
fi
experiment="${1:?usage: $0 [--quick] against-pytorch|deep [OUT]}"
out="${2:-runs/residual}"
if [ -z "${WGNORM:-}" ]; then
    cargo build --release --quiet
    WGNORM=target/release/wgnorm
fi
data="${DATA:-../shared/data}"
# The protocol, or its quick stand-in: [full] [quick].
pick() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }
# `field NAME FILE`: a number of a JSON file, or of the last JSON line of a log.
field() { grep -o "\"$1\": *[0-9.e-]*" "$2" | tail -n 1 | sed 's/.*: *//'; }

# A ResNet-(6n+2)'s layers without its skip connections: each block's body, then the ReLU its
# join would apply. `plain_arch N NORM` with NORM bn, gn8 or none.
plain_arch() {
    local n="$1" norm=",$2" arch
    [ "$2" = none ] && norm=""
    arch="conv16k3p1$norm,relu"
    for channels in 16 32 64; do
        for block in $(seq 1 "$n"); do
            local stride=""
            [ "$channels" != 16 ] && [ "$block" = 1 ] && stride=s2
            arch="$arch,conv${channels}k3${stride}p1$norm,relu,conv${channels}k3p1$norm,relu"
        done
    done
    echo "$arch,avgpool,flatten,fc10"
}

case "$experiment" in
against-pytorch)
    mkdir -p "$out"
    table="$out/against-pytorch.md"
    printf '| model | seed | wgnorm test acc | PyTorch test acc | wgnorm s/epoch | PyTorch s/epoch |\n' >"$table"
    printf '| --- | --- | --- | --- | --- | --- |\n' >>"$table"
    epochs="$(pick 5 1)"
    for run in resnet8:0 resnet8:1 resnet8:2 resnet20:0; do
        model="${run%:*}" seed="${run#*:}"
        dir="$out/$model-seed$seed"
        # Side by side: both at once, one thread each, so both see the same machine.
        "$WGNORM" train --device cpu --dataset fashion-mnist --data-dir "$data/fashion-mnist" \
            --model "$model" --seed "$seed" --init keras --epochs "$epochs" --batch-size 32 \
            --train-limit "$(pick 54000 64)" --out "$dir" >"$dir.log" &
        wgnorm_run=$!
        "${PYTHON:-/usr/bin/python3}" tests/independent/torch_train.py "$data/fashion-mnist" \
            --model "$model" --seed "$seed" --epochs "$epochs" --batch-size 32 \
            --train-limit "$(pick 54000 64)" >"$dir-torch.log"
        wait "$wgnorm_run"
        wgnorm_seconds="$(field train_seconds "$dir/metrics.json")"
        torch_seconds="$(field train_seconds "$dir-torch.log")"
        printf '| %s | %s | %.4f | %.4f | %.1f | %.1f |\n' "$model" "$seed" \
            "$(field test_acc "$dir/metrics.json")" "$(field test_acc "$dir-torch.log")" \
            "$(awk "BEGIN { print $wgnorm_seconds / $epochs }")" \
            "$(awk "BEGIN { print $torch_seconds / $epochs }")" \
            >>"$table"
    done
    cat "$table"
    ;;
deep)
    mkdir -p "$out/deep"
    common=(--device cpu --data-dir "$data/mnist" --epochs 1 --train-limit "$(pick 10000 64)"
        --log-grad-norms "$(pick 25 1)")
    # `deep_run NAME FLAGS...`: one run, at most JOBS (default: the cores) at a time; nothing
    # here is timed.
    runs=()
    deep_run() {
        while [ "$(jobs -pr | wc -l)" -ge "${JOBS:-$(nproc)}" ]; do
            wait -n
        done
        local name="$1"
        shift
        "$WGNORM" train "${common[@]}" "$@" --out "$out/deep/$name" >"$out/deep/$name.log" &
        runs+=($!)
    }
    for depth in 20 56; do
        n=$(((depth - 2) / 6))
        for norm in bn gn8 none; do
            deep_run "resnet$depth-$norm" --model "resnet$depth" --norm "$norm"
            deep_run "plain$depth-$norm" --arch "$(plain_arch "$n" "$norm")"
        done
    done
    for run in "${runs[@]}"; do
        wait "$run"
    done
    "${PYTHON:-/usr/bin/python3}" benches/grad_norms_by_depth.py "$out"/deep/*/metrics.json \
        | tee "$out/deep.md"
    ;;
*)
    echo "unknown experiment $experiment: against-pytorch or deep" >&2
    exit 2
    ;;
esac
