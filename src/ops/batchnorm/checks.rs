//! The checks every BatchNorm op runs once, in the trait, before either backend's kernels.

use super::{Affine, BatchNormForward, BatchNormGrads, BatchNormShape, Mode, RunningStats};
use crate::backend::Backend;
use crate::ops::activation::Activation;
use crate::ops::{check_len, check_u32_indexable};
use crate::{Error, Result};

/// The pieces of a training pass over one part of a larger batch take x whole: ghost batches
/// would need statistics per ghost batch across the parts.
pub(super) fn check_whole_batch(shape: BatchNormShape) -> Result<()> {
    check_not_empty(shape)?;
    if shape.ghost_batches != 1 {
        return Err(Error::InvalidArgument(format!(
            "synchronized BatchNorm takes the batch whole, not in {} ghost batches",
            shape.ghost_batches
        )));
    }
    Ok(())
}

/// A fused activation's output, where a backward pass takes one: a ReLU's (`check_activation`),
/// as long as x.
pub(super) fn check_activated<B: Backend>(
    backend: &B,
    activated: Option<(&B::Buffer, Activation)>,
    shape: BatchNormShape,
) -> Result<()> {
    match activated {
        Some((activated, activation)) => {
            check_activation(activation)?;
            check_len("activated output", backend.len_of(activated), shape.numel())
        }
        None => Ok(()),
    }
}

/// The backward pass gates by the activated output, which only a ReLU's output allows.
pub(super) fn check_activation(activation: Activation) -> Result<()> {
    if activation.relu {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "BatchNorm runs a ReLU (and a dropout after it) in its own pass, not {}",
        activation.name()
    )))
}

pub(super) fn check_not_empty(shape: BatchNormShape) -> Result<()> {
    if shape.numel() == 0 {
        return Err(Error::Shape(format!(
            "BatchNorm needs a non-empty x, got (N={}, C={}, S={})",
            shape.n, shape.c, shape.s
        )));
    }
    if shape.ghost_batches == 0 || !shape.n.is_multiple_of(shape.ghost_batches) {
        return Err(Error::Shape(format!(
            "BatchNorm cannot split {} samples into {} ghost batches of equal size",
            shape.n, shape.ghost_batches
        )));
    }
    check_u32_indexable("BatchNorm input", shape.numel())
}

/// Refuses what PyTorch refuses: training statistics from a single value per channel (the
/// unbiased running variance would divide by m − 1 = 0).
pub fn check_mode(mode: Mode, shape: BatchNormShape) -> Result<()> {
    check_not_empty(shape)?;
    if mode == Mode::Train && shape.per_channel() < 2 {
        return Err(Error::InvalidArgument(format!(
            "BatchNorm in training mode needs more than 1 value per channel{}, got input of \
             shape (N={}, C={}, S={}); use a batch of at least 2 or eval mode",
            match shape.ghost_batches {
                1 => String::new(),
                ghosts => format!(" in each of its {ghosts} ghost batches"),
            },
            shape.n,
            shape.c,
            shape.s
        )));
    }
    Ok(())
}

/// The lengths `check_forward` checks: x, γ, β, the running mean and variance, y, stats.
pub(super) fn forward_lens<B: Backend>(
    backend: &B,
    x: &B::Buffer,
    affine: &Affine<B>,
    running: &RunningStats<B>,
    out: &BatchNormForward<B>,
) -> [usize; 7] {
    [
        x,
        &affine.gamma,
        &affine.beta,
        &running.mean,
        &running.var,
        &out.y,
        &out.stats,
    ]
    .map(|buffer| backend.len_of(buffer))
}

/// The lengths `check_backward` checks: x, dy, γ, stats, then dx, dγ, dβ.
pub(super) fn backward_lens<B: Backend>(
    backend: &B,
    inputs: [&B::Buffer; 4],
    grads: &BatchNormGrads<B>,
) -> [usize; 7] {
    let [x, dy, gamma, stats] = inputs;
    [x, dy, gamma, stats, &grads.dx, &grads.dgamma, &grads.dbeta]
        .map(|buffer| backend.len_of(buffer))
}

pub(super) fn check_forward(mode: Mode, shape: BatchNormShape, lens: [usize; 7]) -> Result<()> {
    check_mode(mode, shape)?;
    check_forward_lens(shape, lens)
}

pub(super) fn check_forward_lens(shape: BatchNormShape, lens: [usize; 7]) -> Result<()> {
    let [x, gamma, beta, mean, var, y, stats] = lens;
    check_len("x", x, shape.numel())?;
    check_len("gamma", gamma, shape.c)?;
    check_len("beta", beta, shape.c)?;
    check_len("running mean", mean, shape.c)?;
    check_len("running var", var, shape.c)?;
    check_len("y", y, shape.numel())?;
    check_len("stats", stats, shape.stats_len())
}

pub(super) fn check_backward(shape: BatchNormShape, lens: [usize; 7]) -> Result<()> {
    check_not_empty(shape)?;
    let [x, dy, gamma, stats, dx, dgamma, dbeta] = lens;
    check_len("x", x, shape.numel())?;
    check_len("dy", dy, shape.numel())?;
    check_len("gamma", gamma, shape.c)?;
    check_len("stats", stats, shape.stats_len())?;
    check_len("dx", dx, shape.numel())?;
    check_len("dgamma", dgamma, shape.c)?;
    check_len("dbeta", dbeta, shape.c)
}
