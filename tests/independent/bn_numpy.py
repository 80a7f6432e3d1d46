#!/usr/bin/env python3
"""Checks `wgnorm bn` against an independent float64 BatchNorm written with numpy, following
PyTorch's training-mode F.batch_norm: biased variance for normalization, unbiased variance
for the running update, momentum weighting the new batch value.

Usage: python3 tests/independent/bn_numpy.py [path/to/wgnorm]   (needs numpy)
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

EPS, MOMENTUM = 1e-5, 0.1


def batch_norm_train(x, gamma, beta, rm, rv, dy):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    y = gamma.reshape(shape) * xhat + beta.reshape(shape)
    out = {
        "y": y, "mean": mean, "var": var, "invstd": invstd,
        "running_mean": (1 - MOMENTUM) * rm + MOMENTUM * mean,
        "running_var": (1 - MOMENTUM) * rv + MOMENTUM * var * m / (m - 1),
    }
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    out["dbeta"], out["dgamma"] = dbeta, dgamma
    out["dx"] = (gamma * invstd / m).reshape(shape) * (
        m * dy - dbeta.reshape(shape) - xhat * dgamma.reshape(shape))
    return out


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else "target/release/wgnorm"
    rng = np.random.default_rng()
    worst = {}
    for dims in [(32, 128), (1000, 7), (17, 3, 7, 7), (256, 64, 28, 28)]:
        c = dims[1]
        shape = (1, -1) + (1,) * (len(dims) - 2)
        means = rng.uniform(1, 3, c) * rng.choice([-1, 1], c)
        x = (rng.standard_normal(dims) * rng.uniform(0.5, 2, c).reshape(shape)
             + means.reshape(shape)).astype(np.float32)
        dy = rng.standard_normal(dims).astype(np.float32)
        gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = rng.standard_normal(c).astype(np.float32)
        rm = rng.standard_normal(c).astype(np.float32)
        rv = rng.uniform(0.5, 2, c).astype(np.float32)
        f64 = lambda a: a.astype(np.float64)
        want = batch_norm_train(f64(x), f64(gamma), f64(beta), f64(rm), f64(rv), f64(dy))
        with tempfile.TemporaryDirectory() as tmp:
            for name, arr in dict(x=x, dy=dy, gamma=gamma, beta=beta, rm=rm, rv=rv).items():
                np.save(os.path.join(tmp, name + ".npy"), arr)
            for device in ["cpu", "gpu"]:
                out = os.path.join(tmp, device)
                args = [exe, "bn", "--device", device, "--out", out]
                for flag, name in [("--x", "x"), ("--dy", "dy"), ("--gamma", "gamma"),
                                   ("--beta", "beta"), ("--running-mean", "rm"),
                                   ("--running-var", "rv")]:
                    args += [flag, os.path.join(tmp, name + ".npy")]
                subprocess.run(args, check=True, capture_output=True)
                for name, ref in want.items():
                    got = np.load(os.path.join(out, name + ".npy")).astype(np.float64)
                    assert got.shape == ref.shape, (name, got.shape, ref.shape)
                    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
                    key = (device, name)
                    worst[key] = max(worst.get(key, 0.0), err)
    failed = False
    for device in ["cpu", "gpu"]:
        row = []
        for name in want:
            limit = 1e-4 if name in ("dx", "dgamma", "dbeta") else 1e-5
            err = worst[(device, name)]
            failed |= not err < limit
            row.append(f"{name} {err:.1e}")
        print(f"{device}: worst normwise relative error: " + ", ".join(row))
    print("FAILED" if failed else "all within tolerance (1e-5 forward, 1e-4 backward)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
