//! Launches `shaders/batchnorm.wgsl`. A reduction splits each channel's m values over
//! workgroups (`*_partial`) and merges the splits (`*_finalize`), skipped when one split
//! suffices; x is bound in chunks of rows where it exceeds what one binding may hold.

use std::ops::Range;

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
        running_var_factor: config.running_var_factor(shape.per_channel()),
        ..Default::default()
    }
}

/// Workgroups of the per-channel kernels: one thread per channel.
fn per_channel_groups(shape: BatchNormShape) -> [u32; 3] {
    [shape.c.div_ceil(FINALIZE_WORKGROUP as usize) as u32, 1, 1]
}

/// The values of x a chunk's rows span, with `row` values per row.
fn values(chunk: &RowChunk, row: usize) -> Range<usize> {
    chunk.first_row * row..(chunk.first_row + chunk.rows) * row
}

/// The bindings of one chunk, given the range of values its rows span.
type ChunkBindings<'a> = dyn Fn(Range<usize>) -> Vec<Binding<'a>> + 'a;

impl GpuBackend {
    /// One reduction over every chunk of rows: `partial` per chunk (its splits write their
    /// results into `partials`), then `finalize` over all splits when there is more than one.
    #[allow(clippy::too_many_arguments)]
    fn record_reduction<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        shape: BatchNormShape,
        [partial, finalize]: [Kernel; 2],
        chunk_bindings: &ChunkBindings<'a>,
        partials: &'a GpuBuffer,
        per_channel: &[Binding<'a>],
    ) -> Result<()> {
        let mut shared = vec![Binding::whole(Slot::Partials, partials)];
        shared.extend_from_slice(per_channel);
        for (chunk, splits) in &plan.chunks {
            let mut bindings = chunk_bindings(values(chunk, shape.c * shape.s));
            bindings.extend_from_slice(&shared);
            let chunk_params = BatchNormParams {
                rows: chunk.rows as u32,
                split_len: splits.split_len,
                split_base: splits.split_base,
                ..*params
            };
            let groups = [plan.channel_groups, splits.splits, 1];
            self.dispatch(encoder, partial, &chunk_params, &bindings, groups)?;
        }
        if plan.total_splits > 1 {
            self.dispatch(
                encoder,
                finalize,
                params,
                &shared,
                per_channel_groups(shape),
            )?;
        }
        Ok(())
    }

    /// One elementwise pass of `kernel` over every chunk of rows.
    fn record_per_chunk<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        shape: BatchNormShape,
        kernel: Kernel,
        chunk_bindings: &ChunkBindings<'a>,
    ) -> Result<()> {
        for (chunk, _) in &plan.chunks {
            let rows = values(chunk, shape.c * shape.s);
            let chunk_params = BatchNormParams {
                rows: chunk.rows as u32,
                ..*params
            };
            let elements = rows.len();
            let bindings = chunk_bindings(rows);
            self.dispatch_elementwise(encoder, kernel, &chunk_params, &bindings, elements)?;
        }
        Ok(())
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
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let per_channel = [
            Binding::whole(Slot::Stats, &out.stats),
            Binding::whole(Slot::RunningMean, &running.mean),
            Binding::whole(Slot::RunningVar, &running.var),
        ];
        let y = &out.y;
        self.record(|encoder| {
            match mode {
                Mode::Train => self.record_reduction(
                    encoder,
                    &plan,
                    &params,
                    shape,
                    [
                        Kernel::BatchNormStatsPartial,
                        Kernel::BatchNormStatsFinalize,
                    ],
                    &|rows| vec![Binding::rows(Slot::X, x, rows.start, rows.len())],
                    &partials,
                    &per_channel,
                )?,
                Mode::Eval => self.dispatch(
                    encoder,
                    Kernel::BatchNormEvalStats,
                    &params,
                    &per_channel,
                    per_channel_groups(shape),
                )?,
            }
            self.record_per_chunk(
                encoder,
                &plan,
                &params,
                shape,
                Kernel::BatchNormNormalize,
                &|rows| {
                    vec![
                        Binding::rows(Slot::X, x, rows.start, rows.len()),
                        Binding::rows(Slot::Out, y, rows.start, rows.len()),
                        Binding::whole(Slot::Stats, &out.stats),
                        Binding::whole(Slot::Gamma, &affine.gamma),
                        Binding::whole(Slot::Beta, &affine.beta),
                    ]
                },
            )
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
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let per_channel = [
            Binding::whole(Slot::Stats, stats),
            Binding::whole(Slot::Dgamma, &grads.dgamma),
            Binding::whole(Slot::Dbeta, &grads.dbeta),
        ];
        let dx = &grads.dx;
        self.record(|encoder| {
            self.record_reduction(
                encoder,
                &plan,
                &params,
                shape,
                [
                    Kernel::BatchNormBackwardPartial,
                    Kernel::BatchNormBackwardFinalize,
                ],
                &|rows| {
                    vec![
                        Binding::rows(Slot::X, x, rows.start, rows.len()),
                        Binding::rows(Slot::Dy, dy, rows.start, rows.len()),
                    ]
                },
                &partials,
                &per_channel,
            )?;
            self.record_per_chunk(
                encoder,
                &plan,
                &params,
                shape,
                Kernel::BatchNormBackwardDx,
                &|rows| {
                    let mut bindings = vec![
                        Binding::rows(Slot::X, x, rows.start, rows.len()),
                        Binding::rows(Slot::Dy, dy, rows.start, rows.len()),
                        Binding::rows(Slot::Out, dx, rows.start, rows.len()),
                        Binding::whole(Slot::Gamma, gamma),
                    ];
                    bindings.extend_from_slice(&per_channel);
                    bindings
                },
            )
        })
    }
}
