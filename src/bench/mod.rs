//! The measurements behind `wgnorm bench` and `benches/`: BatchNorm kernels, the matrix
//! products of a step, training steps and a full epoch on a backend, each timed as the median of
//! repetitions after warm-up, with the byte and FLOP models that turn times into rates.

use std::time::Instant;

use serde::Serialize;

use crate::Result;
use crate::cpu::CpuBackend;
use crate::gpu::{GpuBackend, Profile};
use crate::ops::Compute;

mod ceilings;
mod kernels;
mod matmul;
mod training;

pub use ceilings::{STREAM_VECTORS_PER_THREAD, StreamParams};
pub use kernels::{BatchNormPass, BatchNormStep, KernelTiming, time_batchnorm};
pub use matmul::{LinearProduct, ProductTiming, StepProduct, step_products, time_product};
pub use training::{
    EpochTiming, KernelShare, STEPS_PER_SAMPLE, SYNTHETIC_IMAGES, StepObjects, StepTiming,
    SyntheticStep, profile_step, step_flops, time_epoch, time_steps, time_to_first_step,
};

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

    /// Runs `work`, waits for it, and returns the device time of each of its dispatches, or
    /// `None` where the device cannot time kernels.
    fn device_profile(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Profile>>;

    /// Runs `work`, waits for it, and returns its device time (the sum of its kernels' times),
    /// or `None` where the device cannot time kernels.
    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        Ok(self.device_profile(work)?.map(|p| p.device_seconds()))
    }

    /// Copies `bytes` from one device buffer to another `reps` times (after one untimed copy)
    /// and returns the wall seconds each took.
    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>>;

    /// Streams `bytes` through y = a·x + b into another buffer `reps` times (after one untimed
    /// run) and returns the seconds each took: on a GPU the device time where it can be
    /// measured, else the wall time.
    fn stream_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>>;

    /// What the device has created and done so far, where it keeps count (the GPU).
    fn counters(&self) -> Option<crate::gpu::GpuCounters> {
        None
    }
}

impl Clock for CpuBackend {
    fn finish(&self) -> Result<()> {
        Ok(())
    }

    fn device_profile(&self, _work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Profile>> {
        Ok(None)
    }

    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        ceilings::cpu_copy_seconds(bytes, reps)
    }

    fn stream_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        ceilings::cpu_stream_seconds(bytes, reps)
    }
}

impl Clock for GpuBackend {
    fn finish(&self) -> Result<()> {
        self.wait()
    }

    fn counters(&self) -> Option<crate::gpu::GpuCounters> {
        Some(GpuBackend::counters(self))
    }

    fn device_profile(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Profile>> {
        if !self.has_timestamps() {
            return Ok(None);
        }
        self.start_profiling()?;
        let result = work();
        let profile = self.finish_profiling()?;
        result?;
        Ok(Some(profile))
    }

    fn copy_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        ceilings::gpu_copy_seconds(self, bytes, reps)
    }

    fn stream_seconds(&self, bytes: usize, reps: usize) -> Result<Vec<f64>> {
        ceilings::gpu_stream_seconds(self, bytes, reps)
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

/// Copy bandwidth (bytes read plus bytes written per second) of `bytes`-sized device copies,
/// from the fastest of `reps`: the ceiling of the memory system. A ceiling is what the device
/// can do, so it takes the best sample; a shared machine's noise only ever slows a sample.
pub fn copy_bandwidth<B: Clock>(backend: &B, bytes: usize, reps: usize) -> Result<f64> {
    let samples = backend.copy_seconds(bytes, reps.max(1))?;
    Ok(2.0 * bytes as f64 / Timing::of(samples).min)
}

/// Streaming bandwidth (bytes read plus bytes written per second) of y = a·x + b over
/// `bytes`-sized buffers, from the fastest of `reps`: the most an elementwise kernel moves on
/// the device.
pub fn stream_bandwidth<B: Clock>(backend: &B, bytes: usize, reps: usize) -> Result<f64> {
    let samples = backend.stream_seconds(bytes, reps.max(1))?;
    Ok(2.0 * bytes as f64 / Timing::of(samples).min)
}
