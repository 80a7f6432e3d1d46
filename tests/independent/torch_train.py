"""The reference experiment in PyTorch, under the protocol `wgnorm train` follows, to compare
against (not needed by `cargo test`; needs torch and numpy).

MNIST / 255; validation = the last 10% of the 60k training images; train on the first 54k,
reshuffled every epoch, last partial batch kept; Linear(784,128) [→ BatchNorm1d(128)] → ReLU →
Dropout(0.2) → Linear(128,10), or the CNN presets (`cnn`, `cnn-bn`: two Conv2d(3×3, padding 1)
[→ BatchNorm2d] → ReLU → MaxPool2d(2) blocks of 32 and 64 channels, then that head on 3136
inputs), or the ResNet presets (`resnet8`, `resnet20`, `resnet56`, from python/wgnorm_torch.py,
with `--norm` as wgnorm's); Keras' glorot_uniform weights and zero biases, as `wgnorm train
--init keras`; Adam lr 1e-3; 5 epochs; batch 32; one CPU thread. `--train-limit N` trains on the
first N training images only, as wgnorm's flag does.

    python tests/independent/torch_train.py ../shared/data/mnist --model bn --seed 0
    python tests/independent/torch_train.py ../shared/data/mnist --model resnet20 --norm none
"""

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from wgnorm_torch import resnet  # noqa: E402 (found through the path set just above)

# Residual blocks per stage of each ResNet preset: ResNet-(6n+2).
RESNETS = {"resnet8": 1, "resnet20": 3, "resnet56": 9}


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data_dir: Path, stem: str):
    path = data_dir / (stem + ".gz")
    return read_idx(path if path.exists() else data_dir / stem)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", choices=["bn", "nobn", "cnn-bn", "cnn", *RESNETS], default="bn")
    parser.add_argument("--norm", help="a ResNet's normalization: bn (its own), ln, gn<G>, in or none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-limit", type=int, help="train on the first N training images only")
    args = parser.parse_args()
    if args.norm is not None and args.model not in RESNETS:
        parser.error("--norm sets the normalization of a ResNet (--model resnet8, resnet20 or resnet56)")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    x = torch.from_numpy((load(args.data_dir, "train-images-idx3-ubyte").reshape(-1, 784) / 255.0).astype(np.float32))
    y = torch.from_numpy(load(args.data_dir, "train-labels-idx1-ubyte").astype(np.int64))
    xt = torch.from_numpy((load(args.data_dir, "t10k-images-idx3-ubyte").reshape(-1, 784) / 255.0).astype(np.float32))
    yt = torch.from_numpy(load(args.data_dir, "t10k-labels-idx1-ubyte").astype(np.int64))
    split = int(len(x) * 0.9)
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]

    if args.model in RESNETS:
        x, xt = x.reshape(-1, 1, 28, 28), xt.reshape(-1, 1, 28, 28)
        try:
            model = resnet(RESNETS[args.model], norm=args.norm or "bn")
        except ValueError as error:
            parser.error(str(error))
    else:
        model = mlp_or_cnn(args.model)
        if args.model.startswith("cnn"):
            x, xt = x.reshape(-1, 1, 28, 28), xt.reshape(-1, 1, 28, 28)
    x_train, x_val = x[:split], x[split:]
    train_rows = split if args.train_limit is None else min(args.train_limit, split)
    for layer in model.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def evaluate(xs, ys):
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(xs[i : i + 1000]) for i in range(0, len(xs), 1000)])
            return nn.functional.cross_entropy(logits, ys).item(), (logits.argmax(1) == ys).float().mean().item()

    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(train_rows)
        for first in range(0, train_rows, args.batch_size):
            batch = order[first : first + args.batch_size]
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_loss, val_acc = evaluate(x_val, y_val)
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
    test_loss, test_acc = evaluate(xt, yt)
    print(json.dumps({"model": args.model, "norm": args.norm, "seed": args.seed, "test_loss": test_loss,
                      "test_acc": test_acc, "train_seconds": time.time() - start}))


def mlp_or_cnn(model: str) -> nn.Sequential:
    """The MLP (`bn`, `nobn`) or the CNN (`cnn-bn`, `cnn`) preset, as wgnorm builds it."""
    batchnorm = model in ("bn", "cnn-bn")
    layers = []
    features = 784
    if model.startswith("cnn"):
        for inputs, outputs in [(1, 32), (32, 64)]:
            layers.append(nn.Conv2d(inputs, outputs, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(outputs))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        layers.append(nn.Flatten())
        features = 3136
    layers.append(nn.Linear(features, 128))
    if batchnorm:
        layers.append(nn.BatchNorm1d(128))
    layers += [nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


if __name__ == "__main__":
    main()
