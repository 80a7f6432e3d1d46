//! Training timed: one step on synthetic images, the first step of a fresh context, a whole
//! epoch on MNIST, and the FLOP model of a step.

use std::time::Instant;

use serde::Serialize;

use super::{Clock, Timing, wall_timing};
use crate::Result;
use crate::data::mnist::{CLASSES, Mnist, PIXELS};
use crate::graph::{Compute, HostModel, Init, ModelSpec, Sequential};
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::metric;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::{TrainConfig, Trainer, train_on_batch};

/// One training step of an MLP on synthetic images: gather, forward, cross-entropy, backward
/// and Adam, exactly as the trainer runs it (the speed does not depend on the pixel values).
pub struct SyntheticStep<B: Compute> {
    model: Sequential<B>,
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
            model: Sequential::upload(backend, spec, &HostModel::initial(spec, Init::Keras, 0))?,
            optimizer: Optimizer::new(backend, OptimizerConfig::adam(1e-3), &lens)?,
            images: backend.upload_images(&pixels, PIXELS, &labels)?,
            index: backend.upload_indices(&order)?,
            metrics: backend.filled(metric::LEN, 0.0)?,
            rows,
        })
    }

    /// Records one step, submitted as the trainer submits its steps (`train_on_batch`).
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
            None,
            x,
            &labels,
            &mut self.metrics,
            None,
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
) -> Result<StepTiming> {
    let mut step = SyntheticStep::new(backend, spec, batch)?;
    let mut work = || {
        for _ in 0..STEPS_PER_SAMPLE {
            step.run(backend)?;
        }
        Ok(())
    };
    let timing = wall_timing(backend, warmup.div_ceil(STEPS_PER_SAMPLE), reps, &mut work)?;
    let per_step = |t: f64| t / STEPS_PER_SAMPLE as f64;
    // One more sample, counted: the warm-up and the timed samples have settled the pool.
    let last_sample = match backend.counters() {
        Some(start) => {
            let started = Instant::now();
            work()?;
            let host = started.elapsed().as_secs_f64();
            backend.finish()?;
            backend.counters().map(|end| (start, end, host))
        }
        None => None,
    };
    Ok(StepTiming {
        seconds: Timing {
            median: per_step(timing.median),
            min: per_step(timing.min),
            max: per_step(timing.max),
            reps: timing.reps,
        },
        objects: last_sample.map(|(start, end, host)| StepObjects {
            host_seconds: per_step(host),
            dispatches: (end.dispatches - start.dispatches) as f64 / STEPS_PER_SAMPLE as f64,
            submissions: (end.submissions - start.submissions) as f64 / STEPS_PER_SAMPLE as f64,
            bind_groups: (end.bind_groups - start.bind_groups) as f64 / STEPS_PER_SAMPLE as f64,
            buffers: (end.buffers - start.buffers) as f64 / STEPS_PER_SAMPLE as f64,
            uniform_writes: (end.uniform_writes - start.uniform_writes) as f64
                / STEPS_PER_SAMPLE as f64,
        }),
    })
}

/// One kernel's part of a training step's device time.
#[derive(Clone, Debug, Serialize)]
pub struct KernelShare {
    /// The kernel as `shader.entry_point`, e.g. `batchnorm.stats_partial`.
    pub kernel: String,
    /// Its dispatches per step.
    pub dispatches: f64,
    /// Its device seconds per step.
    pub seconds: f64,
    /// Its fraction of the step's device time.
    pub share: f64,
}

/// Device time of each kernel of a training step of `spec` at `batch` rows, averaged over
/// `reps` profiled steps after `warmup`, largest first; `None` where the device cannot time
/// kernels.
pub fn profile_step<B: Clock>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    warmup: usize,
    reps: usize,
) -> Result<Option<Vec<KernelShare>>> {
    let mut step = SyntheticStep::new(backend, spec, batch)?;
    for _ in 0..warmup {
        step.run(backend)?;
    }
    backend.finish()?;
    let mut dispatches = Vec::new();
    for _ in 0..reps {
        match backend.device_profile(&mut || step.run(backend))? {
            Some(profile) => dispatches.extend(profile.dispatches),
            None => return Ok(None),
        }
    }
    let profile = crate::gpu::Profile {
        dispatches,
        untimed: 0,
    };
    let total = profile.device_seconds();
    let per_step = |v: f64| v / reps.max(1) as f64;
    Ok(Some(
        profile
            .by_kernel()
            .into_iter()
            .map(|(kernel, count, seconds)| KernelShare {
                kernel: kernel.qualified_name(),
                dispatches: per_step(count as f64),
                seconds: per_step(seconds),
                share: seconds / total,
            })
            .collect(),
    ))
}

/// A training step's wall time, and what each step dispatched and created once timed.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepTiming {
    /// Wall seconds per step.
    pub seconds: Timing,
    /// Per step, after warm-up, where the device counts (the GPU).
    pub objects: Option<StepObjects>,
}

/// Device work and objects per training step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepObjects {
    /// Host seconds spent recording and submitting (the wait for the device excluded).
    pub host_seconds: f64,
    /// Compute dispatches.
    pub dispatches: f64,
    /// Queue submissions.
    pub submissions: f64,
    /// Bind groups created.
    pub bind_groups: f64,
    /// Device buffers created.
    pub buffers: f64,
    /// Uniform parameter writes (dispatches whose parameters changed since the last step).
    pub uniform_writes: f64,
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

/// Multiply-adds ×2 of one training step of `spec` on `batch` rows: the products of
/// `step_products`.
pub fn step_flops(spec: &ModelSpec, batch: usize) -> f64 {
    (super::step_products(spec, batch).iter())
        .map(|product| product.flops())
        .sum()
}
