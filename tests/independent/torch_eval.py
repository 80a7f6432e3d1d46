"""Evaluates a wgnorm checkpoint with PyTorch, independently of wgnorm's code.

Builds the torch.nn.Sequential written in the file's `torch_module` metadata (read as literal
calls to a fixed set of torch.nn modules and to `Residual(body, shortcut)` of
python/wgnorm_torch.py, never run as code), loads the state_dict strictly (every
name and shape must match), and reports test loss and accuracy on the test set of the IDX files
in DATA_DIR (MNIST or Fashion-MNIST). A model whose first layer is a convolution gets the images
as PyTorch's [N, 1, 28, 28], any other model as [N, 784].

    python tests/independent/torch_eval.py runs/<run>/model.safetensors ../shared/data/mnist

With --expect EVAL_JSON (the output of `wgnorm eval --checkpoint FILE --json`) it exits non-zero
unless PyTorch scores the model as wgnorm did: the same accuracy to one image in 10,000 and the
same mean loss to 1e-4 relative (float32 sums in a different order).

Needs torch and numpy only: the safetensors file is read here, so that nothing of wgnorm's or of
the safetensors package stands between the bytes and PyTorch.
"""

import argparse
import ast
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from wgnorm_torch import Residual  # noqa: E402 (found through the path set just above)

MODULES = {
    "Sequential": nn.Sequential,
    "Linear": nn.Linear,
    "Conv2d": nn.Conv2d,
    "BatchNorm1d": nn.BatchNorm1d,
    "BatchNorm2d": nn.BatchNorm2d,
    "LayerNorm": nn.LayerNorm,
    "GroupNorm": nn.GroupNorm,
    "InstanceNorm2d": nn.InstanceNorm2d,
    "ReLU": nn.ReLU,
    "Dropout": nn.Dropout,
    "MaxPool2d": nn.MaxPool2d,
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "Flatten": nn.Flatten,
}
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


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


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """The tensors and the string metadata of a safetensors file, as its format defines them."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    data = raw[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=DTYPES[entry["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(entry["shape"]).copy())
    return tensors, metadata


def build(node: ast.AST) -> nn.Module:
    """The module a call such as `nn.Conv2d(1, 32, 3, padding=1)` names: literal arguments only,
    or a residual block `Residual(nn.Sequential(...), None or nn.Sequential(...))`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Residual":
        if len(node.args) != 2 or node.keywords:
            sys.exit(f"expected Residual(body, shortcut): {ast.unparse(node)}")
        body, shortcut = node.args
        none = isinstance(shortcut, ast.Constant) and shortcut.value is None
        return Residual(build(body), None if none else build(shortcut))
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "nn"
        and node.func.attr in MODULES
    ):
        sys.exit(f"not a known torch.nn module call: {ast.unparse(node)}")
    module = MODULES[node.func.attr]
    if module is nn.Sequential:
        return nn.Sequential(*(build(arg) for arg in node.args))
    args = [ast.literal_eval(arg) for arg in node.args]
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    return module(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--expect", type=Path, help="wgnorm eval --json output to agree with")
    args = parser.parse_args()

    tensors, metadata = read_safetensors(args.checkpoint)
    model = build(ast.parse(metadata["torch_module"], mode="eval").body)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    images = read_idx(find(args.data_dir, "t10k-images-idx3-ubyte"))
    labels = read_idx(find(args.data_dir, "t10k-labels-idx1-ubyte")).astype(np.int64)
    x = torch.from_numpy((images / 255.0).astype(np.float32))
    x = x.reshape(-1, 1, 28, 28) if isinstance(model[0], nn.Conv2d) else x.reshape(-1, 784)
    y = torch.from_numpy(labels)
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        correct = int((logits.argmax(dim=1) == y).sum())
    result = {
        "module": metadata["torch_module"],
        "test_loss": loss,
        "test_acc": correct / len(labels),
        "images": len(labels),
    }
    print(json.dumps(result))
    if args.expect:
        wgnorm = json.loads(args.expect.read_text())
        wrong = []
        if wgnorm["images"] != len(labels):
            wrong.append(f"images: wgnorm {wgnorm['images']}, here {len(labels)}")
        if abs(round(wgnorm["test_acc"] * len(labels)) - correct) > 1:
            wrong.append(f"accuracy: wgnorm {wgnorm['test_acc']}, PyTorch {result['test_acc']}")
        if abs(wgnorm["test_loss"] - loss) > 1e-4 * abs(loss):
            wrong.append(f"loss: wgnorm {wgnorm['test_loss']}, PyTorch {loss}")
        if wrong:
            sys.exit(f"{args.checkpoint}: PyTorch disagrees with wgnorm eval: " + "; ".join(wrong))


if __name__ == "__main__":
    main()
