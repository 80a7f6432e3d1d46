//! Launches `shaders/batchnorm.wgsl`. A reduction splits each channel's m values over
//! workgroups (`*_partial`) and merges the splits (`*_finalize`), skipped when one split
//! suffices; x is bound in chunks of rows where it exceeds what one binding may hold.

use super::chunks::{RowChunk, plan_row_chunks};
use super::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    PARTIAL_STRIDE, RunningStats,
};
use crate::backend::Backend;
use crate::gpu::{Binding, FINALIZE_WORKGROUP, GpuBackend, GpuBuffer, Kernel, Slot, WORKGROUP};
use crate::{Dtype, Result};

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
        let chunks = plan_row_chunks(
            shape,
            dtype,
            self.max_binding(),
            self.limits().min_storage_buffer_offset_alignment as u64,
        )?;
        // (N, C): neighbouring threads take neighbouring channels so loads coalesce;
        // (N, C, S): a whole workgroup walks the contiguous spatial run of one channel.
        let lanes_c = if shape.s == 1 {
            (shape.c.next_power_of_two() as u32).min(tuning.lanes_c_2d)
        } else {
            1
        };
        let row_lanes = WORKGROUP / lanes_c;
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
    if config.unbiased_running_var() {
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
        eps: config.eps(),
        momentum: config.momentum(),
        running_var_factor: running_var_factor(shape, config),
        ..Default::default()
    }
}

impl BatchNormOps for GpuBackend {
    fn batchnorm_forward_unchecked(
        &self,
        mode: Mode,
        x: &GpuBuffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        running: &mut RunningStats<Self>,
        config: BatchNormConfig,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
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
                            [shape.c.div_ceil(FINALIZE_WORKGROUP as usize) as u32, 1, 1],
                        )?;
                    }
                }
                Mode::Eval => self.dispatch(
                    encoder,
                    Kernel::BatchNormEvalStats,
                    &params,
                    &per_channel,
                    [shape.c.div_ceil(FINALIZE_WORKGROUP as usize) as u32, 1, 1],
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

    fn batchnorm_backward_unchecked(
        &self,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        shape: BatchNormShape,
        gamma: &GpuBuffer,
        stats: &GpuBuffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
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
                    [shape.c.div_ceil(FINALIZE_WORKGROUP as usize) as u32, 1, 1],
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
