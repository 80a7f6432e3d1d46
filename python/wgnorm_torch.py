"""The PyTorch side of wgnorm's models: the one module wgnorm's checkpoints need beyond torch.nn,
and the ResNet presets as torch.nn modules.

A wgnorm checkpoint's `torch_module` metadata is an `nn.Sequential` of torch.nn modules and, for
each residual block, `Residual(body, shortcut)`, the module defined here;
tests/independent/torch_eval.py builds any of them from that text (parsed, never run as code).
`resnet(n)` builds `wgnorm train --model resnet8` (n = 1), `resnet20` (n = 3) or `resnet56`
(n = 9) as wgnorm lays it out, so a wgnorm checkpoint loads into it strictly and a model trained
here has the `state_dict` names wgnorm gives:

    import sys; sys.path.insert(0, "python")      # from the repository's root
    from safetensors.torch import load_file
    from wgnorm_torch import resnet

    model = resnet(1)                              # --model resnet8
    model.load_state_dict(load_file("runs/X/model.safetensors"))

Needs torch only.
"""

import torch
import torch.nn as nn


class Residual(nn.Module):
    """A ResNet v1 block: relu(body(x) + shortcut(x)), the shortcut x itself when None.

    Its tensors are `body.{j}.*` and `shortcut.{j}.*`, as in wgnorm's `state_dict` names.
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def norm_layers(norm: str, channels: int) -> list[nn.Module]:
    """The normalization `--norm NORM` puts after a convolution of `channels` channels: bn, ln,
    gn<G> (or gn:<G>), in, or none (no layer)."""
    if norm == "bn":
        return [nn.BatchNorm2d(channels)]
    if norm == "ln":
        return [nn.GroupNorm(1, channels)]
    if norm == "in":
        return [nn.InstanceNorm2d(channels, affine=True)]
    if norm == "none":
        return []
    if norm.startswith("gn") and norm[2:].lstrip(":").isdigit():
        return [nn.GroupNorm(int(norm[2:].lstrip(":")), channels)]
    raise ValueError(f"normalization {norm!r}: expected bn, ln, gn<G> or gn:<G>, in or none")


def resnet(blocks_per_stage: int, classes: int = 10, norm: str = "bn", channels: int = 1) -> nn.Sequential:
    """ResNet-(6n+2) for small images with n = `blocks_per_stage`, as `wgnorm train --model
    resnet<6n+2> --norm NORM` builds it: a 3×3 convolution to 16 channels; three stages of n
    residual blocks of two 3×3 convolutions with 16, 32 and 64 channels, the first block of
    stages 2 and 3 with stride 2 and a 1×1 convolution of stride 2 on its shortcut; global average
    pooling; a Linear to `classes`. The normalization follows every convolution."""
    if blocks_per_stage < 1:
        raise ValueError("a ResNet needs at least one residual block per stage")
    layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, padding=1), *norm_layers(norm, 16), nn.ReLU()]
    inputs = 16
    for stage, width in enumerate([16, 32, 64]):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            body = nn.Sequential(
                nn.Conv2d(inputs, width, 3, stride=stride, padding=1),
                *norm_layers(norm, width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                *norm_layers(norm, width),
            )
            shortcut = None
            if stride != 1:
                shortcut = nn.Sequential(nn.Conv2d(inputs, width, 1, stride=stride), *norm_layers(norm, width))
            layers.append(Residual(body, shortcut))
            inputs = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)
