//! Device time of each dispatch, from timestamps the GPU writes at the start and end of the
//! dispatch's compute pass (adapters with `TIMESTAMP_QUERY`).

use super::{GpuBackend, Kernel, lock};
use crate::backend::Backend;
use crate::{Error, Result};

/// Dispatches one profiling window can time; later ones run untimed and are counted.
pub(crate) const CAPACITY: u32 = 2048;

/// The device time of one dispatch.
#[derive(Clone, Copy, Debug)]
pub struct KernelTime {
    /// Which kernel ran.
    pub kernel: Kernel,
    /// Its device time.
    pub seconds: f64,
}

/// What a profiling window measured.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// One entry per timed dispatch, in recording order.
    pub dispatches: Vec<KernelTime>,
    /// Dispatches recorded after `CAPACITY` was reached.
    pub untimed: usize,
}

impl Profile {
    /// Device time of every timed dispatch together (gaps between dispatches excluded).
    pub fn device_seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }

    /// Device time per kernel, largest first, with the number of dispatches.
    pub fn by_kernel(&self) -> Vec<(Kernel, usize, f64)> {
        let mut totals: Vec<(Kernel, usize, f64)> = Vec::new();
        for d in &self.dispatches {
            match totals.iter_mut().find(|(k, _, _)| *k == d.kernel) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += d.seconds;
                }
                None => totals.push((d.kernel, 1, d.seconds)),
            }
        }
        totals.sort_by(|a, b| b.2.total_cmp(&a.2));
        totals
    }
}

/// An open profiling window: the query set and the kernels timed so far.
pub(crate) struct Window {
    pub(crate) queries: wgpu::QuerySet,
    pub(crate) kernels: Vec<Kernel>,
    pub(crate) untimed: usize,
}

impl Window {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgnorm profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * CAPACITY,
            }),
            kernels: Vec::new(),
            untimed: 0,
        }
    }

    /// The timestamp writes for the next dispatch, or `None` once the window is full.
    pub(crate) fn next(&mut self, kernel: Kernel) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let index = self.kernels.len() as u32;
        if index >= CAPACITY {
            self.untimed += 1;
            return None;
        }
        self.kernels.push(kernel);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * index),
            end_of_pass_write_index: Some(2 * index + 1),
        })
    }

    /// Turns resolved ticks (start, end pairs) into seconds.
    pub(crate) fn profile(&self, ticks: &[u64], nanoseconds_per_tick: f64) -> Profile {
        let dispatches = self
            .kernels
            .iter()
            .zip(ticks.chunks_exact(2))
            .map(|(&kernel, pair)| KernelTime {
                kernel,
                seconds: pair[1].saturating_sub(pair[0]) as f64 * nanoseconds_per_tick * 1e-9,
            })
            .collect();
        Profile {
            dispatches,
            untimed: self.untimed,
        }
    }
}

impl GpuBackend {
    /// Whether the adapter can time dispatches on the device (`start_profiling`).
    pub fn has_timestamps(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Opens a profiling window: every dispatch recorded from now on has its device time
    /// measured, until `finish_profiling`.
    pub fn start_profiling(&self) -> Result<()> {
        if !self.has_timestamps() {
            return Err(Error::InvalidArgument(format!(
                "{} does not offer timestamp queries, so it cannot be profiled",
                self.shared.summary.name
            )));
        }
        *lock(&self.shared.profile) = Some(Window::new(&self.shared.device));
        Ok(())
    }

    /// Closes the profiling window, waits for its work and returns each dispatch's device time.
    pub fn finish_profiling(&self) -> Result<Profile> {
        let Some(window) = lock(&self.shared.profile).take() else {
            return Err(Error::InvalidArgument(
                "no profiling window is open: call start_profiling first".to_string(),
            ));
        };
        let queries = 2 * window.kernels.len() as u32;
        if queries == 0 {
            return Ok(window.profile(&[], 0.0));
        }
        let resolved = self.alloc(
            2 * queries as usize,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        self.record(|recording| {
            recording
                .encoder()
                .resolve_query_set(&window.queries, 0..queries, resolved.raw(), 0);
            Ok(())
        })?;
        let words = self.download_many(&[&resolved])?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&words[0]);
        let period = f64::from(self.shared.queue.get_timestamp_period());
        Ok(window.profile(&ticks, period))
    }
}
