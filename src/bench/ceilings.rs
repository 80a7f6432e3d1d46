//! The two ceilings kernels are judged against: a buffer copy (what the memory system moves)
//! and a streaming kernel y = a·x + b (what an elementwise kernel can move), on each backend.

use std::hint::black_box;
use std::time::Instant;

use super::Clock;
use crate::gpu::{Binding, GpuBackend, Kernel, Slot, Variant, WORKGROUP};
use crate::{Backend, Result};

/// Uniform parameters of `shaders/bandwidth.wgsl` (`struct StreamParams` there; a test
/// compares the layouts).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StreamParams {
    pub len: u32,
    pub a: f32,
    pub b: f32,
    pub _pad0: u32,
}

const _: () = assert!(std::mem::size_of::<StreamParams>() == 16);

/// Vectors of four each thread of `stream` handles (`VECTORS_PER_THREAD` in the shader).
#[doc(hidden)]
pub const STREAM_VECTORS_PER_THREAD: usize = 4;

/// Times `reps` runs of `run` after one untimed one.
fn timed(reps: usize, mut run: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    run()?;
    (0..reps).map(|_| run()).collect()
}

fn wall(run: impl FnOnce() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    run()?;
    Ok(started.elapsed().as_secs_f64())
}

pub(super) fn cpu_copy_seconds(bytes: usize, reps: usize) -> Result<Vec<f64>> {
    let source = vec![1.0f32; bytes / 4];
    let mut target = vec![0.0f32; bytes / 4];
    timed(reps, || {
        wall(|| {
            target.copy_from_slice(black_box(&source));
            black_box(&mut target);
            Ok(())
        })
    })
}

pub(super) fn cpu_stream_seconds(bytes: usize, reps: usize) -> Result<Vec<f64>> {
    let source = vec![1.0f32; bytes / 4];
    let mut target = vec![0.0f32; bytes / 4];
    let (a, b) = black_box((1.5f32, 0.25f32));
    timed(reps, || {
        wall(|| {
            for (y, &x) in target.iter_mut().zip(black_box(&source)) {
                *y = a * x + b;
            }
            black_box(&mut target);
            Ok(())
        })
    })
}

pub(super) fn gpu_copy_seconds(gpu: &GpuBackend, bytes: usize, reps: usize) -> Result<Vec<f64>> {
    let len = bytes / 4;
    let source = gpu.filled(len, 1.0)?;
    let target = gpu.scratch(len)?;
    timed(reps, || {
        wall(|| {
            gpu.record(|recording| {
                recording.encoder().copy_buffer_to_buffer(
                    source.raw(),
                    0,
                    target.raw(),
                    0,
                    len as u64 * 4,
                );
                Ok(())
            })?;
            gpu.wait()
        })
    })
}

pub(super) fn gpu_stream_seconds(gpu: &GpuBackend, bytes: usize, reps: usize) -> Result<Vec<f64>> {
    let len = bytes / 16 * 4;
    let source = gpu.filled(len, 1.0)?;
    let target = gpu.scratch(len)?;
    let params = StreamParams {
        len: (len / 4) as u32,
        a: 1.5,
        b: 0.25,
        _pad0: 0,
    };
    let mut run = || {
        gpu.record(|recording| {
            gpu.dispatch_threads(
                recording,
                Kernel::Stream,
                Variant::default(),
                WORKGROUP,
                &params,
                &[
                    Binding::whole(Slot::X, &source),
                    Binding::whole(Slot::Out, &target),
                ],
                (len / 4).div_ceil(STREAM_VECTORS_PER_THREAD),
            )
        })?;
        gpu.flush()
    };
    timed(reps, || match gpu.device_seconds(&mut run)? {
        Some(seconds) => Ok(seconds),
        None => wall(|| {
            run()?;
            gpu.wait()
        }),
    })
}
