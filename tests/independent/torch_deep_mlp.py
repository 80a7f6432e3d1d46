"""A deep MLP in PyTorch with BatchNorm, LayerNorm and none, beside docs/normalization.md's
gradient-flow experiment: 8 hidden layers of 128, each Linear (glorot_uniform, zero bias) then
the normalization, ReLU and Dropout(0.2), trained for one epoch on the first 10,000 MNIST training
images at batch 32, then scored on the 10,000 test images.

    python3 tests/independent/torch_deep_mlp.py MNIST_DIR

Prints the test accuracy of each normalization for Adam at 1e-3 and 1e-2 and SGD at 0.1.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def images(path: Path, count=None) -> torch.Tensor:
    pixels = read_idx(path)[:count].reshape(-1, 784) / 255.0
    return torch.tensor(pixels, dtype=torch.float32)


def labels(path: Path, count=None) -> torch.Tensor:
    return torch.tensor(read_idx(path)[:count].astype(np.int64))


def model(norm: str) -> nn.Sequential:
    layers, inputs = [], 784
    for _ in range(8):
        linear = nn.Linear(inputs, 128)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if norm == "ln":
            layers.append(nn.LayerNorm(128))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(128))
        layers += [nn.ReLU(), nn.Dropout(0.2)]
        inputs = 128
    head = nn.Linear(inputs, 10)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def main() -> None:
    data = Path(sys.argv[1])
    torch.manual_seed(0)
    x = images(data / "train-images-idx3-ubyte.gz", 10000)
    y = labels(data / "train-labels-idx1-ubyte.gz", 10000)
    test_x = images(data / "t10k-images-idx3-ubyte.gz")
    test_y = labels(data / "t10k-labels-idx1-ubyte.gz")
    for optimizer, lr in [("adam", 1e-3), ("adam", 1e-2), ("sgd", 0.1)]:
        scores = {}
        for norm in ["none", "ln", "bn"]:
            net = model(norm)
            params = net.parameters()
            step = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
            for batch in torch.randperm(len(x)).split(32):
                step.zero_grad()
                nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                step.step()
            net.eval()
            with torch.no_grad():
                scores[norm] = round((net(test_x).argmax(1) == test_y).float().mean().item(), 4)
        print(optimizer, lr, scores, flush=True)


if __name__ == "__main__":
    main()
