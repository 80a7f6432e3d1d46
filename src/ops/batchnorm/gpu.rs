//! Launches `shaders/batchnorm.wgsl`. A reduction splits each channel's m values over
//! workgroups (`*_partial`), merges the splits (`*_finalize`) and applies the result on the
//! same grid; when one split covers the batch, the partial pass does all three in one dispatch.
//! x is read in vectors of four where its layout allows, and bound in chunks of rows where it
//! exceeds what one binding may hold.

use std::ops::Range;

use super::chunks::{RowChunk, plan_row_chunks};
use super::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    PARTIAL_STRIDE, RunningStats,
};
use crate::backend::Backend;
use crate::gpu::{
    Binding, FINALIZE_WORKGROUP, GpuBackend, GpuBuffer, Kernel, Recording, ReductionWalk, Slot,
    Variant, VectorWidth, WORKGROUP,
};
use crate::ops::activation::Activation;
use crate::{Dtype, Result};

/// How a reduction is laid out on the GPU, per chunk of rows.
struct ReductionPlan {
    chunks: Vec<(RowChunk, ChunkSplits)>,
    total_splits: u32,
    layout: VectorLayout,
    lanes_c: u32,
    workgroup_columns: u32,
    /// The override constants of the kernels that walk x.
    constants: [(&'static str, f64); 2],
}

/// How x is cut into vectors (see the layout comment of `shaders/batchnorm.wgsl`).
#[derive(Clone, Copy)]
struct VectorLayout {
    vector: VectorWidth,
    lanes_are_channels: bool,
    /// Channel groups per sample and vectors of one group per sample.
    groups: usize,
    run_len: usize,
}

impl VectorLayout {
    /// Four neighbouring channels per vector for (N, C) with C a multiple of 4, four positions
    /// of one channel where S is a multiple of 4, else scalars.
    fn of(shape: BatchNormShape) -> Self {
        let four = VectorWidth::Four.lanes();
        if shape.s == 1 && shape.c.is_multiple_of(four) {
            Self {
                vector: VectorWidth::Four,
                lanes_are_channels: true,
                groups: shape.c / four,
                run_len: 1,
            }
        } else if shape.s.is_multiple_of(four) {
            Self {
                vector: VectorWidth::Four,
                lanes_are_channels: false,
                groups: shape.c,
                run_len: shape.s / four,
            }
        } else {
            Self {
                vector: VectorWidth::One,
                lanes_are_channels: false,
                groups: shape.c,
                run_len: shape.s,
            }
        }
    }
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
    pub groups: u32,
    pub run_len: u32,
    pub lanes_are_channels: u32,
    pub lanes_c: u32,
    pub split_len: u32,
    pub split_base: u32,
    pub total_splits: u32,
    pub running_var_factor: f32,
    pub count: f32,
    pub eps: f32,
    pub momentum: f32,
    pub first_value: u32,
    pub dropout_threshold: u32,
    pub key_x: u32,
    pub key_y: u32,
    pub dropout_scale: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

const _: () = assert!(std::mem::size_of::<BatchNormParams>() == 80);

impl GpuBackend {
    fn reduction_plan(
        &self,
        shape: BatchNormShape,
        dtype: Dtype,
        activation: Option<Activation>,
    ) -> Result<ReductionPlan> {
        let tuning = self.tuning();
        let chunks = plan_row_chunks(
            shape,
            dtype,
            self.max_binding(),
            self.limits().min_storage_buffer_offset_alignment as u64,
        )?;
        // Neighbouring threads take neighbouring channel groups where a group is one vector
        // per sample, so their loads are contiguous; otherwise the workgroup's threads share
        // the contiguous runs of as few groups as the adapter class does best with.
        let layout = VectorLayout::of(shape);
        let lanes_c = (layout.groups.next_power_of_two() as u32).min(if layout.run_len == 1 {
            tuning.lanes_c_2d
        } else {
            tuning.lanes_c_spatial
        });
        let row_lanes = WORKGROUP / lanes_c;
        let workgroup_columns = layout.groups.div_ceil(lanes_c as usize) as u32;
        let wanted_splits = if shape.numel() * dtype.size() <= tuning.single_split_bytes {
            1
        } else {
            tuning.target_workgroups.div_ceil(workgroup_columns).max(1)
        };
        let mut split_base = 0;
        let mut planned = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let chunk_len = (chunk.rows * layout.run_len) as u32;
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
            layout,
            lanes_c,
            workgroup_columns,
            constants: [
                (
                    "CONTIGUOUS_WALK",
                    f64::from(u8::from(tuning.reduction_walk == ReductionWalk::Contiguous)),
                ),
                ("ACTIVATION", f64::from(u8::from(activation.is_some()))),
            ],
        })
    }
}

fn plan_params(
    shape: BatchNormShape,
    plan: &ReductionPlan,
    config: BatchNormConfig,
    activation: Option<Activation>,
) -> BatchNormParams {
    let dropout = activation.and_then(|activation| activation.dropout);
    let key = dropout.map_or([0; 2], |mask| mask.key());
    BatchNormParams {
        dropout_threshold: dropout.map_or(0, |mask| mask.threshold()),
        key_x: key[0],
        key_y: key[1],
        dropout_scale: dropout.map_or(1.0, |mask| mask.scale()),
        rows: shape.n as u32,
        channels: shape.c as u32,
        groups: plan.layout.groups as u32,
        run_len: plan.layout.run_len as u32,
        lanes_are_channels: u32::from(plan.layout.lanes_are_channels),
        lanes_c: plan.lanes_c,
        split_len: 0,
        split_base: 0,
        total_splits: plan.total_splits,
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

/// The kernels of one reduction: per split, merging the splits, applying the result, and, where
/// the partial kernel does not do all three itself when one split covers the batch, the kernel
/// that does (with the apply kernel's bindings).
struct ReductionKernels {
    partial: Kernel,
    finalize: Kernel,
    apply: Kernel,
    fused: Option<Kernel>,
}

impl GpuBackend {
    /// One reduction over every chunk of rows: `partial` per chunk (its splits write their
    /// results into `partials`, or, with one split in all, finish and apply them), then
    /// `finalize` over all splits and `apply` per chunk when there is more than one. The
    /// partial kernel binds what both of the others bind, hence its own bindings.
    #[allow(clippy::too_many_arguments)]
    fn record_reduction<'a>(
        &self,
        recording: &mut Recording,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        shape: BatchNormShape,
        kernels: ReductionKernels,
        [partial_bindings, apply_bindings]: [&ChunkBindings<'a>; 2],
        partials: &'a GpuBuffer,
        per_channel: &[Binding<'a>],
    ) -> Result<()> {
        let reduce_bindings = |rows: Range<usize>| {
            let mut bindings = partial_bindings(rows);
            bindings.push(Binding::whole(Slot::Partials, partials));
            bindings
        };
        if let (1, Some(fused)) = (plan.total_splits, kernels.fused) {
            return self.record_per_chunk(recording, plan, params, shape, fused, apply_bindings);
        }
        self.record_per_chunk(
            recording,
            plan,
            params,
            shape,
            kernels.partial,
            &reduce_bindings,
        )?;
        if plan.total_splits > 1 {
            let mut merge_bindings = vec![Binding::whole(Slot::Partials, partials)];
            merge_bindings.extend_from_slice(per_channel);
            self.dispatch(
                recording,
                kernels.finalize,
                params,
                &merge_bindings,
                per_channel_groups(shape),
            )?;
            self.record_per_chunk(
                recording,
                plan,
                params,
                shape,
                kernels.apply,
                apply_bindings,
            )?;
        }
        Ok(())
    }

    /// One dispatch of `kernel` per chunk of rows, on the reduction's grid.
    fn record_per_chunk<'a>(
        &self,
        recording: &mut Recording,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        shape: BatchNormShape,
        kernel: Kernel,
        chunk_bindings: &ChunkBindings<'a>,
    ) -> Result<()> {
        let variant = Variant {
            constants: &plan.constants,
            vector: plan.layout.vector,
        };
        for (chunk, splits) in &plan.chunks {
            let chunk_params = BatchNormParams {
                rows: chunk.rows as u32,
                first_value: values(chunk, shape.c * shape.s).start as u32,
                split_len: splits.split_len,
                split_base: splits.split_base,
                ..*params
            };
            let bindings = chunk_bindings(values(chunk, shape.c * shape.s));
            let groups = [plan.workgroup_columns, splits.splits, 1];
            self.dispatch_specialized(
                recording,
                kernel,
                variant,
                &chunk_params,
                &bindings,
                groups,
            )?;
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
        activation: Option<Activation>,
        out: &mut BatchNormForward<Self>,
    ) -> Result<()> {
        let plan = self.reduction_plan(shape, x.dtype(), activation)?;
        let params = plan_params(shape, &plan, config, activation);
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let running_stats = [
            Binding::whole(Slot::Stats, &out.stats),
            Binding::whole(Slot::RunningMean, &running.mean),
            Binding::whole(Slot::RunningVar, &running.var),
        ];
        let running_only = &running_stats[1..];
        let y = &out.y;
        let normalize_bindings = |rows: Range<usize>| {
            vec![
                Binding::rows(Slot::X, x, rows.start, rows.len()),
                Binding::rows(Slot::Out, y, rows.start, rows.len()),
                Binding::whole(Slot::Stats, &out.stats),
                Binding::whole(Slot::Gamma, &affine.gamma),
                Binding::whole(Slot::Beta, &affine.beta),
            ]
        };
        self.record(|recording| match mode {
            Mode::Train => self.record_reduction(
                recording,
                &plan,
                &params,
                shape,
                ReductionKernels {
                    partial: Kernel::BatchNormStatsPartial,
                    finalize: Kernel::BatchNormStatsFinalize,
                    apply: Kernel::BatchNormNormalize,
                    fused: None,
                },
                [
                    &|rows| {
                        let mut bindings = normalize_bindings(rows);
                        bindings.extend_from_slice(running_only);
                        bindings
                    },
                    &normalize_bindings,
                ],
                &partials,
                &running_stats,
            ),
            Mode::Eval => {
                self.dispatch(
                    recording,
                    Kernel::BatchNormEvalStats,
                    &params,
                    &running_stats,
                    per_channel_groups(shape),
                )?;
                self.record_per_chunk(
                    recording,
                    &plan,
                    &params,
                    shape,
                    Kernel::BatchNormNormalize,
                    &normalize_bindings,
                )
            }
        })
    }

    fn batchnorm_backward_unchecked(
        &self,
        x: &GpuBuffer,
        activated: Option<(&GpuBuffer, Activation)>,
        dy: &GpuBuffer,
        shape: BatchNormShape,
        gamma: &GpuBuffer,
        stats: &GpuBuffer,
        grads: &mut BatchNormGrads<Self>,
    ) -> Result<()> {
        let activation = activated.map(|(_, activation)| activation);
        let plan = self.reduction_plan(shape, x.dtype(), activation)?;
        let params = plan_params(shape, &plan, BatchNormConfig::default(), activation);
        // Without an activation the slot binds x, which the kernels then never read there.
        let activated = activated.map_or(x, |(buffer, _)| buffer);
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let per_channel = [
            Binding::whole(Slot::Stats, stats),
            Binding::whole(Slot::Dgamma, &grads.dgamma),
            Binding::whole(Slot::Dbeta, &grads.dbeta),
        ];
        let dx = &grads.dx;
        let inputs = |rows: &Range<usize>| {
            vec![
                Binding::rows(Slot::X, x, rows.start, rows.len()),
                Binding::rows(Slot::Dy, dy, rows.start, rows.len()),
                Binding::rows(Slot::Activated, activated, rows.start, rows.len()),
            ]
        };
        // The partial sums read the inputs and the statistics only.
        let sums_bindings = |rows: Range<usize>| {
            let mut bindings = inputs(&rows);
            bindings.push(Binding::whole(Slot::Stats, stats));
            bindings
        };
        let dx_bindings = |rows: Range<usize>| {
            let mut bindings = inputs(&rows);
            bindings.extend([
                Binding::rows(Slot::Out, dx, rows.start, rows.len()),
                Binding::whole(Slot::Gamma, gamma),
            ]);
            bindings.extend_from_slice(&per_channel);
            bindings
        };
        self.record(|recording| {
            self.record_reduction(
                recording,
                &plan,
                &params,
                shape,
                ReductionKernels {
                    partial: Kernel::BatchNormBackwardPartial,
                    finalize: Kernel::BatchNormBackwardFinalize,
                    apply: Kernel::BatchNormBackwardDx,
                    fused: Some(Kernel::BatchNormBackwardFused),
                },
                [&sums_bindings, &dx_bindings],
                &partials,
                &per_channel,
            )
        })
    }
}
