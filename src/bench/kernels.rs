//! BatchNorm kernels timed alone: each pass of a training step, on wall clock and device time.

use serde::Serialize;

use super::{Clock, Timing, device_timing, wall_timing};
use crate::Result;
use crate::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats,
};

/// Which part of a BatchNorm training step is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormPass {
    /// Statistics, running update and normalize.
    Forward,
    /// The two sums and dx, from saved statistics.
    Backward,
    /// A forward followed by its backward.
    ForwardBackward,
}

impl BatchNormPass {
    /// Every pass, in the order the bench prints them.
    pub const ALL: [BatchNormPass; 3] = [
        BatchNormPass::Forward,
        BatchNormPass::Backward,
        BatchNormPass::ForwardBackward,
    ];

    /// The name printed and written to JSON.
    pub fn name(self) -> &'static str {
        match self {
            BatchNormPass::Forward => "forward",
            BatchNormPass::Backward => "backward",
            BatchNormPass::ForwardBackward => "fwd+bwd",
        }
    }

    /// Tensor-sized reads and writes of the two-pass kernels, per element (per-channel
    /// traffic is negligible and not counted).
    pub fn tensor_passes(self) -> usize {
        match self {
            BatchNormPass::Forward => 3,
            BatchNormPass::Backward => 5,
            BatchNormPass::ForwardBackward => 8,
        }
    }

    /// What the pass reads and writes per element, as printed above the table.
    pub fn byte_model(self) -> &'static str {
        match self {
            BatchNormPass::Forward => "reads x twice (statistics, normalize), writes y: 3 × 4 B",
            BatchNormPass::Backward => "reads x and dy twice (sums, dx), writes dx: 5 × 4 B",
            BatchNormPass::ForwardBackward => "forward + backward: 8 × 4 B",
        }
    }
}

/// Inputs and reusable outputs of a BatchNorm training step on one backend.
pub struct BatchNormStep<B: BatchNormOps> {
    /// The tensor's (N, C, S) view.
    pub shape: BatchNormShape,
    x: B::Buffer,
    dy: B::Buffer,
    affine: Affine<B>,
    running: RunningStats<B>,
    forward: BatchNormForward<B>,
    grads: BatchNormGrads<B>,
}

impl<B: BatchNormOps> BatchNormStep<B> {
    /// Deterministic inputs in [0, 1) and dy in [-0.5, 0.5).
    pub fn new(backend: &B, shape: BatchNormShape) -> Result<Self> {
        let x: Vec<f32> = (0..shape.numel())
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let dy: Vec<f32> = x.iter().map(|v| v - 0.5).collect();
        Ok(Self {
            shape,
            x: backend.upload(&x)?,
            dy: backend.upload(&dy)?,
            affine: Affine {
                gamma: backend.filled(shape.c, 1.0)?,
                beta: backend.filled(shape.c, 0.0)?,
            },
            running: RunningStats {
                mean: backend.filled(shape.c, 0.0)?,
                var: backend.filled(shape.c, 1.0)?,
            },
            forward: BatchNormForward {
                y: backend.scratch(shape.numel())?,
                stats: backend.scratch(shape.stats_len())?,
            },
            grads: BatchNormGrads {
                dx: backend.scratch(shape.numel())?,
                dgamma: backend.scratch(shape.c)?,
                dbeta: backend.scratch(shape.c)?,
            },
        })
    }

    /// Records `pass` (a backward alone uses the statistics of the last forward).
    pub fn run(&mut self, backend: &B, pass: BatchNormPass) -> Result<()> {
        if pass != BatchNormPass::Backward {
            backend.batchnorm_forward(
                Mode::Train,
                &self.x,
                self.shape,
                &self.affine,
                &mut self.running,
                BatchNormConfig::default(),
                &mut self.forward,
            )?;
        }
        if pass != BatchNormPass::Forward {
            backend.batchnorm_backward(
                &self.x,
                &self.dy,
                self.shape,
                &self.affine.gamma,
                &self.forward.stats,
                &mut self.grads,
            )?;
        }
        backend.flush()
    }
}

/// Wall and device time of one BatchNorm pass.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KernelTiming {
    /// Wall time: record, submit and wait.
    pub wall: Timing,
    /// Device time from timestamp queries, where the adapter has them.
    pub device: Option<Timing>,
}

/// Times `pass` at `shape`: wall time including submit and wait, and device time where the
/// device can measure it.
pub fn time_batchnorm<B: BatchNormOps + Clock>(
    backend: &B,
    shape: BatchNormShape,
    pass: BatchNormPass,
    warmup: usize,
    reps: usize,
) -> Result<KernelTiming> {
    let mut step = BatchNormStep::new(backend, shape)?;
    // A backward alone needs statistics to read.
    step.run(backend, BatchNormPass::Forward)?;
    let mut work = || step.run(backend, pass);
    let wall = wall_timing(backend, warmup, reps, &mut work)?;
    let device = device_timing(backend, reps, &mut work)?;
    Ok(KernelTiming { wall, device })
}
