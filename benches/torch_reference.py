"""PyTorch's side of `wgnorm bench`, measured the same way on the same machine (not needed by
`cargo test`; needs torch and numpy).

- kernels: aten's native_batch_norm (training) forward, its backward, and both, at the shapes of
  `wgnorm bench --suite kernels`: median of --reps after --warmup.
- steps: one training step of each of --models (wgnorm's presets: the reference MLP with and
  without BatchNorm, the CNN with and without; index a batch of the float images, forward,
  cross-entropy, zero_grad, backward, Adam) at each batch size, median of --reps samples of 5.
- epoch: one epoch of the reference experiment per model in a lean eager loop (54,000 training
  images at batch 32, then the validation forward), as in tests/independent/torch_train.py.

With --device cuda everything runs on the GPU (the images held there, as wgnorm holds them), each
timing ending in a synchronize; the steps and the epoch are timed eager and again replaying a
CUDA graph of the whole step (static batch tensors, capturable Adam), where capture works.

    python benches/torch_reference.py ../shared/data/mnist --threads 1 --json torch-1t.json
    python benches/torch_reference.py ../shared/data/mnist --device cuda --json torch-cuda.json
    python benches/torch_reference.py ../shared/data/mnist --models cnn-bn,cnn --no-kernels
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
PRESETS = ["mlp-bn", "mlp", "cnn-bn", "cnn"]
ALIASES = {"bn": "mlp-bn", "nobn": "mlp"}
STEPS_PER_SAMPLE = 5

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "independent"))
from torch_train import load  # noqa: E402  (the IDX reader the accuracy comparison uses)


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timing(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "reps": len(samples)}


def timed(work, warmup, reps):
    for _ in range(warmup):
        work()
    sync()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        sync()
        samples.append(time.perf_counter() - start)
    return timing(samples)


def kernels(warmup, reps):
    rows = []
    for shape in SHAPES:
        c = shape[1]
        x = torch.rand(shape, device=DEVICE)
        dy = x - 0.5
        weight, bias = torch.ones(c, device=DEVICE), torch.zeros(c, device=DEVICE)
        running_mean = torch.zeros(c, device=DEVICE)
        running_var = torch.ones(c, device=DEVICE)

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


def model(name):
    """The preset `name` as wgnorm builds it (Glorot-uniform weights, zero biases, as Keras), on
    [N, 784] rows: the convolutional presets view them as [N, 1, 28, 28] first."""
    batchnorm = name.endswith("-bn")
    layers = []
    if name.startswith("cnn"):
        layers.append(nn.Unflatten(1, (1, 28, 28)))
        channels = 1
        for width in (32, 64):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        layers += [nn.Flatten(), nn.Linear(64 * 7 * 7, 128)]
    else:
        layers.append(nn.Linear(784, 128))
    if batchnorm:
        layers.append(nn.BatchNorm1d(128))
    layers += [nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)]
    net = nn.Sequential(*layers)
    for layer in net:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net.to(DEVICE)


def train_step(net, optimizer, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def graphed_step(net, batch):
    """A CUDA graph of one whole training step on static batch tensors, as PyTorch's CUDA graphs
    documentation captures one: returns (run(x, y), None), or (None, why) where capture fails."""
    try:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
        static_x = torch.zeros(batch, 784, device=DEVICE)
        static_y = torch.zeros(batch, dtype=torch.int64, device=DEVICE)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                train_step(net, optimizer, static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss = nn.functional.cross_entropy(net(static_x), static_y)
            loss.backward()
            optimizer.step()

        def run(x, y):
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()

        return run, None
    except Exception as error:  # noqa: BLE001  (report why capture failed, keep the eager rows)
        return None, f"{type(error).__name__}: {error}"


def step_modes():
    """Eager always; a CUDA graph of the step too on the GPU."""
    return ["eager", "graph"] if DEVICE.type == "cuda" else ["eager"]


def stepper(net, batch, mode):
    """A function running one step on (x, y), or None and why where the mode cannot run."""
    if mode == "graph":
        return graphed_step(net, batch)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    return (lambda x, y: train_step(net, optimizer, x, y)), None


def steps(x_train, y_train, models, batches, warmup, reps):
    rows = []
    for mode in step_modes():
        for name in models:
            for batch in batches:
                net = model(name)
                net.train()
                run, why = stepper(net, batch, mode)
                if run is None:
                    rows.append({"model": name, "batch": batch, "mode": mode, "error": why})
                    print(f"{name:>5} {batch:>5} {mode}: {why}", flush=True)
                    continue
                order = torch.randperm(len(x_train), device=DEVICE)
                position = [0]

                def sample():
                    for _ in range(STEPS_PER_SAMPLE):
                        first = position[0] % (len(x_train) - batch)
                        position[0] += batch
                        index = order[first : first + batch]
                        run(x_train[index], y_train[index])

                t = timed(sample, max(1, warmup), reps)
                per_step = {k: (v / STEPS_PER_SAMPLE if k != "reps" else v) for k, v in t.items()}
                rows.append({"model": name, "batch": batch, "mode": mode,
                             "seconds_per_step": per_step})
                print(f"{name:>5} {batch:>5} {mode:>5} {per_step['median'] * 1e3:9.3f} ms/step",
                      flush=True)
    return rows


def epoch(x_train, y_train, x_val, y_val, name, mode):
    torch.manual_seed(0)
    net = model(name)
    net.train()
    run, why = stepper(net, 32, mode)
    if run is None:
        print(f"one epoch ({name}, {mode}): {why}")
        return {"model": name, "mode": mode, "error": why}
    sync()
    start = time.perf_counter()
    net.train()
    order = torch.randperm(len(x_train), device=DEVICE)
    # A CUDA graph replays one batch size, so the graphed epoch leaves out the last partial batch.
    last = len(x_train) if mode == "eager" else len(x_train) - len(x_train) % 32
    for first in range(0, last, 32):
        index = order[first : first + 32]
        run(x_train[index], y_train[index])
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_val).argmax(1) == y_val).float().mean().item()
    sync()
    seconds = time.perf_counter() - start
    print(f"one epoch ({name}, batch 32, + validation, {mode}): {seconds:.2f} s, "
          f"val acc {accuracy:.4f}", flush=True)
    return {"model": name, "mode": mode, "seconds": seconds, "val_acc": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--models", default="mlp-bn,mlp",
                        help="comma-separated, as wgnorm bench --models: " + ", ".join(PRESETS))
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCHES)))
    parser.add_argument("--no-kernels", action="store_true", help="leave out the BatchNorm kernels")
    parser.add_argument("--no-epoch", action="store_true", help="leave out the reference epochs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the tensors live (cuda: a CUDA or ROCm GPU)")
    args = parser.parse_args()
    models = [ALIASES.get(m, m) for m in args.models.split(",")]
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        sys.exit(f"--models: unknown model {unknown[0]!r}, expected one of {', '.join(PRESETS)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this PyTorch build sees no CUDA or ROCm GPU")
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {where}")

    x = torch.from_numpy((load(args.data_dir, "train-images-idx3-ubyte").reshape(-1, 784) / 255.0).astype(np.float32))
    y = torch.from_numpy(load(args.data_dir, "train-labels-idx1-ubyte").astype(np.int64))
    split = int(len(x) * 0.9)
    x, y = x.to(DEVICE), y.to(DEVICE)
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": where,
              "kernels": [] if args.no_kernels else kernels(args.warmup, args.reps),
              "train_steps": steps(x_train, y_train, models, batches, args.warmup, args.reps),
              "steps_per_sample": STEPS_PER_SAMPLE,
              "reference_epoch": [] if args.no_epoch else
              [epoch(x_train, y_train, x_val, y_val, name, mode)
               for name in models for mode in step_modes()]}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
