//! BatchNorm: forward (train and eval) and backward, for both backends side by side.
//!
//! The math is written once, in `shaders/batchnorm.wgsl`; the CPU twin in `src/cpu/batchnorm.rs`
//! follows the same steps in the same order, and `src/reference.rs` is the float64 oracle.

use crate::backend::Backend;
use crate::cpu::{self, CpuBackend};
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};
use crate::{Dtype, Error, Result};

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

/// x viewed as (N, C, S): N samples, C channels, S = product of the spatial dims (1 for (N, C)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    /// Samples.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Values per channel per sample (the product of the spatial dims).
    pub s: usize,
}

impl BatchNormShape {
    /// The BatchNorm view of a tensor shape: dim 0 is the batch, dim 1 the channels, the rest
    /// spatial. At least two dims, as in PyTorch.
    pub fn from_dims(dims: &[usize]) -> Result<Self> {
        if dims.len() < 2 {
            return Err(Error::Shape(format!(
                "BatchNorm needs x of shape (N, C) or (N, C, ...), got {dims:?}"
            )));
        }
        let shape = Self {
            n: dims[0],
            c: dims[1],
            s: dims[2..].iter().product(),
        };
        if shape.numel() == 0 {
            return Err(Error::Shape(format!(
                "BatchNorm needs a non-empty x, got {dims:?}"
            )));
        }
        Ok(shape)
    }

    /// Number of elements of x.
    pub fn numel(&self) -> usize {
        self.n * self.c * self.s
    }

    /// Values per channel, m = N·S.
    pub fn per_channel(&self) -> usize {
        self.n * self.s
    }

    /// Floats in the statistics buffer.
    pub fn stats_len(&self) -> usize {
        stat::PLANES * self.c
    }
}

/// PyTorch's defaults: eps 1e-5, momentum 0.1 weighting the new batch value.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the new batch value in the running statistics.
    pub momentum: f32,
    /// PyTorch updates the running variance with the unbiased batch variance (·m/(m − 1));
    /// Keras with the biased one.
    pub unbiased_running_var: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            unbiased_running_var: true,
        }
    }
}

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
    ) -> Result<()>;

    /// Gradients of a training-mode forward, from the `stats` that forward saved.
    fn batchnorm_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        shape: BatchNormShape,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()>;

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
}

fn check_not_empty(shape: BatchNormShape) -> Result<()> {
    if shape.numel() == 0 {
        return Err(Error::Shape(format!(
            "BatchNorm needs a non-empty x, got (N={}, C={}, S={})",
            shape.n, shape.c, shape.s
        )));
    }
    Ok(())
}

/// Refuses what PyTorch refuses: training statistics from a single value per channel (the
/// unbiased running variance would divide by m − 1 = 0), and non-finite or negative settings.
pub fn check_config(mode: Mode, shape: BatchNormShape, config: BatchNormConfig) -> Result<()> {
    check_not_empty(shape)?;
    if mode == Mode::Train && shape.per_channel() < 2 {
        return Err(Error::InvalidArgument(format!(
            "BatchNorm in training mode needs more than 1 value per channel, got input of shape \
             (N={}, C={}, S={}); use a batch of at least 2 or eval mode",
            shape.n, shape.c, shape.s
        )));
    }
    if !(config.eps.is_finite() && config.eps > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "eps must be a positive finite number, got {}",
            config.eps
        )));
    }
    if !(0.0..=1.0).contains(&config.momentum) {
        return Err(Error::InvalidArgument(format!(
            "momentum must lie in [0, 1], got {}",
            config.momentum
        )));
    }
    Ok(())
}

/// Rows of x bound to one dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChunk {
    /// First row of x in the chunk.
    pub first_row: usize,
    /// Rows in the chunk.
    pub rows: usize,
}

/// Splits x along N so that each chunk's binding stays within `max_binding` bytes and starts at
/// a multiple of `offset_alignment` bytes. Refuses, naming the limit, when not even one aligned
/// group of samples fits.
pub fn plan_row_chunks(
    shape: BatchNormShape,
    dtype: Dtype,
    max_binding: u64,
    offset_alignment: u64,
) -> Result<Vec<RowChunk>> {
    let row_bytes = (shape.c * shape.s * dtype.size()) as u64;
    let total = row_bytes * shape.n as u64;
    if total <= max_binding {
        return Ok(vec![RowChunk {
            first_row: 0,
            rows: shape.n,
        }]);
    }
    let row_step = offset_alignment / gcd(offset_alignment, row_bytes);
    let rows_per_chunk = (max_binding / row_bytes) / row_step * row_step;
    if rows_per_chunk == 0 {
        return Err(Error::Limit(format!(
            "BatchNorm input of shape (N={}, C={}, S={}) cannot be split to fit the adapter's \
             max_storage_buffer_binding_size of {max_binding} bytes: {row_step} sample(s) of \
             {row_bytes} bytes are the smallest aligned piece",
            shape.n, shape.c, shape.s
        )));
    }
    let rows_per_chunk = rows_per_chunk as usize;
    Ok((0..shape.n)
        .step_by(rows_per_chunk)
        .map(|first_row| RowChunk {
            first_row,
            rows: rows_per_chunk.min(shape.n - first_row),
        })
        .collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::Shape(format!(
            "{what} has {len} elements, expected {expected}"
        )));
    }
    Ok(())
}

fn check_forward_lens(lens: [usize; 7], shape: BatchNormShape) -> Result<()> {
    let [x, gamma, beta, mean, var, y, stats] = lens;
    check_len("x", x, shape.numel())?;
    check_len("gamma", gamma, shape.c)?;
    check_len("beta", beta, shape.c)?;
    check_len("running mean", mean, shape.c)?;
    check_len("running var", var, shape.c)?;
    check_len("y", y, shape.numel())?;
    check_len("stats", stats, shape.stats_len())
}

fn check_backward_lens(lens: [usize; 7], shape: BatchNormShape) -> Result<()> {
    let [x, dy, gamma, stats, dx, dgamma, dbeta] = lens;
    check_not_empty(shape)?;
    check_len("x", x, shape.numel())?;
    check_len("dy", dy, shape.numel())?;
    check_len("gamma", gamma, shape.c)?;
    check_len("stats", stats, shape.stats_len())?;
    check_len("dx", dx, shape.numel())?;
    check_len("dgamma", dgamma, shape.c)?;
    check_len("dbeta", dbeta, shape.c)
}

impl BatchNormOps for CpuBackend {
    fn batchnorm_forward(
        &self,
        mode: Mode,
        x: &Vec<f32>,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_config(mode, shape, config)?;
        check_forward_lens(
            [
                x.len(),
                affine.gamma.len(),
                affine.beta.len(),
                running.mean.len(),
                running.var.len(),
                out.y.len(),
                out.stats.len(),
            ],
            shape,
        )?;
        match mode {
            Mode::Train => {
                cpu::batchnorm::batch_stats(x, shape, config, &mut out.stats);
                cpu::batchnorm::update_running(
                    &out.stats,
                    shape,
                    config,
                    &mut running.mean,
                    &mut running.var,
                );
            }
            Mode::Eval => {
                cpu::batchnorm::eval_stats(&running.mean, &running.var, config, &mut out.stats)
            }
        }
        cpu::batchnorm::normalize(
            x,
            shape,
            &out.stats,
            &affine.gamma,
            &affine.beta,
            &mut out.y,
        );
        Ok(())
    }

    fn batchnorm_backward(
        &self,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        shape: BatchNormShape,
        gamma: &Vec<f32>,
        stats: &Vec<f32>,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        check_backward_lens(
            [
                x.len(),
                dy.len(),
                gamma.len(),
                stats.len(),
                grads.dx.len(),
                grads.dgamma.len(),
                grads.dbeta.len(),
            ],
            shape,
        )?;
        cpu::batchnorm::backward(x, dy, shape, gamma, stats, grads);
        Ok(())
    }
}

/// How a reduction is laid out on the GPU, per chunk of rows.
struct ReductionPlan {
    chunks: Vec<(RowChunk, ChunkSplits)>,
    total_splits: u32,
    lanes_c: u32,
    channel_groups: u32,
}

struct ChunkSplits {
    split_len: u32,
    splits: u32,
    split_base: u32,
}

/// Uniform parameters of `shaders/batchnorm.wgsl` (`struct Params` there; a test compares
/// the layouts).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BatchNormParams {
    pub rows: u32,
    pub channels: u32,
    pub spatial: u32,
    pub lanes_c: u32,
    pub split_len: u32,
    pub split_base: u32,
    pub total_splits: u32,
    pub running_var_factor: f32,
    pub count: f32,
    pub eps: f32,
    pub momentum: f32,
    pub _pad1: u32,
}

const _: () = assert!(std::mem::size_of::<BatchNormParams>() == 48);

impl GpuBackend {
    fn reduction_plan(&self, shape: BatchNormShape, dtype: Dtype) -> Result<ReductionPlan> {
        let tuning = self.tuning();
        let limits = self.limits();
        let chunks = plan_row_chunks(
            shape,
            dtype,
            limits.max_storage_buffer_binding_size,
            limits.min_storage_buffer_offset_alignment as u64,
        )?;
        // (N, C): neighbouring threads take neighbouring channels so loads coalesce;
        // (N, C, S): a whole workgroup walks the contiguous spatial run of one channel.
        let lanes_c = if shape.s == 1 {
            (shape.c.next_power_of_two() as u32).min(tuning.lanes_c_2d)
        } else {
            1
        };
        let row_lanes = crate::gpu::WORKGROUP / lanes_c;
        let channel_groups = shape.c.div_ceil(lanes_c as usize) as u32;
        let wanted_splits = tuning.target_workgroups.div_ceil(channel_groups).max(1);
        let mut split_base = 0;
        let mut planned = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let chunk_len = (chunk.rows * shape.s) as u32;
            let useful_splits = chunk_len.div_ceil(row_lanes * tuning.min_elements_per_thread);
            let split_len = chunk_len.div_ceil(wanted_splits.min(useful_splits).max(1));
            let splits = chunk_len.div_ceil(split_len);
            planned.push((
                chunk,
                ChunkSplits {
                    split_len,
                    splits,
                    split_base,
                },
            ));
            split_base += splits;
        }
        Ok(ReductionPlan {
            chunks: planned,
            total_splits: split_base,
            lanes_c,
            channel_groups,
        })
    }
}

/// What the batch variance is multiplied by before it enters the running variance:
/// m/(m − 1) for the unbiased estimate, 1 for the biased one.
pub fn running_var_factor(shape: BatchNormShape, config: BatchNormConfig) -> f32 {
    let m = shape.per_channel() as f32;
    if config.unbiased_running_var {
        m / (m - 1.0)
    } else {
        1.0
    }
}

fn base_params(shape: BatchNormShape, config: BatchNormConfig) -> BatchNormParams {
    BatchNormParams {
        rows: shape.n as u32,
        channels: shape.c as u32,
        spatial: shape.s as u32,
        lanes_c: 1,
        split_len: 0,
        split_base: 0,
        total_splits: 1,
        count: shape.per_channel() as f32,
        eps: config.eps,
        momentum: config.momentum,
        running_var_factor: running_var_factor(shape, config),
        ..Default::default()
    }
}

impl BatchNormOps for GpuBackend {
    fn batchnorm_forward(
        &self,
        mode: Mode,
        x: &GpuBuffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        check_config(mode, shape, config)?;
        crate::gpu::check_u32_indexable("BatchNorm input", shape.numel())?;
        check_forward_lens(
            [
                x.len(),
                affine.gamma.len(),
                affine.beta.len(),
                running.mean.len(),
                running.var.len(),
                out.y.len(),
                out.stats.len(),
            ],
            shape,
        )?;
        let plan = self.reduction_plan(shape, x.dtype())?;
        let params = BatchNormParams {
            lanes_c: plan.lanes_c,
            total_splits: plan.total_splits,
            ..base_params(shape, config)
        };
        let row_floats = shape.c * shape.s;
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let per_channel = [
            Binding::whole(Slot::Stats, &out.stats),
            Binding::whole(Slot::RunningMean, &running.mean),
            Binding::whole(Slot::RunningVar, &running.var),
        ];
        self.record(|encoder| {
            match mode {
                Mode::Train => {
                    for (chunk, splits) in &plan.chunks {
                        let mut bindings = vec![
                            Binding::rows(
                                Slot::X,
                                x,
                                chunk.first_row * row_floats,
                                chunk.rows * row_floats,
                            ),
                            Binding::whole(Slot::Partials, &partials),
                        ];
                        bindings.extend_from_slice(&per_channel);
                        self.dispatch(
                            encoder,
                            Kernel::BatchNormStatsPartial,
                            &BatchNormParams {
                                rows: chunk.rows as u32,
                                split_len: splits.split_len,
                                split_base: splits.split_base,
                                ..params
                            },
                            &bindings,
                            [plan.channel_groups, splits.splits, 1],
                        )?;
                    }
                    if plan.total_splits > 1 {
                        let mut bindings = vec![Binding::whole(Slot::Partials, &partials)];
                        bindings.extend_from_slice(&per_channel);
                        self.dispatch(
                            encoder,
                            Kernel::BatchNormStatsFinalize,
                            &params,
                            &bindings,
                            [shape.c.div_ceil(64) as u32, 1, 1],
                        )?;
                    }
                }
                Mode::Eval => self.dispatch(
                    encoder,
                    Kernel::BatchNormEvalStats,
                    &params,
                    &per_channel,
                    [shape.c.div_ceil(64) as u32, 1, 1],
                )?,
            }
            for (chunk, _) in &plan.chunks {
                let rows =
                    chunk.first_row * row_floats..(chunk.first_row + chunk.rows) * row_floats;
                self.dispatch_elementwise(
                    encoder,
                    Kernel::BatchNormNormalize,
                    &BatchNormParams {
                        rows: chunk.rows as u32,
                        ..params
                    },
                    &[
                        Binding::rows(Slot::X, x, rows.start, rows.len()),
                        Binding::rows(Slot::Out, &out.y, rows.start, rows.len()),
                        Binding::whole(Slot::Stats, &out.stats),
                        Binding::whole(Slot::Gamma, &affine.gamma),
                        Binding::whole(Slot::Beta, &affine.beta),
                    ],
                    rows.len(),
                )?;
            }
            Ok(())
        })
    }

    fn batchnorm_backward(
        &self,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        shape: BatchNormShape,
        gamma: &GpuBuffer,
        stats: &GpuBuffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        crate::gpu::check_u32_indexable("BatchNorm input", shape.numel())?;
        check_backward_lens(
            [
                x.len(),
                dy.len(),
                gamma.len(),
                stats.len(),
                grads.dx.len(),
                grads.dgamma.len(),
                grads.dbeta.len(),
            ],
            shape,
        )?;
        let plan = self.reduction_plan(shape, x.dtype())?;
        let params = BatchNormParams {
            lanes_c: plan.lanes_c,
            total_splits: plan.total_splits,
            ..base_params(shape, BatchNormConfig::default())
        };
        let row_floats = shape.c * shape.s;
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let per_channel = [
            Binding::whole(Slot::Stats, stats),
            Binding::whole(Slot::Dgamma, &grads.dgamma),
            Binding::whole(Slot::Dbeta, &grads.dbeta),
        ];
        self.record(|encoder| {
            for (chunk, splits) in &plan.chunks {
                let rows =
                    chunk.first_row * row_floats..(chunk.first_row + chunk.rows) * row_floats;
                let mut bindings = vec![
                    Binding::rows(Slot::X, x, rows.start, rows.len()),
                    Binding::rows(Slot::Dy, dy, rows.start, rows.len()),
                    Binding::whole(Slot::Partials, &partials),
                ];
                bindings.extend_from_slice(&per_channel);
                self.dispatch(
                    encoder,
                    Kernel::BatchNormBackwardPartial,
                    &BatchNormParams {
                        rows: chunk.rows as u32,
                        split_len: splits.split_len,
                        split_base: splits.split_base,
                        ..params
                    },
                    &bindings,
                    [plan.channel_groups, splits.splits, 1],
                )?;
            }
            if plan.total_splits > 1 {
                let mut bindings = vec![Binding::whole(Slot::Partials, &partials)];
                bindings.extend_from_slice(&per_channel);
                self.dispatch(
                    encoder,
                    Kernel::BatchNormBackwardFinalize,
                    &params,
                    &bindings,
                    [shape.c.div_ceil(64) as u32, 1, 1],
                )?;
            }
            for (chunk, _) in &plan.chunks {
                let rows =
                    chunk.first_row * row_floats..(chunk.first_row + chunk.rows) * row_floats;
                let mut bindings = vec![
                    Binding::rows(Slot::X, x, rows.start, rows.len()),
                    Binding::rows(Slot::Dy, dy, rows.start, rows.len()),
                    Binding::rows(Slot::Out, &grads.dx, rows.start, rows.len()),
                    Binding::whole(Slot::Gamma, gamma),
                ];
                bindings.extend_from_slice(&per_channel);
                self.dispatch_elementwise(
                    encoder,
                    Kernel::BatchNormBackwardDx,
                    &BatchNormParams {
                        rows: chunk.rows as u32,
                        ..params
                    },
                    &bindings,
                    rows.len(),
                )?;
            }
            Ok(())
        })
    }
}

/// A host's buffers for [`GpuBackend::record_batchnorm_forward`]. Each needs
/// `BufferUsages::STORAGE` and at least the bytes given: `x` and `y` 4·N·C·S; `gamma`, `beta`,
/// `running_mean` and `running_var` 4·C; `stats` 4·5·C (the `stat` planes, which a backward
/// needs from a training forward).
pub struct HostBatchNormForward<'a> {
    /// How x and y store their values (f16 needs `GpuBackend::has_f16`; their byte sizes
    /// halve, rounded up to 4).
    pub activations: Dtype,
    /// The input.
    pub x: &'a wgpu::Buffer,
    /// Scale γ (f32).
    pub gamma: &'a wgpu::Buffer,
    /// Shift β (f32).
    pub beta: &'a wgpu::Buffer,
    /// Running mean (f32), updated in training.
    pub running_mean: &'a wgpu::Buffer,
    /// Running variance (f32), updated in training.
    pub running_var: &'a wgpu::Buffer,
    /// The output.
    pub y: &'a wgpu::Buffer,
    /// The statistics written (f32).
    pub stats: &'a wgpu::Buffer,
}

/// A host's buffers for [`GpuBackend::record_batchnorm_backward`]: `x`, `dy` and `dx` 4·N·C·S
/// bytes; `gamma`, `dgamma` and `dbeta` 4·C; `stats` 4·5·C, as a training forward wrote them.
/// Each needs `BufferUsages::STORAGE`.
pub struct HostBatchNormBackward<'a> {
    /// How x, dy and dx store their values.
    pub activations: Dtype,
    /// The forward's input.
    pub x: &'a wgpu::Buffer,
    /// dL/dy.
    pub dy: &'a wgpu::Buffer,
    /// Scale γ (f32).
    pub gamma: &'a wgpu::Buffer,
    /// The training forward's statistics (f32).
    pub stats: &'a wgpu::Buffer,
    /// dL/dx, written.
    pub dx: &'a wgpu::Buffer,
    /// dL/dγ (f32), written.
    pub dgamma: &'a wgpu::Buffer,
    /// dL/dβ (f32), written.
    pub dbeta: &'a wgpu::Buffer,
}

impl GpuBackend {
    /// Records a BatchNorm forward on the host's buffers into the host's `encoder`; nothing
    /// runs until the host submits it on this backend's queue. `Mode::Train` also updates the
    /// running statistics in place. Sizes and usages are checked before anything is recorded.
    pub fn record_batchnorm_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        mode: Mode,
        shape: BatchNormShape,
        config: BatchNormConfig,
        buffers: &HostBatchNormForward<'_>,
    ) -> Result<()> {
        let (numel, c) = (shape.numel(), shape.c);
        let act = buffers.activations;
        let x = self.wrap_buffer("x", buffers.x, numel, act)?;
        let affine = Affine {
            gamma: self.wrap_buffer("gamma", buffers.gamma, c, Dtype::F32)?,
            beta: self.wrap_buffer("beta", buffers.beta, c, Dtype::F32)?,
        };
        let mut running = RunningStats {
            mean: self.wrap_buffer("running_mean", buffers.running_mean, c, Dtype::F32)?,
            var: self.wrap_buffer("running_var", buffers.running_var, c, Dtype::F32)?,
        };
        let mut out = BatchNormForward {
            y: self.wrap_buffer("y", buffers.y, numel, act)?,
            stats: self.wrap_buffer("stats", buffers.stats, shape.stats_len(), Dtype::F32)?,
        };
        self.record_into(encoder, || {
            self.batchnorm_forward(mode, &x, shape, &affine, &mut running, config, &mut out)
        })
    }

    /// Records a BatchNorm backward on the host's buffers into the host's `encoder`.
    pub fn record_batchnorm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: BatchNormShape,
        buffers: &HostBatchNormBackward<'_>,
    ) -> Result<()> {
        let (numel, c) = (shape.numel(), shape.c);
        let act = buffers.activations;
        let x = self.wrap_buffer("x", buffers.x, numel, act)?;
        let dy = self.wrap_buffer("dy", buffers.dy, numel, act)?;
        let gamma = self.wrap_buffer("gamma", buffers.gamma, c, Dtype::F32)?;
        let stats = self.wrap_buffer("stats", buffers.stats, shape.stats_len(), Dtype::F32)?;
        let mut grads = BatchNormGrads {
            dx: self.wrap_buffer("dx", buffers.dx, numel, act)?,
            dgamma: self.wrap_buffer("dgamma", buffers.dgamma, c, Dtype::F32)?,
            dbeta: self.wrap_buffer("dbeta", buffers.dbeta, c, Dtype::F32)?,
        };
        self.record_into(encoder, || {
            self.batchnorm_backward(&x, &dy, shape, &gamma, &stats, &mut grads)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tensors_are_one_chunk() -> Result<()> {
        let shape = BatchNormShape {
            n: 32,
            c: 128,
            s: 1,
        };
        let chunks = plan_row_chunks(shape, Dtype::F32, 128 << 20, 256)?;
        assert_eq!(
            chunks,
            vec![RowChunk {
                first_row: 0,
                rows: 32
            }]
        );
        Ok(())
    }

    #[test]
    fn large_tensors_split_into_aligned_chunks_that_cover_every_row() -> Result<()> {
        let shape = BatchNormShape {
            n: 65537,
            c: 513,
            s: 1,
        };
        let chunks = plan_row_chunks(shape, Dtype::F32, 128 << 20, 256)?;
        assert!(chunks.len() >= 2);
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first_row, next);
            assert_eq!((chunk.first_row * 513 * 4) % 256, 0, "offset alignment");
            assert!((chunk.rows * 513 * 4) as u64 <= 128 << 20);
            next += chunk.rows;
        }
        assert_eq!(next, 65537);
        Ok(())
    }

    #[test]
    fn a_sample_larger_than_the_binding_limit_is_refused_naming_the_limit() {
        let shape = BatchNormShape {
            n: 4,
            c: 3,
            s: 1 << 20,
        };
        let err = plan_row_chunks(shape, Dtype::F32, 1 << 20, 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
    }

    #[test]
    fn one_value_per_channel_in_training_is_refused() {
        let shape = BatchNormShape { n: 1, c: 5, s: 1 };
        let err = check_config(Mode::Train, shape, BatchNormConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("more than 1 value per channel"),
            "{err}"
        );
        check_config(Mode::Eval, shape, BatchNormConfig::default()).unwrap();
    }
}
