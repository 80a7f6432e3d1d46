"""PyTorch's side of `wgnorm bench`, measured the same way on the same machine (not needed by
`cargo test`; needs torch and numpy).

- kernels: aten's native_batch_norm (training) forward, its backward, and both, at the shapes of
  `wgnorm bench --suite kernels`: median of --reps after --warmup.
- steps: one training step of the reference MLP (index a batch of the float images, forward,
  cross-entropy, zero_grad, backward, Adam) at each batch size, median of --reps samples of 5.
- epoch: one epoch of the reference experiment in a lean eager loop (54,000 training images at
  batch 32, then the validation forward), as in tests/independent/torch_train.py.

    python benches/torch_reference.py ../shared/data/mnist --threads 1 --json torch-1t.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

SHAPES = [(32, 128), (256, 128), (4096, 256), (65536, 256), (32, 64, 28, 28)]
BATCHES = [16, 32, 64, 128, 256]
STEPS_PER_SAMPLE = 5

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "independent"))
from torch_train import load  # noqa: E402  (the IDX reader the accuracy comparison uses)


def timing(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "reps": len(samples)}


def timed(work, warmup, reps):
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return timing(samples)


def kernels(warmup, reps):
    rows = []
    for shape in SHAPES:
        c = shape[1]
        x = torch.rand(shape)
        dy = x - 0.5
        weight, bias = torch.ones(c), torch.zeros(c)
        running_mean, running_var = torch.zeros(c), torch.ones(c)

        def forward():
            return torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                    True, 0.1, 1e-5)

        _, save_mean, save_invstd = forward()

        def backward():
            torch.ops.aten.native_batch_norm_backward(dy, x, weight, running_mean, running_var,
                                                      save_mean, save_invstd, True, 1e-5,
                                                      [True, True, True])

        def both():
            _, mean, invstd = forward()
            torch.ops.aten.native_batch_norm_backward(dy, x, weight, running_mean, running_var,
                                                      mean, invstd, True, 1e-5,
                                                      [True, True, True])

        label = "x".join(map(str, shape))
        for name, work in [("forward", forward), ("backward", backward), ("fwd+bwd", both)]:
            t = timed(work, warmup, reps)
            rows.append({"shape": label, "pass": name, "timing": t})
            print(f"{label:>14} {name:>8} {t['median'] * 1e3:10.3f} ms", flush=True)
    return rows


def model(batchnorm):
    layers = [nn.Linear(784, 128)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(128))
    layers += [nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)]
    net = nn.Sequential(*layers)
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


def steps(x_train, y_train, warmup, reps):
    rows = []
    for name, batchnorm in [("bn", True), ("nobn", False)]:
        for batch in BATCHES:
            net = model(batchnorm)
            net.train()
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            order = torch.randperm(len(x_train))
            position = [0]

            def sample():
                for _ in range(STEPS_PER_SAMPLE):
                    first = position[0] % (len(x_train) - batch)
                    position[0] += batch
                    index = order[first : first + batch]
                    loss = nn.functional.cross_entropy(net(x_train[index]), y_train[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

            t = timed(sample, max(1, warmup), reps)
            per_step = {k: (v / STEPS_PER_SAMPLE if k != "reps" else v) for k, v in t.items()}
            rows.append({"model": name, "batch": batch, "seconds_per_step": per_step})
            print(f"{name:>5} {batch:>5} {per_step['median'] * 1e3:9.3f} ms/step", flush=True)
    return rows


def epoch(x_train, y_train, x_val, y_val):
    torch.manual_seed(0)
    net = model(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    net.train()
    order = torch.randperm(len(x_train))
    for first in range(0, len(x_train), 32):
        index = order[first : first + 32]
        loss = nn.functional.cross_entropy(net(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_val).argmax(1) == y_val).float().mean().item()
    seconds = time.perf_counter() - start
    print(f"one epoch (bn, batch 32, + validation): {seconds:.2f} s, val acc {accuracy:.4f}")
    return {"seconds": seconds, "val_acc": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    x = torch.from_numpy((load(args.data_dir, "train-images-idx3-ubyte").reshape(-1, 784) / 255.0).astype(np.float32))
    y = torch.from_numpy(load(args.data_dir, "train-labels-idx1-ubyte").astype(np.int64))
    split = int(len(x) * 0.9)
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "kernels": kernels(args.warmup, args.reps),
              "train_steps": steps(x_train, y_train, args.warmup, args.reps),
              "steps_per_sample": STEPS_PER_SAMPLE,
              "reference_epoch": epoch(x_train, y_train, x_val, y_val)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
