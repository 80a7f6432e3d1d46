//! Launches GroupNorm's normalization, the kernels of `shaders/batchnorm.wgsl` specialized for
//! its view of x (`GROUP_NORM`) on a grid of its own: one split per sample where the adapter
//! class wants no more, each workgroup finishing a run of samples one after another, so that any
//! number of samples fits the grid; few large samples are split over workgroups, a ghost batch
//! per sample in the grid's third dimension. And `shaders/channel_affine.wgsl`: one thread per
//! element for the affine, one per (split of rows, channel) for its gradients, then one per
//! channel to add the splits.

use super::{GroupNormOps, GroupNormShape, affine_splits};
use crate::backend::Backend;
use crate::gpu::{Binding, FINALIZE_WORKGROUP, GpuBackend, GpuBuffer, Kernel, Slot, Variant};
use crate::ops::batchnorm::{
    BackwardBuffers, BatchNormParams, ForwardBuffers, Mode, Normalization, ReductionPlan,
    plan_params,
};
use crate::{Dtype, Result};

/// Uniform parameters of `shaders/channel_affine.wgsl` (`struct AffineParams` there; a test
/// compares the layouts).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AffineParams {
    pub rows: u32,
    pub channels: u32,
    pub positions: u32,
    pub group_channels: u32,
    pub groups: u32,
    pub split_rows: u32,
    pub splits: u32,
    pub shifted: u32,
}

const _: () = assert!(std::mem::size_of::<AffineParams>() == 32);

impl GpuBackend {
    /// The grid of GroupNorm's view: one split per sample, in runs of samples per workgroup as
    /// short as keep `target_workgroups` workgroups busy and long enough for the grid's third
    /// dimension to stay within the adapter's limit; where the adapter class wants several
    /// splits per sample (fewer samples than workgroups it wants), BatchNorm's split grid, a
    /// ghost batch per sample in the third dimension.
    fn groupnorm_plan(&self, shape: GroupNormShape, dtype: Dtype) -> Result<ReductionPlan> {
        let view = shape.batchnorm_view();
        let what = format!(
            "GroupNorm input of shape (N={}, P={}, C={})",
            shape.samples, shape.positions, shape.channels
        );
        let reduction = self.reduction(&what, view, dtype)?;
        // A single sample is the whole batch of BatchNorm's grid, which may bind its rows in
        // chunks.
        if reduction.wanted_splits > 1 || shape.samples == 1 {
            return Ok(reduction.split(view, Normalization::GroupNorm));
        }
        let most_runs = self.limits().max_compute_workgroups_per_dimension;
        let runs =
            (self.tuning().target_workgroups / reduction.workgroup_columns()).clamp(1, most_runs);
        let ghost_loop = reduction.largest_chunk_ghosts(view).div_ceil(runs as usize);
        Ok(reduction.looped(view, ghost_loop, Normalization::GroupNorm))
    }
}

impl GroupNormOps for GpuBackend {
    fn groupnorm_normalize_unchecked(
        &self,
        x: &GpuBuffer,
        shape: GroupNormShape,
        eps: f32,
        xhat: &mut GpuBuffer,
        stats: &mut GpuBuffer,
    ) -> Result<()> {
        let view = shape.batchnorm_view();
        let plan = self.groupnorm_plan(shape, x.dtype())?;
        let params = BatchNormParams {
            eps,
            ..plan_params(view, &plan, None)
        };
        // The view's kernels read no γ or β and keep no running statistics.
        let (unread, unwritten) = (self.placeholder(), self.writable_placeholder());
        let buffers = ForwardBuffers {
            x,
            gamma: unread,
            beta: unread,
            running_mean: unwritten,
            running_var: unwritten,
            y: xhat,
            stats,
        };
        self.record_forward(Mode::Train, view, &plan, &params, buffers)
    }

    fn groupnorm_normalize_backward_unchecked(
        &self,
        x: &GpuBuffer,
        dxhat: &GpuBuffer,
        shape: GroupNormShape,
        stats: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let view = shape.batchnorm_view();
        let plan = self.groupnorm_plan(shape, x.dtype())?;
        let params = plan_params(view, &plan, None);
        // Nor do they write the view's dγ and dβ: GroupNorm's are per channel.
        let (unread, unwritten) = (self.placeholder(), self.writable_placeholder());
        let buffers = BackwardBuffers {
            x,
            activated: x,
            dy: dxhat,
            gamma: unread,
            stats,
            dx,
            dgamma: unwritten,
            dbeta: unwritten,
        };
        self.record_backward(view, &plan, &params, buffers)
    }

    fn channel_affine_unchecked(
        &self,
        x: &GpuBuffer,
        channels: usize,
        gamma: &GpuBuffer,
        beta: Option<&GpuBuffer>,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let kernel = Kernel::ChannelAffine;
        self.check_bindable(kernel.entry_point(), x)?;
        let params = AffineParams {
            rows: (x.len() / channels) as u32,
            channels: channels as u32,
            shifted: u32::from(beta.is_some()),
            ..AffineParams::default()
        };
        let bindings = [
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::Gamma, gamma),
            Binding::whole(Slot::Beta, beta.unwrap_or(self.placeholder())),
            Binding::whole(Slot::Out, out),
        ];
        self.record(|recording| {
            self.dispatch_elementwise(recording, kernel, &params, &bindings, x.len())
        })
    }

    fn channel_affine_grads_unchecked(
        &self,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        shape: GroupNormShape,
        stats: &GpuBuffer,
        [dgamma, dbeta]: [&mut GpuBuffer; 2],
    ) -> Result<()> {
        let partial = Kernel::ChannelAffineGradsPartial;
        for input in [x, dy] {
            self.check_bindable(partial.entry_point(), input)?;
        }
        let rows = shape.samples * shape.positions;
        let (split_rows, splits) = affine_splits(rows, shape.channels);
        let params = AffineParams {
            rows: rows as u32,
            channels: shape.channels as u32,
            positions: shape.positions as u32,
            group_channels: (shape.channels / shape.groups) as u32,
            groups: shape.groups as u32,
            split_rows: split_rows as u32,
            splits: splits as u32,
            shifted: 0,
        };
        let partials = self.scratch((splits * shape.channels * 2).max(1))?;
        let per_channel = [
            Binding::whole(Slot::Partials, &partials),
            Binding::whole(Slot::Dgamma, dgamma),
            Binding::whole(Slot::Dbeta, dbeta),
        ];
        let mut partial_bindings = vec![
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::Dy, dy),
            Binding::whole(Slot::Stats, stats),
        ];
        partial_bindings.extend_from_slice(&per_channel);
        self.record(|recording| {
            self.dispatch_threads(
                recording,
                partial,
                Variant::default(),
                FINALIZE_WORKGROUP,
                &params,
                &partial_bindings,
                splits * shape.channels,
            )?;
            if splits == 1 {
                return Ok(());
            }
            self.dispatch_threads(
                recording,
                Kernel::ChannelAffineGradsFinalize,
                Variant::default(),
                FINALIZE_WORKGROUP,
                &params,
                &per_channel,
                shape.channels,
            )
        })
    }
}
