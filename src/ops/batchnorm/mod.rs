//! BatchNorm over x viewed as (N, C, S): forward in training and evaluation mode, and backward.
//! Per channel c, over its m = N·S values:
//!
//! ```text
//! mean = Σx/m, var = Σ(x − mean)²/m (biased), invstd = 1/sqrt(var + eps)
//! train:    y = γ·x̂ + β, x̂ = (x − mean)·invstd; running ← (1 − momentum)·running
//!           + momentum·(mean, var·m/(m − 1)) (the biased var with `unbiased_running_var` off),
//!           except in a channel whose batch mean or variance is not finite, which keeps its
//!           running statistics
//! eval:     y = γ·(x − running_mean)/sqrt(running_var + eps) + β
//! backward: dβ = Σdy, dγ = Σdy·x̂, dx = γ·invstd/m·(m·dy − dβ − x̂·dγ)
//! ```
//!
//! A ReLU after the BatchNorm (and a dropout after that) can run in the same passes
//! (`batchnorm_activation_forward`/`_backward`): one pass over memory fewer each way.
//!
//! `shaders/batchnorm.wgsl` spells out how the GPU computes it (the reductions run on x minus
//! one sample of the channel, so the f32 sums stay at the scale of the spread); `cpu.rs` reduces
//! the same shifted values in blocks merged by Chan's formula, in another order; `gpu.rs`
//! launches the kernels, `host.rs` records them into a host's encoder, and
//! `src/reference.rs` is the float64 oracle the tests hold both to.

mod checks;
mod config;
pub(crate) mod cpu;
mod cpu_reduce;
mod gpu;
mod host;
mod plan;
mod shape;

pub use checks::check_mode;
use checks::{
    backward_lens, check_activated, check_activation, check_backward, check_forward,
    check_forward_lens, check_whole_batch, forward_lens,
};
pub use config::BatchNormConfig;
pub use shape::BatchNormShape;

pub(crate) use gpu::{BackwardBuffers, ForwardBuffers};
pub use host::{HostBatchNormBackward, HostBatchNormForward};
#[doc(hidden)]
pub use plan::BatchNormParams;
#[doc(hidden)]
pub use plan::plan_row_chunks;
pub(crate) use plan::{Normalization, ReductionPlan, plan_params};

use crate::backend::Backend;
use crate::ops::activation::Activation;
use crate::ops::check_len;
use crate::{Error, Result};

/// Planes of the per-channel statistics buffer: `stats[plane * C + c]`. Mirrors the `STAT_*`
/// constants of `shaders/batchnorm.wgsl` (a test checks that they agree).
pub mod stat {
    /// Batch mean.
    pub const MEAN: usize = 0;
    /// Biased batch variance.
    pub const VAR: usize = 1;
    /// 1/sqrt(var + eps).
    pub const INVSTD: usize = 2;
    /// One sample of the channel; the reductions run on x − shift.
    pub const SHIFT: usize = 3;
    /// mean − shift, kept apart from the shift so x − mean never rounds the mean to f32.
    pub const SHIFTED_MEAN: usize = 4;
    /// Number of planes.
    pub const PLANES: usize = 5;
}

/// Floats per (split, channel) slot of the GPU partials buffer (`PARTIAL_STRIDE` in WGSL).
pub const PARTIAL_STRIDE: usize = 4;

/// Training normalizes with the batch statistics and updates the running ones; evaluation
/// normalizes with the running statistics and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Normalize with batch statistics; update the running ones.
    Train,
    /// Normalize with the running statistics; change nothing.
    Eval,
}

/// The learned scale and shift, one value per channel.
pub struct Affine<B: Backend> {
    /// Scale γ, one per channel.
    pub gamma: B::Buffer,
    /// Shift β, one per channel.
    pub beta: B::Buffer,
}

/// Running mean and (unbiased) variance, one value per channel, updated in training.
pub struct RunningStats<B: Backend> {
    /// Running mean, one per channel.
    pub mean: B::Buffer,
    /// Running variance, one per channel.
    pub var: B::Buffer,
}

/// What the forward pass writes: y, and the per-channel statistics it normalized with
/// (`stat` planes). In training mode those statistics are the state saved for backward.
pub struct BatchNormForward<B: Backend> {
    /// The normalized output, x's shape.
    pub y: B::Buffer,
    /// The `stat` planes, 5·C values.
    pub stats: B::Buffer,
}

/// What the backward pass writes.
pub struct BatchNormGrads<B: Backend> {
    /// dL/dx, x's shape.
    pub dx: B::Buffer,
    /// dL/dγ, one per channel.
    pub dgamma: B::Buffer,
    /// dL/dβ, one per channel.
    pub dbeta: B::Buffer,
}

/// BatchNorm on a backend. Outputs are written into caller-owned buffers so that they can be
/// reused step after step (and poisoned in tests to catch unwritten elements).
pub trait BatchNormOps: Backend + Sized {
    /// Normalizes x. `Mode::Train` computes batch statistics into `out.stats` and updates
    /// `running`; `Mode::Eval` normalizes with `running` and leaves it unchanged.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(
        &self,
        mode: Mode,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_forward(mode, shape, forward_lens(self, x, affine, running, out))?;
        self.batchnorm_forward_unchecked(mode, x, shape, affine, running, config, None, out)
    }

    /// `batchnorm_forward` followed by `activation`, a ReLU (then dropout, if it has a mask),
    /// in the same pass: `out.y` is the activated output. Its backward is
    /// `batchnorm_activation_backward`, which needs that output.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_activation_forward(
        &self,
        mode: Mode,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        activation: Activation,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_activation(activation)?;
        check_forward(mode, shape, forward_lens(self, x, affine, running, out))?;
        let activation = Some(activation);
        self.batchnorm_forward_unchecked(mode, x, shape, affine, running, config, activation, out)
    }

    /// Gradients of a training-mode forward, from the `stats` that forward saved.
    fn batchnorm_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        check_backward(shape, backward_lens(self, [x, dy, gamma, stats], grads))?;
        self.batchnorm_backward_unchecked(x, None, dy, shape, gamma, stats, grads)
    }

    /// Gradients of a `batchnorm_activation_forward` in training mode: `activated` is its
    /// output and `dy` the gradient of that output.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_activation_backward(
        &self,
        x: &Self::Buffer,
        activated: &Self::Buffer,
        activation: Activation,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        let activated = Some((activated, activation));
        check_activated(self, activated, shape)?;
        check_backward(shape, backward_lens(self, [x, dy, gamma, stats], grads))?;
        self.batchnorm_backward_unchecked(x, activated, dy, shape, gamma, stats, grads)
    }

    /// Forward into freshly allocated outputs.
    fn batchnorm_forward_new(
        &self,
        mode: Mode,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
    ) -> Result<BatchNormForward<Self>> {
        let mut out = BatchNormForward {
            y: self.filled(shape.numel(), 0.0)?,
            stats: self.filled(shape.stats_len(), 0.0)?,
        };
        self.batchnorm_forward(mode, x, shape, affine, running, config, &mut out)?;
        Ok(out)
    }

    /// Backward into freshly allocated outputs.
    fn batchnorm_backward_new(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
    ) -> Result<BatchNormGrads<Self>> {
        let mut grads = BatchNormGrads {
            dx: self.filled(shape.numel(), 0.0)?,
            dgamma: self.filled(shape.c, 0.0)?,
            dbeta: self.filled(shape.c, 0.0)?,
        };
        self.batchnorm_backward(x, dy, shape, gamma, stats, &mut grads)?;
        Ok(grads)
    }

    /// The statistics of x into `out.stats` as a training forward computes them, for x that is
    /// one part of a larger batch (synchronized BatchNorm): one value per channel is enough,
    /// the running statistics are left as they are, and `out.y` is left unspecified.
    fn batchnorm_partial_statistics(
        &self,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_whole_batch(shape)?;
        check_forward_lens(shape, forward_lens(self, x, affine, running, out))?;
        self.batchnorm_partial_statistics_unchecked(x, shape, affine, running, config, out)
    }

    /// dβ and dγ of x, one part of a larger batch (synchronized BatchNorm), into `grads`, as a
    /// training backward computes them from `stats` (the larger batch's, `batchnorm_apply`);
    /// `grads.dx` is left unspecified: it needs the sums over every part
    /// (`batchnorm_backward_input`). `activated` is the fused activation's output, as in
    /// `batchnorm_activation_backward`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_parameter_grads(
        &self,
        x: &Self::Buffer,
        activated: Option<(&Self::Buffer, Activation)>,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        check_whole_batch(shape)?;
        check_backward(shape, backward_lens(self, [x, dy, gamma, stats], grads))?;
        check_activated(self, activated, shape)?;
        self.batchnorm_parameter_grads_unchecked(x, activated, dy, shape, gamma, stats, grads)
    }

    /// Normalizes x with finished training statistics (`stats`, in `stat` planes: a larger
    /// batch's, merged by synchronized BatchNorm), then applies `activation` where given: the
    /// second half of a training forward. Its backward is `batchnorm_backward_input`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_apply(
        &self,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        stats: &Self::Buffer,
        activation: Option<Activation>,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        check_whole_batch(shape)?;
        if let Some(activation) = activation {
            check_activation(activation)?;
        }
        check_len("x", self.len_of(x), shape.numel())?;
        check_len("gamma", self.len_of(&affine.gamma), shape.c)?;
        check_len("beta", self.len_of(&affine.beta), shape.c)?;
        check_len("stats", self.len_of(stats), shape.stats_len())?;
        check_len("y", self.len_of(y), shape.numel())?;
        self.batchnorm_apply_unchecked(x, shape, affine, stats, activation, y)
    }

    /// dx of a training forward that normalized x with `stats`, the statistics of a batch of
    /// `count` values per channel of which x is one part (synchronized BatchNorm), from that
    /// batch's dβ and dγ (`sums`, one value per channel each); `activated` is the fused
    /// activation's output, as in `batchnorm_activation_backward`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward_input(
        &self,
        x: &Self::Buffer,
        activated: Option<(&Self::Buffer, Activation)>,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        (gamma, stats): (&Self::Buffer, &Self::Buffer),
        sums: BatchSums<'_>,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_whole_batch(shape)?;
        if sums.count < shape.per_channel() as u64 {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} values per channel cannot hold this part of {}",
                sums.count,
                shape.per_channel()
            )));
        }
        check_activated(self, activated, shape)?;
        for (name, len, expected) in [
            ("x", self.len_of(x), shape.numel()),
            ("dy", self.len_of(dy), shape.numel()),
            ("gamma", self.len_of(gamma), shape.c),
            ("stats", self.len_of(stats), shape.stats_len()),
            ("dbeta", sums.dbeta.len(), shape.c),
            ("dgamma", sums.dgamma.len(), shape.c),
            ("dx", self.len_of(dx), shape.numel()),
        ] {
            check_len(name, len, expected)?;
        }
        self.batchnorm_backward_input_unchecked(x, activated, dy, shape, (gamma, stats), sums, dx)
    }

    /// `batchnorm_forward` (with the activation, where given) on checked arguments.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_unchecked(
        &self,
        mode: Mode,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        activation: Option<Activation>,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()>;

    /// `batchnorm_backward` (behind the activation whose output is given, if any) on checked
    /// arguments.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward_unchecked(
        &self,
        x: &Self::Buffer,
        activated: Option<(&Self::Buffer, Activation)>,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()>;

    /// `batchnorm_partial_statistics` on checked arguments: by default a whole training forward
    /// that leaves the running statistics as they are; a backend may skip normalizing.
    #[doc(hidden)]
    fn batchnorm_partial_statistics_unchecked(
        &self,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        // Momentum 0 leaves the running statistics as they are; a biased factor never divides
        // by m − 1 = 0.
        let frozen = BatchNormConfig::new(config.eps(), 0.0, false)?;
        self.batchnorm_forward_unchecked(Mode::Train, x, shape, affine, running, frozen, None, out)
    }

    /// `batchnorm_parameter_grads` on checked arguments: by default a whole backward; a backend
    /// may skip dx.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_parameter_grads_unchecked(
        &self,
        x: &Self::Buffer,
        activated: Option<(&Self::Buffer, Activation)>,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        self.batchnorm_backward_unchecked(x, activated, dy, shape, gamma, stats, grads)
    }

    /// `batchnorm_apply` on checked arguments.
    #[doc(hidden)]
    fn batchnorm_apply_unchecked(
        &self,
        x: &Self::Buffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        stats: &Self::Buffer,
        activation: Option<Activation>,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// `batchnorm_backward_input` on checked arguments.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward_input_unchecked(
        &self,
        x: &Self::Buffer,
        activated: Option<(&Self::Buffer, Activation)>,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma_stats: (&Self::Buffer, &Self::Buffer),
        sums: BatchSums<'_>,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
}

/// A batch's per-channel sums for the backward pass: dβ = Σdy and dγ = Σdy·x̂ over `count`
/// values per channel.
#[derive(Clone, Copy, Debug)]
pub struct BatchSums<'a> {
    /// dβ, one per channel.
    pub dbeta: &'a [f32],
    /// dγ, one per channel.
    pub dgamma: &'a [f32],
    /// Values per channel of the batch they sum over.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_channel_in_training_is_refused() -> Result<()> {
        let shape = BatchNormShape::new(1, 5, 1);
        let err = check_mode(Mode::Train, shape).unwrap_err();
        assert!(
            err.to_string().contains("more than 1 value per channel"),
            "{err}"
        );
        check_mode(Mode::Eval, shape)
    }
}
