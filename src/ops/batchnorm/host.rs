//! BatchNorm recorded into a host's command encoder on the host's buffers, for programs that
//! own their wgpu device and embed wgnorm.

use super::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats,
};
use crate::gpu::GpuBackend;
use crate::{Dtype, Result};

/// A host's buffers for [`GpuBackend::record_batchnorm_forward`]. Each needs
/// `BufferUsages::STORAGE` and at least the bytes given, for a shape of G ghost batches (1
/// without them): `x` and `y` 4·N·C·S (f32); `gamma`, `beta`, `running_mean` and
/// `running_var` 4·C; `stats` 4·5·C·G (`BatchNormShape::stats_len` floats: the `stat` planes of
/// each ghost batch, which a backward needs from a training forward).
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
/// bytes (f32; f16 halves them, rounded up to 4); `gamma`, `dgamma` and `dbeta` 4·C; `stats`
/// 4·5·C·G for G ghost batches, as a training forward of the same shape wrote them. Each needs
/// `BufferUsages::STORAGE`.
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
        self.record_into(encoder, |view| {
            view.batchnorm_forward(mode, &x, shape, &affine, &mut running, config, &mut out)
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
        self.record_into(encoder, |view| {
            view.batchnorm_backward(&x, &dy, shape, &gamma, &stats, &mut grads)
        })
    }
}
