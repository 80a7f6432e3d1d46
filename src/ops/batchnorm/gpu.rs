//! Launches `shaders/batchnorm.wgsl`. A reduction splits each channel's m values over
//! workgroups (`*_partial`), merges the splits (`*_finalize`) and applies the result on the
//! same grid; when one split covers the batch, the partial pass does all three in one dispatch.
//! x is read in vectors of four where its layout allows, and bound in chunks of rows where it
//! exceeds what one binding may hold. Ghost batches are workgroups of the grid's third
//! dimension (or runs of them finished one after another by one workgroup), reading their rows
//! where they lie: a reshape of x, not a copy. GroupNorm records its view of x with the same
//! `record_forward` and `record_backward`, on a plan and grid of its own.

use std::ops::Range;

use super::plan::{BatchNormParams, ReductionPlan, plan_params};
use super::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape,
    BatchSums, Mode, PARTIAL_STRIDE, RunningStats,
};
use crate::Result;
use crate::backend::Backend;
use crate::gpu::{
    Binding, FINALIZE_WORKGROUP, GpuBackend, GpuBuffer, Kernel, Recording, Slot, Variant,
};
use crate::ops::activation::Activation;
use crate::ops::chunks::RowChunk;

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
/// that does, with its bindings.
struct ReductionKernels<'k, 'a> {
    partial: Kernel,
    finalize: Kernel,
    apply: Kernel,
    fused: Option<(Kernel, &'k ChunkBindings<'a>)>,
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
        kernels: ReductionKernels<'_, 'a>,
        [partial_bindings, apply_bindings]: [&ChunkBindings<'a>; 2],
        partials: &'a GpuBuffer,
        per_channel: &[Binding<'a>],
    ) -> Result<()> {
        let reduce_bindings = |rows: Range<usize>| {
            let mut bindings = partial_bindings(rows);
            bindings.push(Binding::whole(Slot::Partials, partials));
            bindings
        };
        if let (1, Some((fused, fused_bindings))) = (plan.total_splits, kernels.fused) {
            return self.record_per_chunk(recording, plan, params, shape, fused, fused_bindings);
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
                rows: splits.rows,
                // Wrapping, as the kernels' u32 element indices and the CPU twins' do.
                first_value: (params.first_value)
                    .wrapping_add(values(chunk, shape.c * shape.s).start as u32),
                split_len: splits.split_len,
                split_base: splits.split_base,
                first_ghost: splits.first_ghost,
                bound_ghosts: splits.ghosts,
                ghost_loop: splits.ghost_loop,
                ..*params
            };
            let bindings = chunk_bindings(values(chunk, shape.c * shape.s));
            let groups = splits.grid(plan.workgroup_columns);
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

/// The buffers a forward pass binds. GroupNorm's view binds placeholders for γ, β and the
/// running statistics, which its kernels neither read nor write.
#[derive(Clone, Copy)]
pub(crate) struct ForwardBuffers<'a> {
    pub(crate) x: &'a GpuBuffer,
    pub(crate) gamma: &'a GpuBuffer,
    pub(crate) beta: &'a GpuBuffer,
    pub(crate) running_mean: &'a GpuBuffer,
    pub(crate) running_var: &'a GpuBuffer,
    pub(crate) y: &'a GpuBuffer,
    pub(crate) stats: &'a GpuBuffer,
}

/// The buffers a backward pass binds: `activated` is the fused activation's output (x where
/// there is none; the kernels then never read it). GroupNorm's view binds placeholders for γ,
/// dγ and dβ.
#[derive(Clone, Copy)]
pub(crate) struct BackwardBuffers<'a> {
    pub(crate) x: &'a GpuBuffer,
    pub(crate) activated: &'a GpuBuffer,
    pub(crate) dy: &'a GpuBuffer,
    pub(crate) gamma: &'a GpuBuffer,
    pub(crate) stats: &'a GpuBuffer,
    pub(crate) dx: &'a GpuBuffer,
    pub(crate) dgamma: &'a GpuBuffer,
    pub(crate) dbeta: &'a GpuBuffer,
}

impl GpuBackend {
    /// Records a forward pass over `shape` as `plan` lays it out, with `params` from
    /// `plan_params` and eps (and, for BatchNorm in training, the running update) set.
    pub(crate) fn record_forward(
        &self,
        mode: Mode,
        shape: BatchNormShape,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        buffers: ForwardBuffers<'_>,
    ) -> Result<()> {
        let stats = buffers.stats;
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let running_stats = [
            Binding::whole(Slot::Stats, stats),
            Binding::whole(Slot::RunningMean, buffers.running_mean),
            Binding::whole(Slot::RunningVar, buffers.running_var),
        ];
        let running_only = &running_stats[1..];
        let normalize_bindings = |rows| normalize_bindings(buffers, rows);
        self.record(|recording| match mode {
            Mode::Train => self.record_reduction(
                recording,
                plan,
                params,
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
                    params,
                    &running_stats,
                    per_channel_groups(shape),
                )?;
                self.record_per_chunk(
                    recording,
                    plan,
                    params,
                    shape,
                    Kernel::BatchNormNormalize,
                    &normalize_bindings,
                )
            }
        })
    }

    /// Records the normalization of x with the finished statistics in `buffers.stats`.
    pub(crate) fn record_apply(
        &self,
        shape: BatchNormShape,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        buffers: ForwardBuffers<'_>,
    ) -> Result<()> {
        let bindings = |rows| normalize_bindings(buffers, rows);
        self.record(|recording| {
            let kernel = Kernel::BatchNormNormalize;
            self.record_per_chunk(recording, plan, params, shape, kernel, &bindings)
        })
    }

    /// Records a backward pass over `shape` as `plan` lays it out.
    pub(crate) fn record_backward(
        &self,
        shape: BatchNormShape,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        buffers: BackwardBuffers<'_>,
    ) -> Result<()> {
        let partials = self.scratch(plan.total_splits as usize * shape.c * PARTIAL_STRIDE)?;
        let stats = buffers.stats;
        let per_channel = [
            Binding::whole(Slot::Stats, stats),
            Binding::whole(Slot::Dgamma, buffers.dgamma),
            Binding::whole(Slot::Dbeta, buffers.dbeta),
        ];
        let partials = &partials;
        // The partial sums read the inputs and the statistics only.
        let sums_bindings = |rows: Range<usize>| {
            let mut bindings = backward_inputs(buffers, &rows);
            bindings.push(Binding::whole(Slot::Stats, stats));
            bindings
        };
        // dx reads each ghost batch's dβ and dγ where the finalize pass left them, in
        // `partials`; with one split, the fused kernel writes dβ and dγ itself.
        let dx_bindings = |rows| dx_bindings(buffers, partials, rows);
        let fused_bindings = |rows: Range<usize>| {
            let mut bindings = dx_inputs(buffers, &rows);
            bindings.extend_from_slice(&per_channel[1..]);
            bindings
        };
        self.record(|recording| {
            self.record_reduction(
                recording,
                plan,
                params,
                shape,
                ReductionKernels {
                    partial: Kernel::BatchNormBackwardPartial,
                    finalize: Kernel::BatchNormBackwardFinalize,
                    apply: Kernel::BatchNormBackwardDx,
                    fused: Some((Kernel::BatchNormBackwardFused, &fused_bindings)),
                },
                [&sums_bindings, &dx_bindings],
                partials,
                &per_channel,
            )
        })
    }

    /// Records dx from the per-channel sums in `sums` (dβ and dγ in the first slot, the
    /// layout `backward_finalize` leaves), over the count in `params`.
    pub(crate) fn record_backward_dx(
        &self,
        shape: BatchNormShape,
        plan: &ReductionPlan,
        params: &BatchNormParams,
        buffers: BackwardBuffers<'_>,
        sums: &GpuBuffer,
    ) -> Result<()> {
        let bindings = |rows| dx_bindings(buffers, sums, rows);
        self.record(|recording| {
            let kernel = Kernel::BatchNormBackwardDx;
            self.record_per_chunk(recording, plan, params, shape, kernel, &bindings)
        })
    }
}

/// What the normalization binds for the rows spanning `rows` values.
fn normalize_bindings(buffers: ForwardBuffers<'_>, rows: Range<usize>) -> Vec<Binding<'_>> {
    vec![
        Binding::rows(Slot::X, buffers.x, rows.start, rows.len()),
        Binding::rows(Slot::Out, buffers.y, rows.start, rows.len()),
        Binding::whole(Slot::Stats, buffers.stats),
        Binding::whole(Slot::Gamma, buffers.gamma),
        Binding::whole(Slot::Beta, buffers.beta),
    ]
}

/// What every backward kernel reads of the rows spanning `rows`.
fn backward_inputs<'a>(buffers: BackwardBuffers<'a>, rows: &Range<usize>) -> Vec<Binding<'a>> {
    vec![
        Binding::rows(Slot::X, buffers.x, rows.start, rows.len()),
        Binding::rows(Slot::Dy, buffers.dy, rows.start, rows.len()),
        Binding::rows(Slot::Activated, buffers.activated, rows.start, rows.len()),
    ]
}

/// What a kernel writing dx binds, but the per-channel sums.
fn dx_inputs<'a>(buffers: BackwardBuffers<'a>, rows: &Range<usize>) -> Vec<Binding<'a>> {
    let mut bindings = backward_inputs(buffers, rows);
    bindings.extend([
        Binding::rows(Slot::Out, buffers.dx, rows.start, rows.len()),
        Binding::whole(Slot::Gamma, buffers.gamma),
        Binding::whole(Slot::Stats, buffers.stats),
    ]);
    bindings
}

/// What `backward_dx` binds for the rows spanning `rows` values, reading the sums from
/// `partials`.
fn dx_bindings<'a>(
    buffers: BackwardBuffers<'a>,
    partials: &'a GpuBuffer,
    rows: Range<usize>,
) -> Vec<Binding<'a>> {
    let mut bindings = dx_inputs(buffers, &rows);
    bindings.push(Binding::whole(Slot::Partials, partials));
    bindings
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
        let shape = match mode {
            Mode::Train => shape,
            Mode::Eval => shape.with_ghost_batches(1),
        };
        let plan = self.reduction_plan(shape, x.dtype(), activation)?;
        let params = BatchNormParams {
            eps: config.eps(),
            momentum: config.momentum(),
            running_var_factor: config.running_var_factor(shape.per_channel()),
            ..plan_params(shape, &plan, activation)
        };
        let buffers = ForwardBuffers {
            x,
            gamma: &affine.gamma,
            beta: &affine.beta,
            running_mean: &running.mean,
            running_var: &running.var,
            y: &out.y,
            stats: &out.stats,
        };
        self.record_forward(mode, shape, &plan, &params, buffers)
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
        let params = plan_params(shape, &plan, activation);
        let buffers = BackwardBuffers {
            x,
            activated: activated.map_or(x, |(buffer, _)| buffer),
            dy,
            gamma,
            stats,
            dx: &grads.dx,
            dgamma: &grads.dgamma,
            dbeta: &grads.dbeta,
        };
        self.record_backward(shape, &plan, &params, buffers)
    }

    fn batchnorm_apply_unchecked(
        &self,
        x: &GpuBuffer,
        shape: BatchNormShape,
        affine: &Affine<Self>,
        stats: &GpuBuffer,
        activation: Option<Activation>,
        y: &mut GpuBuffer,
    ) -> Result<()> {
        let plan = self.reduction_plan(shape, x.dtype(), activation)?;
        let params = plan_params(shape, &plan, activation);
        // The running statistics are neither read nor written: γ stands in for them.
        let buffers = ForwardBuffers {
            x,
            gamma: &affine.gamma,
            beta: &affine.beta,
            running_mean: &affine.gamma,
            running_var: &affine.gamma,
            y,
            stats,
        };
        self.record_apply(shape, &plan, &params, buffers)
    }

    fn batchnorm_backward_input_unchecked(
        &self,
        x: &GpuBuffer,
        activated: Option<(&GpuBuffer, Activation)>,
        dy: &GpuBuffer,
        shape: BatchNormShape,
        (gamma, stats): (&GpuBuffer, &GpuBuffer),
        sums: BatchSums<'_>,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let activation = activated.map(|(_, activation)| activation);
        let plan = self.reduction_plan(shape, x.dtype(), activation)?;
        let params = BatchNormParams {
            count: sums.count as f32,
            ..plan_params(shape, &plan, activation)
        };
        // `backward_dx` reads dβ and dγ from the first slot of `partials`, where
        // `backward_finalize` would have left them.
        let mut slots = vec![0.0; shape.c * PARTIAL_STRIDE];
        for (c, slot) in slots.chunks_exact_mut(PARTIAL_STRIDE).enumerate() {
            slot[2] = sums.dbeta[c];
            slot[3] = sums.dgamma[c];
        }
        let partials = self.upload(&slots)?;
        let buffers = BackwardBuffers {
            x,
            activated: activated.map_or(x, |(buffer, _)| buffer),
            dy,
            gamma,
            stats,
            dx,
            dgamma: gamma,
            dbeta: gamma,
        };
        self.record_backward_dx(shape, &plan, &params, buffers, &partials)
    }
}
