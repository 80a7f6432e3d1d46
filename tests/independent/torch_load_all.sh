#!/usr/bin/env bash
# Every kind of architecture wgnorm builds, trained briefly and exported, must load into PyTorch
# strictly and score there as `wgnorm eval` scores it (tests/independent/torch_eval.py --expect).
# Covers the presets, convolutions with stride and without padding, overlapping max pooling,
# global average pooling, BatchNorm with non-default eps and momentum, LayerNorm (nn.LayerNorm on
# features, nn.GroupNorm(1, C) on images), GroupNorm and InstanceNorm, residual blocks (identity,
# projected and arbitrary shortcuts, as python/wgnorm_torch.py's Residual), the resnet8 preset
# (also loaded into wgnorm_torch.resnet(1)), an f16 export, GPU-trained models and Fashion-MNIST.
#
#     tests/independent/torch_load_all.sh [PYTHON] [DATA_ROOT]
#
# PYTHON must have torch and numpy (default python3); DATA_ROOT holds mnist/ and fashion-mnist/
# (default ../shared/data). Builds and runs wgnorm with cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${1:-python3}"
data_root="${2:-../shared/data}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet
wgnorm=target/release/wgnorm

# check NAME DATASET MODEL_FILE [TRAIN_LIMIT] TRAIN_FLAGS...: 2000 training images unless given.
check() {
    local name="$1" dataset="$2" model="$3" limit=2000
    shift 3
    if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
        limit="$1"
        shift
    fi
    local out="$work/$name"
    "$wgnorm" train --out "$out" --dataset "$dataset" --data-dir "$data_root/$dataset" \
        --epochs 1 --train-limit "$limit" "$@" >/dev/null
    local file="$out/$model"
    "$wgnorm" eval --checkpoint "$file" --dataset "$dataset" --data-dir "$data_root/$dataset" \
        --device cpu --json >"$out/eval.json"
    "$python" tests/independent/torch_eval.py "$file" "$data_root/$dataset" --expect "$out/eval.json"
}

check mlp mnist model.safetensors --device cpu --model mlp
check mlp-bn mnist model.safetensors --device cpu --model mlp-bn --hidden 64,32
check cnn mnist model.safetensors --device cpu --model cnn
check cnn-bn-gpu mnist model.safetensors --device gpu --model cnn-bn
check cnn-bn-fashion fashion-mnist model.safetensors --device cpu --model cnn-bn
check strided mnist model.safetensors --device cpu --bn-eps 1e-3 --bn-momentum 0.01 \
    --arch conv8k5s2,bn,relu,maxpool3s2,conv16k3p1,bn,relu,avgpool,flatten,fc10
check norms mnist model.safetensors --device cpu \
    --arch conv8k3p1,gn4,relu,maxpool2,conv16k3p1,in,relu,maxpool2,flatten,fc32,ln,relu,fc10
check cnn-ln-gpu mnist model.safetensors --device gpu --model cnn --norm ln
check f16 mnist model.f16.safetensors --device cpu --model cnn-bn --export-dtype f16
# Residual blocks: identity, projected (conv + BatchNorm) and arbitrary shortcuts, small widths.
check residual mnist model.safetensors 512 --device cpu \
    --arch 'conv8k3s2p1,bn,relu,res(conv8k3p1,bn,relu,conv8k3p1,bn),res16s2(conv16k3s2p1,bn,relu,conv16k3p1,gn4),res(conv16k3p1,ln|conv16k1,in),avgpool,flatten,fc10'
check resnet8 mnist model.safetensors 256 --device cpu --model resnet8
"$python" - "$work/resnet8/model.safetensors" <<'PY'
import sys
from pathlib import Path
sys.path[:0] = ["python", "tests/independent"]
from torch_eval import read_safetensors
from wgnorm_torch import resnet
tensors, _ = read_safetensors(Path(sys.argv[1]))
resnet(1).load_state_dict(tensors, strict=True)
PY
echo "PyTorch loads and scores every architecture as wgnorm eval does"
