//! GroupNorm over channels-last x of shape (N, P, C): N samples of P positions (1 for flat
//! features) of C channels. Per sample and group of C/G neighbouring channels, over its
//! m = P·C/G values:
//!
//! ```text
//! mean = Σx/m, var = Σ(x − mean)²/m (biased), invstd = 1/sqrt(var + eps)
//! y = γ[c]·x̂ + β[c], x̂ = (x − mean)·invstd          (the same in training and evaluation)
//! backward: dβ[c] = Σ_rows dy, dγ[c] = Σ_rows dy·x̂,
//!           dx = invstd/m·(m·g − Σg − x̂·Σg·x̂) per (sample, group), g = dy·γ[c]
//! ```
//!
//! LayerNorm is one group (statistics over all of a sample's values, PyTorch's
//! `nn.LayerNorm([C])` for flat features and `nn.GroupNorm(1, C)` for images), InstanceNorm one
//! channel per group (`nn.InstanceNorm2d(C, affine=True)`). There are no running statistics.
//!
//! The statistics, x̂ and dx come from BatchNorm's grouped-moments reduction: x viewed as
//! (N·P, G, C/G) with one ghost batch per sample is BatchNorm with a statistic per (sample,
//! group), and `shaders/batchnorm.wgsl`'s kernels, shift and all, run on that view specialized
//! for it (`GROUP_NORM`: x̂ with no scale of its own, nothing summed over samples), on a grid of
//! GroupNorm's own (`gpu.rs`: runs of samples per workgroup, so any number of samples fits the
//! adapter's grid); the CPU twin runs BatchNorm's per-ghost-batch functions on the same view.
//! The affine is per channel here where the view's would be per group: `channel_affine` applies
//! it (and scales dy by γ for the backward pass), `channel_affine_grads` sums dγ and dβ over the
//! rows (`shaders/channel_affine.wgsl`, its CPU twin in `cpu.rs`). `src/reference/groupnorm.rs`
//! is the float64 oracle.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::AffineParams;

use crate::backend::Backend;
use crate::ops::batchnorm::{Affine, BatchNormForward, BatchNormGrads, BatchNormShape, stat};
use crate::ops::{check_len, check_u32_indexable};
use crate::{Dtype, Error, Result};

/// The eps of PyTorch's `nn.LayerNorm`, `nn.GroupNorm` and `nn.InstanceNorm2d`, which the
/// models' normalization layers use.
pub const GROUPNORM_EPS: f32 = 1e-5;

/// x as N samples of P positions of C channels, channels last, normalized per sample and group
/// of C/G neighbouring channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormShape {
    /// Samples, N.
    pub samples: usize,
    /// Positions per sample, P (1 for flat features, H·W for images).
    pub positions: usize,
    /// Channels per position, C.
    pub channels: usize,
    /// Groups of C/G neighbouring channels, G; it divides C.
    pub groups: usize,
}

impl GroupNormShape {
    /// GroupNorm with `groups` groups.
    pub const fn new(samples: usize, positions: usize, channels: usize, groups: usize) -> Self {
        Self {
            samples,
            positions,
            channels,
            groups,
        }
    }

    /// LayerNorm: one group, statistics over all of a sample's values.
    pub const fn layer_norm(samples: usize, positions: usize, channels: usize) -> Self {
        Self::new(samples, positions, channels, 1)
    }

    /// InstanceNorm: one channel per group, statistics over a channel's positions.
    pub const fn instance_norm(samples: usize, positions: usize, channels: usize) -> Self {
        Self::new(samples, positions, channels, channels)
    }

    /// Number of elements of x.
    pub fn numel(&self) -> usize {
        self.samples * self.positions * self.channels
    }

    /// Values each statistic is taken over, m = P·C/G.
    pub fn per_group(&self) -> usize {
        self.positions * self.channels / self.groups
    }

    /// Floats in the statistics buffer: BatchNorm's `stat` planes of each sample's groups, one
    /// sample after another.
    pub fn stats_len(&self) -> usize {
        stat::PLANES * self.groups * self.samples
    }

    /// The BatchNorm view that computes these statistics: (N·P, G, C/G), a ghost batch per
    /// sample.
    pub fn batchnorm_view(&self) -> BatchNormShape {
        BatchNormShape::new(
            self.samples * self.positions,
            self.groups,
            self.channels / self.groups,
        )
        .with_ghost_batches(self.samples)
    }
}

/// GroupNorm (LayerNorm, InstanceNorm) on a backend: the normalization of
/// `GroupNormShape::batchnorm_view` (BatchNorm's reduction, without a scale of its own), with the
/// per-channel affine of this trait's two affine kernels.
pub trait GroupNormOps: Backend + Sized {
    /// Normalizes x into `out.y`, writing the statistics it used into `out.stats`
    /// (`stats_len` values), which the backward pass needs.
    fn groupnorm_forward(
        &self,
        x: &Self::Buffer,
        shape: GroupNormShape,
        affine: &Affine<Self>,
        eps: f32,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_shape(shape)?;
        check_eps(eps)?;
        for (what, buffer, len) in [
            ("x", x, shape.numel()),
            ("gamma", &affine.gamma, shape.channels),
            ("beta", &affine.beta, shape.channels),
            ("y", &out.y, shape.numel()),
            ("stats", &out.stats, shape.stats_len()),
        ] {
            check_len(&format!("GroupNorm {what}"), self.len_of(buffer), len)?;
        }
        let mut xhat = self.scratch_as(shape.numel(), self.dtype_of(&out.y))?;
        self.groupnorm_normalize_unchecked(x, shape, eps, &mut xhat, &mut out.stats)?;
        self.channel_affine_unchecked(
            &xhat,
            shape.channels,
            &affine.gamma,
            Some(&affine.beta),
            &mut out.y,
        )
    }

    /// Gradients of a `groupnorm_forward` that saved `stats`.
    fn groupnorm_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        shape: GroupNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        check_shape(shape)?;
        for (what, buffer, len) in [
            ("x", x, shape.numel()),
            ("dy", dy, shape.numel()),
            ("gamma", gamma, shape.channels),
            ("stats", stats, shape.stats_len()),
            ("dx", &grads.dx, shape.numel()),
            ("dgamma", &grads.dgamma, shape.channels),
            ("dbeta", &grads.dbeta, shape.channels),
        ] {
            check_len(&format!("GroupNorm {what}"), self.len_of(buffer), len)?;
        }
        self.channel_affine_grads_unchecked(
            x,
            dy,
            shape,
            stats,
            [&mut grads.dgamma, &mut grads.dbeta],
        )?;
        // Through the affine, the normalization's backward sees dy·γ.
        let mut scaled_dy = self.scratch_as(shape.numel(), Dtype::F32)?;
        self.channel_affine_unchecked(dy, shape.channels, gamma, None, &mut scaled_dy)?;
        self.groupnorm_normalize_backward_unchecked(x, &scaled_dy, shape, stats, &mut grads.dx)
    }

    /// x̂ = (x − mean)·invstd per (sample, group) into `xhat`, and the statistics into `stats`,
    /// on checked arguments.
    #[doc(hidden)]
    fn groupnorm_normalize_unchecked(
        &self,
        x: &Self::Buffer,
        shape: GroupNormShape,
        eps: f32,
        xhat: &mut Self::Buffer,
        stats: &mut Self::Buffer,
    ) -> Result<()>;

    /// dx of the normalization given dL/dx̂ (dy·γ) and the forward's `stats`, on checked
    /// arguments.
    #[doc(hidden)]
    fn groupnorm_normalize_backward_unchecked(
        &self,
        x: &Self::Buffer,
        dxhat: &Self::Buffer,
        shape: GroupNormShape,
        stats: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `out = γ[c]·x + β[c]` over channels-last x of `channels` channels (β left out where
    /// `None`), on checked arguments.
    #[doc(hidden)]
    fn channel_affine_unchecked(
        &self,
        x: &Self::Buffer,
        channels: usize,
        gamma: &Self::Buffer,
        beta: Option<&Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// dγ[c] = Σ dy·x̂ and dβ[c] = Σ dy over the rows, x̂ from the saved `stats`, on checked
    /// arguments.
    #[doc(hidden)]
    fn channel_affine_grads_unchecked(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        shape: GroupNormShape,
        stats: &Self::Buffer,
        dgamma_dbeta: [&mut Self::Buffer; 2],
    ) -> Result<()>;
}

/// eps is added to each variance before the square root: positive and finite.
fn check_eps(eps: f32) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "GroupNorm eps must be a positive finite number, got {eps}"
    )))
}

/// Refuses an empty x, groups that do not divide the channels, and a group of a single value
/// (its variance would be 0 and x̂ all 0, which PyTorch refuses too).
pub fn check_shape(shape: GroupNormShape) -> Result<()> {
    let GroupNormShape {
        samples,
        positions,
        channels,
        groups,
    } = shape;
    if shape.numel() == 0 {
        return Err(Error::Shape(format!(
            "GroupNorm needs a non-empty x, got (N={samples}, P={positions}, C={channels})"
        )));
    }
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::Shape(format!(
            "GroupNorm cannot split {channels} channels into {groups} groups of equal size"
        )));
    }
    if shape.per_group() < 2 {
        return Err(Error::InvalidArgument(format!(
            "GroupNorm needs more than 1 value per group, got {positions} position(s) of \
             {} channel(s) per group",
            channels / groups
        )));
    }
    check_u32_indexable("GroupNorm input", shape.numel())
}

/// How `channel_affine_grads` cuts the rows: (rows per split, splits), about `THREADS` threads
/// in all and no split shorter than `MIN_SPLIT_ROWS` rows where there are more. Both backends
/// sum in this order.
pub(crate) fn affine_splits(rows: usize, channels: usize) -> (usize, usize) {
    const THREADS: usize = 4096;
    const MIN_SPLIT_ROWS: usize = 64;
    let splits = rows
        .div_ceil(MIN_SPLIT_ROWS)
        .min((THREADS / channels).max(1))
        .max(1);
    let split_rows = rows.div_ceil(splits);
    (split_rows, rows.div_ceil(split_rows))
}
