"""How the gradient reaches each depth of a net, from the metrics.json of runs trained with
`wgnorm train --log-grad-norms N`: a Markdown table with each run's test accuracy and the norm
of the gradient reaching the input of its shallowest and deepest weighted layers (the first
convolution after the stem, and the final Linear), at the first and the last logged step.

    python3 benches/grad_norms_by_depth.py runs/residual/deep/*/metrics.json

Only the standard library: the metrics files are JSON.
"""

import json
import sys
from pathlib import Path


def summary(path: Path) -> str:
    metrics = json.loads(path.read_text())
    names = metrics["grad_norm_names"]
    inputs = [i for i, name in enumerate(names) if name.endswith(".input")]
    if not inputs:
        raise SystemExit(f"{path}: no gradient reaching a layer's input was logged")
    records = [record for epoch in metrics["epochs"] for record in epoch["grad_norms"]]
    if not records:
        raise SystemExit(f"{path}: no logged step")
    shallow, deep = inputs[0], inputs[-1]
    cells = []
    for record in (records[0], records[-1]):
        norms = record["norms"]
        ratio = norms[shallow] / norms[deep] if norms[deep] > 0 else float("inf")
        cells += [f"{norms[shallow]:.2e}", f"{norms[deep]:.2e}", f"{ratio:.2g}"]
    run = path.parent.name
    accuracy = "unfinished" if metrics["test_acc"] is None else f"{metrics['test_acc'] * 100:.2f}%"
    return (f"| {run} | {accuracy} | {len(inputs)} | "
            + " | ".join(cells) + f" | {records[0]['step']}, {records[-1]['step']} |")


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    if not paths:
        raise SystemExit(__doc__)
    print("| run | test acc | layers logged | first step: shallow | deep | shallow/deep "
          "| last step: shallow | deep | shallow/deep | steps |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        print(summary(path))


if __name__ == "__main__":
    main()
