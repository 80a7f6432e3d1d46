//! Recording work: every op records its dispatches into one command encoder, submitted when
//! results are needed, so that a whole training step goes to the GPU in one submission.
//!
//! The encoder is wgnorm's own pending one, or, inside `record_into`, the host's: a view of the
//! backend that owns the host's encoder records there, so that no other thread's work can land
//! in it and none of theirs is lost to it.
//!
//! Consecutive dispatches share one compute pass (wgpu still orders them with barriers where
//! one reads what another wrote): beginning and ending a pass per dispatch costs more than many
//! small kernels do on a software rasterizer. The pass ends before anything else is recorded,
//! and a dispatch timed by the profiler gets a pass of its own, which carries the timestamps.

use std::sync::{Arc, Mutex};

use super::kernels::{Binding, Kernel, Storage};
use super::pipeline::Variant;
use super::{GpuBackend, WORKGROUP, lock};
use crate::{Error, Result};

/// What ops record into until it is submitted: an encoder, and the compute pass that
/// consecutive dispatches share.
pub(crate) struct Recording {
    encoder: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
}

impl Recording {
    fn new(encoder: wgpu::CommandEncoder) -> Self {
        Self {
            encoder,
            pass: None,
        }
    }

    /// The encoder, for work that is not a dispatch (copies, query resolves): the shared pass
    /// ends first.
    pub(crate) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// The shared pass, begun if none is open.
    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let Recording { encoder, pass } = self;
        pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("wgnorm"),
                    timestamp_writes: None,
                })
                .forget_lifetime()
        })
    }

    /// The encoder with the shared pass ended.
    fn into_encoder(mut self) -> wgpu::CommandEncoder {
        self.pass = None;
        self.encoder
    }
}

/// A recording that ops add to until it is submitted.
pub(super) type EncoderSlot = Mutex<Option<Recording>>;

impl GpuBackend {
    /// Runs `record` on a view of this backend that records into `encoder`, the host's: the
    /// host decides when to submit. Work wgnorm recorded before is submitted first, so it runs
    /// before the host's. Other threads keep recording into wgnorm's own encoder meanwhile.
    pub(crate) fn record_into<R>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        record: impl FnOnce(&GpuBackend) -> Result<R>,
    ) -> Result<R> {
        self.submit_pending()?;
        let stand_in = self
            .shared
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnorm stand-in"),
            });
        let host_slot = Arc::new(Mutex::new(Some(Recording::new(std::mem::replace(
            encoder, stand_in,
        )))));
        let view = GpuBackend {
            shared: Arc::clone(&self.shared),
            host_encoder: Some(Arc::clone(&host_slot)),
        };
        let result = record(&view);
        drop(view);
        if let Some(host_recording) = lock(&host_slot).take() {
            *encoder = host_recording.into_encoder();
        }
        result
    }

    /// Whether this handle records into a host's encoder (inside `record_into`).
    pub(super) fn records_for_host(&self) -> bool {
        self.host_encoder.is_some()
    }

    /// Records into this handle's encoder: the host's inside `record_into`, else wgnorm's
    /// pending one, submitted by `flush`.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut Recording) -> Result<R>) -> Result<R> {
        self.check()?;
        let slot = self.host_encoder.as_deref().unwrap_or(&self.shared.pending);
        let mut pending = lock(slot);
        let recording = pending.get_or_insert_with(|| {
            Recording::new(self.shared.device.create_command_encoder(
                &wgpu::CommandEncoderDescriptor {
                    label: Some("wgnorm"),
                },
            ))
        });
        f(recording)
    }

    /// Submits wgnorm's pending encoder (never a host's). The lock is held until the
    /// submission is made: another thread's flush then returns only once work it may depend on
    /// (recorded by anyone into the shared encoder) has really been submitted.
    pub(super) fn submit_pending(&self) -> Result<()> {
        let mut pending = lock(&self.shared.pending);
        if let Some(recording) = pending.take() {
            let released = self.shared.pool.take_released();
            self.shared
                .queue
                .submit([recording.into_encoder().finish()]);
            let submissions = (self.shared.bind_groups.submissions)
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            self.shared.pool.reuse(released);
            if (self.shared.lose_device.as_ref()).is_some_and(|fault| fault.strikes(submissions)) {
                self.shared.device.destroy();
            }
        }
        drop(pending);
        self.check()
    }

    /// Records one dispatch of `kernel` with `params` in slot 0.
    pub(crate) fn dispatch(
        &self,
        recording: &mut Recording,
        kernel: Kernel,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        self.dispatch_specialized(
            recording,
            kernel,
            Variant::default(),
            params,
            bindings,
            groups,
        )
    }

    /// `dispatch` of the pipeline of `kernel` specialized as `variant` says.
    pub(crate) fn dispatch_specialized(
        &self,
        recording: &mut Recording,
        kernel: Kernel,
        variant: Variant,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit(format!(
                "{} needs {groups:?} workgroups, beyond the adapter's \
                 max_compute_workgroups_per_dimension of {max}",
                kernel.entry_point()
            )));
        }
        let storage = Storage::of(kernel, bindings, variant.vector)?;
        let pipeline = self
            .shared
            .pipelines
            .get(kernel, storage, variant.constants)?;
        // The uniform, when the group does not own one, lives until the dispatch is recorded.
        let (bind_group, _uniform) =
            self.bind_group(kernel, &pipeline, bytemuck::bytes_of(params), bindings)?;
        let mut profile = lock(&self.shared.profile);
        match profile.as_mut().and_then(|window| window.next(kernel)) {
            Some(timestamps) => {
                let mut pass =
                    recording
                        .encoder()
                        .begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(kernel.entry_point()),
                            timestamp_writes: Some(timestamps),
                        });
                record_dispatch(&mut pass, &pipeline, &bind_group, groups);
            }
            None => record_dispatch(recording.pass(), &pipeline, &bind_group, groups),
        }
        Ok(())
    }

    /// Dispatches one thread per element over `elements`, folding the grid into two
    /// dimensions when one would exceed the workgroup-count limit.
    pub(crate) fn dispatch_elementwise(
        &self,
        recording: &mut Recording,
        kernel: Kernel,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        elements: usize,
    ) -> Result<()> {
        self.dispatch_threads(
            recording,
            kernel,
            Variant::default(),
            WORKGROUP,
            params,
            bindings,
            elements,
        )
    }

    /// Dispatches `threads` threads in workgroups of `group`, folded into two dimensions when
    /// one would exceed the workgroup-count limit (the kernel numbers its thread with the
    /// prelude's `thread_index`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dispatch_threads(
        &self,
        recording: &mut Recording,
        kernel: Kernel,
        variant: Variant,
        group: u32,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        threads: usize,
    ) -> Result<()> {
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        let workgroups = threads.div_ceil(group as usize).max(1);
        let x = workgroups.min(max);
        let y = workgroups.div_ceil(x);
        self.dispatch_specialized(
            recording,
            kernel,
            variant,
            params,
            bindings,
            [x as u32, y as u32, 1],
        )
    }
}

fn record_dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    groups: [u32; 3],
) {
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
}
