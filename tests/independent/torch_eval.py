"""Evaluates a wgnorm model.safetensors with PyTorch, independently of wgnorm's code.

Builds the torch.nn.Sequential named in the file's metadata, loads the state_dict strictly
(every name, shape and dtype must match), and reports test loss and accuracy on the MNIST test
set read straight from the IDX files. Compare with `wgnorm eval --checkpoint FILE --json`.

    python tests/independent/torch_eval.py runs/<run>/model.safetensors ../shared/data/mnist

Needs torch, safetensors and numpy (not needed by `cargo test`).
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    sys.exit(f"{stem}(.gz) not found in {data_dir}")


def build(arch: dict) -> nn.Sequential:
    """The Sequential that wgnorm's state_dict names refer to, from the architecture metadata."""
    layers, width = [], arch["inputs"]
    for hidden in arch["hidden"]:
        layers.append(nn.Linear(width, hidden))
        if arch["batchnorm"]:
            bn = arch["batchnorm_config"]
            layers.append(nn.BatchNorm1d(hidden, eps=bn["eps"], momentum=bn["momentum"]))
        layers += [nn.ReLU(), nn.Dropout(arch["dropout"])]
        width = hidden
    layers.append(nn.Linear(width, arch["classes"]))
    return nn.Sequential(*layers)


def main() -> None:
    checkpoint, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = f.metadata()
    model = build(json.loads(metadata["architecture"]))
    model.load_state_dict(load_file(str(checkpoint)), strict=True)
    model.eval()
    images = read_idx(find(data_dir, "t10k-images-idx3-ubyte")).reshape(-1, 784)
    labels = read_idx(find(data_dir, "t10k-labels-idx1-ubyte")).astype(np.int64)
    x = torch.from_numpy((images / 255.0).astype(np.float32))
    y = torch.from_numpy(labels)
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item()
    print(json.dumps({"module": str(model).replace("\n", " "), "test_loss": loss, "test_acc": acc}))


if __name__ == "__main__":
    main()
