#!/usr/bin/env bash
# The measurements behind docs/normalization.md, one command per experiment:
#
#     benches/normalization-experiments.sh [--quick] small-batches|gradient-flow|shift [OUT]
#
# small-batches  BatchNorm, LayerNorm, GroupNorm (8 groups), InstanceNorm (CNN) and none at
#                batch sizes 2 to 32, MLP and CNN, with each BatchNorm run's accuracy with batch
#                statistics beside its running-statistics accuracy (wgnorm sweep).
# gradient-flow  An MLP of 8 hidden layers of 128 with BatchNorm, LayerNorm, GroupNorm and none at
#                Adam's learning rate 0.01, with the gradient norms of every layer (wgnorm compare
#                --log-grad-norms).
# shift          MLPs and CNNs with BatchNorm, LayerNorm and GroupNorm evaluated on test images
#                with their brightness or contrast shifted, and the BatchNorm models again after
#                re-estimating their running statistics on shifted images (wgnorm eval --shift,
#                wgnorm recalibrate --shift); writes OUT/shift/shift.md.
#
# Results go to OUT (default runs/normalization). --quick trains on a few dozen images only, to
# check that the commands run (CI does). WGNORM names the binary (default: built here with
# cargo), DATA_DIR the MNIST folder (default ../shared/data/mnist), DEVICE the device (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = --quick ]; then
    quick=1
    shift
fi
experiment="${1:?usage: $0 [--quick] small-batches|gradient-flow|shift [OUT]}"
out="${2:-runs/normalization}"
if [ -z "${WGNORM:-}" ]; then
    cargo build --release --quiet
    WGNORM=target/release/wgnorm
fi
common=(--device "${DEVICE:-cpu}" --data-dir "${DATA_DIR:-../shared/data/mnist}")
# The protocol, or its quick stand-in: [full] [quick].
pick() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }

case "$experiment" in
small-batches)
    "$WGNORM" sweep "${common[@]}" --models mlp --norms bn,ln,gn:8,none \
        --batch-sizes "$(pick 2,4,8,16,32 2,4)" --repeats "$(pick 3 1)" \
        --epochs "$(pick 2 1)" --train-limit "$(pick 10000 64)" --out "$out/small-batches-mlp"
    "$WGNORM" sweep "${common[@]}" --models cnn --norms bn,ln,gn:8,in,none \
        --batch-sizes "$(pick 2,4,8,16,32 2,4)" --repeats "$(pick 2 1)" \
        --epochs 1 --train-limit "$(pick 4000 32)" --out "$out/small-batches-cnn"
    ;;
gradient-flow)
    "$WGNORM" compare "${common[@]}" --norms bn,ln,gn:8,none \
        --hidden 128,128,128,128,128,128,128,128 --lr 0.01 --repeats "$(pick 3 1)" \
        --epochs "$(pick 2 1)" --train-limit "$(pick 20000 64)" --log-grad-norms "$(pick 25 1)" \
        --out "$out/gradient-flow"
    ;;
shift)
    dir="$out/shift"
    mkdir -p "$dir"
    shifts=(brightness:0.1 brightness:0.3 brightness:-0.3 contrast:0.5 contrast:2)
    accuracy() { sed -n 's/.*"test_acc":\([0-9.e-]*\).*/\1/p'; }
    after() { sed -n 's/.*"test_acc_after":\([0-9.e-]*\).*/\1/p'; }
    table="$dir/shift.md"
    {
        printf '| model | unshifted |'
        printf ' %s |' "${shifts[@]}"
        printf '\n|%s\n' "$(printf ' --- |%.0s' $(seq 0 "${#shifts[@]}") ) --- |"
    } >"$table"
    for model in mlp cnn; do
        for norm in bn ln gn:8; do
            name="$model-${norm/:/}"
            "$WGNORM" train "${common[@]}" --model "$model" --norm "$norm" \
                --epochs "$(pick 3 1)" --train-limit "$(pick 20000 64)" --out "$dir/$name" \
                >"$dir/$name.log"
            checkpoint="$dir/$name/model.safetensors"
            row="| $name | $("$WGNORM" eval "${common[@]}" --checkpoint "$checkpoint" --json | accuracy) |"
            recalibrated="| $name, statistics re-estimated on the shifted images | – |"
            for shift in "${shifts[@]}"; do
                acc="$("$WGNORM" eval "${common[@]}" --checkpoint "$checkpoint" --json \
                    --shift "$shift" | accuracy)"
                row="$row $acc |"
                if [ "$norm" = bn ]; then
                    acc="$("$WGNORM" recalibrate "${common[@]}" --checkpoint "$checkpoint" \
                        --json --shift "$shift" --batches "$(pick 200 1)" \
                        --out "$dir/$name-recalibrated-${shift/:/}" | after)"
                    recalibrated="$recalibrated $acc |"
                fi
            done
            echo "$row" >>"$table"
            if [ "$norm" = bn ]; then
                echo "$recalibrated" >>"$table"
            fi
        done
    done
    cat "$table"
    ;;
*)
    echo "unknown experiment $experiment: small-batches, gradient-flow or shift" >&2
    exit 2
    ;;
esac
