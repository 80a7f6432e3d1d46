//! The measurements behind `wgnorm bench` and `benches/`: BatchNorm kernels, training steps and
//! a full epoch on a backend, each timed as the median of repetitions after warm-up, with the
//! byte and FLOP models that turn times into rates.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::cpu::CpuBackend;
use crate::data::mnist::{CLASSES, Mnist, PIXELS};
use crate::gpu::GpuBackend;
use crate::graph::{Compute, HostModel, Init, Mlp, ModelSpec};
use crate::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats,
};
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::metric;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::{TrainConfig, Trainer, train_on_batch};
use crate::{Backend, Result};

/// Median, fastest and slowest of repeated measurements, in seconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    /// Median of the samples, in seconds.
    pub median: f64,
    /// Fastest sample.
    pub min: f64,
    /// Slowest sample.
    pub max: f64,
    /// Samples taken.
    pub reps: usize,
}

impl Timing {
    /// The summary of `samples` (seconds each).
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => samples[n / 2],
            _ => 0.5 * (samples[n / 2 - 1] + samples[n / 2]),
        };
        Self {
            median,
            min: samples.first().copied().unwrap_or(f64::NAN),
            max: samples.last().copied().unwrap_or(f64::NAN),
            reps: n,
        }
    }
}

/// How a benchmark waits for a backend's work and, where the device can say, reads the time the
/// work took on the device itself.
pub trait Clock: Compute {
    /// Blocks until everything recorded so far has run.
    fn finish(&self) -> Result<()>;

    /// Runs `work`, waits for it, and returns its device time (the sum of its kernels' times),
    /// or `None` where the device cannot time kernels.
    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>>;

    /// Copies `bytes` from one device buffer to another `reps` times (after one untimed copy)
    /// and returns the wall seconds each took.
    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>>;
}

impl Clock for CpuBackend {
    fn finish(&self) -> Result<()> {
        Ok(())
    }

    fn device_seconds(&self, _work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        Ok(None)
    }

    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        let source = vec![1.0f32; bytes / 4];
        let mut target = vec![0.0f32; bytes / 4];
        (0..=reps)
            .map(|_| {
                let started = Instant::now();
                target.copy_from_slice(black_box(&source));
                black_box(&mut target);
                Ok(started.elapsed().as_secs_f64())
            })
            .skip(1)
            .collect()
    }
}

impl Clock for GpuBackend {
    fn finish(&self) -> Result<()> {
        self.wait()
    }

    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        if !self.has_timestamps() {
            return Ok(None);
        }
        self.start_profiling()?;
        let result = work();
        let profile = self.finish_profiling()?;
        result?;
        Ok(Some(profile.device_seconds()))
    }

    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        let len = bytes / 4;
        let source = self.filled(len, 1.0)?;
        let target = self.scratch(len)?;
        let copy = || {
            self.record(|encoder| {
                encoder.copy_buffer_to_buffer(source.raw(), 0, target.raw(), 0, len as u64 * 4);
                Ok(())
            })?;
            self.wait()
        };
        copy()?;
        (0..reps)
            .map(|_| {
                let started = Instant::now();
                copy()?;
                Ok(started.elapsed().as_secs_f64())
            })
            .collect()
    }
}

/// Wall time of `work` followed by a wait, `reps` times after `warmup` untimed runs.
fn wall_timing<B: Clock>(
    backend: &B,
    warmup: usize,
    reps: usize,
    work: &mut dyn FnMut() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..warmup {
        work()?;
    }
    backend.finish()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        work()?;
        backend.finish()?;
        samples.push(started.elapsed().as_secs_f64());
    }
    Ok(Timing::of(samples))
}

/// Device time of `work`, `reps` times, where the device can time kernels.
fn device_timing<B: Clock>(
    backend: &B,
    reps: usize,
    work: &mut dyn FnMut() -> Result<()>,
) -> Result<Option<Timing>> {
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        match backend.device_seconds(work)? {
            Some(seconds) => samples.push(seconds),
            None => return Ok(None),
        }
    }
    Ok(Some(Timing::of(samples)))
}

/// Copy bandwidth (bytes read plus bytes written per second) of `bytes`-sized device copies:
/// the ceiling a kernel that streams memory can approach.
pub fn copy_bandwidth<B: Clock>(backend: &B, bytes: usize, reps: usize) -> Result<f64> {
    let samples = backend.copy_seconds(bytes, reps.max(1))?;
    Ok(2.0 * bytes as f64 / Timing::of(samples).median)
}

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

/// One training step of an MLP on synthetic images: gather, forward, cross-entropy, backward
/// and Adam, exactly as the trainer runs it (the speed does not depend on the pixel values).
pub struct SyntheticStep<B: Compute> {
    model: Mlp<B>,
    optimizer: Optimizer<B>,
    images: DeviceImages<B>,
    index: IndexList<B>,
    metrics: B::Buffer,
    rows: usize,
}

/// Images held by a `SyntheticStep`; batches cycle through them.
pub const SYNTHETIC_IMAGES: usize = 4096;

impl<B: Compute> SyntheticStep<B> {
    /// A model of `spec` on synthetic images, stepping through batches of `rows` (1 to `SYNTHETIC_IMAGES`).
    pub fn new(backend: &B, spec: &ModelSpec, rows: usize) -> Result<Self> {
        if !(1..=SYNTHETIC_IMAGES).contains(&rows) {
            return Err(crate::Error::InvalidArgument(format!(
                "a synthetic training step takes 1 to {SYNTHETIC_IMAGES} rows, got {rows}"
            )));
        }
        let pixels: Vec<u8> = (0..SYNTHETIC_IMAGES * PIXELS)
            .map(|i| (i * 7919 % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..SYNTHETIC_IMAGES).map(|i| (i % CLASSES) as u8).collect();
        let lens: Vec<usize> = spec.params().iter().map(|p| p.len()).collect();
        let order: Vec<u32> = (0..SYNTHETIC_IMAGES as u32).collect();
        Ok(Self {
            model: Mlp::upload(backend, spec, &HostModel::initial(spec, Init::Keras, 0))?,
            optimizer: Optimizer::new(backend, OptimizerConfig::adam(1e-3), &lens)?,
            images: backend.upload_images(&pixels, PIXELS, &labels)?,
            index: backend.upload_indices(&order)?,
            metrics: backend.filled(metric::LEN, 0.0)?,
            rows,
        })
    }

    /// Records one step and submits it, without waiting.
    pub fn run(&mut self, backend: &B) -> Result<()> {
        let rows = self.rows;
        let first = (self.optimizer.steps as usize * rows) % (SYNTHETIC_IMAGES - rows + 1);
        let mut x = backend.scratch(rows * PIXELS)?;
        let mut labels = backend.scratch(rows)?;
        backend.gather(&self.images, &self.index, first, &mut x, &mut labels)?;
        train_on_batch(
            backend,
            &mut self.model,
            &mut self.optimizer,
            0,
            x,
            &labels,
            &mut self.metrics,
        )
    }

    /// The loss and accuracy totals so far (waits for the device).
    pub fn metrics(&self, backend: &B) -> Result<Vec<f32>> {
        backend.download(&self.metrics)
    }
}

/// Steps per timed sample of `time_steps`: the trainer does not wait between steps, so neither
/// does the benchmark within a sample.
pub const STEPS_PER_SAMPLE: usize = 5;

/// Seconds per training step of `spec` at `batch` rows, as the median over `reps` samples of
/// `STEPS_PER_SAMPLE` steps each, after `warmup` steps; wall time ending with a wait.
pub fn time_steps<B: Clock>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    warmup: usize,
    reps: usize,
) -> Result<Timing> {
    let mut step = SyntheticStep::new(backend, spec, batch)?;
    let mut work = || {
        for _ in 0..STEPS_PER_SAMPLE {
            step.run(backend)?;
        }
        Ok(())
    };
    let timing = wall_timing(backend, warmup.div_ceil(STEPS_PER_SAMPLE), reps, &mut work)?;
    let per_step = |t: f64| t / STEPS_PER_SAMPLE as f64;
    Ok(Timing {
        median: per_step(timing.median),
        min: per_step(timing.min),
        max: per_step(timing.max),
        reps: timing.reps,
    })
}

/// Seconds from nothing to a finished first training step: opening `backend` (the device, for
/// a GPU), uploading the model and data, creating every pipeline the step uses, and the step.
pub fn time_to_first_step<B: Clock>(
    open: impl FnOnce() -> Result<B>,
    spec: &ModelSpec,
    batch: usize,
) -> Result<f64> {
    let started = Instant::now();
    let backend = open()?;
    let mut step = SyntheticStep::new(&backend, spec, batch)?;
    step.run(&backend)?;
    step.metrics(&backend)?;
    Ok(started.elapsed().as_secs_f64())
}

/// What one epoch of the reference experiment took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EpochTiming {
    /// Training steps and validation, as `wgnorm train` reports them.
    pub seconds: f64,
    /// Training steps in the epoch.
    pub steps: usize,
    /// Validation accuracy after it, if there was a validation set.
    pub val_acc: Option<f64>,
}

/// Trains one epoch of `config` on `data`, from a fresh model.
pub fn time_epoch<B: Compute>(
    backend: &B,
    config: TrainConfig,
    data: &Mnist,
) -> Result<EpochTiming> {
    let mut trainer = Trainer::new(backend, config, data)?;
    let steps = trainer.steps_per_epoch();
    let record = trainer.train_epoch(&mut |_, _| Ok(()))?;
    Ok(EpochTiming {
        seconds: record.seconds,
        steps,
        val_acc: record.val_acc,
    })
}

/// Multiply-adds ×2 of one training step of `spec` on `batch` rows: each Linear layer's forward
/// (X·Wᵀ), its weight gradient (dYᵀ·X) and, except for the first, its input gradient (dY·W).
pub fn step_flops(spec: &ModelSpec, batch: usize) -> f64 {
    let mut widths = vec![spec.inputs];
    widths.extend(&spec.hidden);
    widths.push(spec.classes);
    widths
        .windows(2)
        .enumerate()
        .map(|(layer, pair)| {
            let products = if layer == 0 { 2.0 } else { 3.0 };
            products * 2.0 * (batch * pair[0] * pair[1]) as f64
        })
        .sum()
}
