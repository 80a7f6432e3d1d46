//! How a BatchNorm reduction is laid out on the GPU: x cut into vectors, channel groups side by
//! side in a workgroup, each chunk of rows split over workgroups (and over ghost batches, the
//! grid's third dimension), and the uniform parameters and pipeline constants that tell
//! `shaders/batchnorm.wgsl` so. The launcher is `gpu.rs`.

use super::{BatchNormConfig, BatchNormShape};
use crate::gpu::{GpuBackend, ReductionWalk, VectorWidth, WORKGROUP};
use crate::ops::activation::Activation;
use crate::ops::chunks::{RowBytes, RowChunk, plan_chunks};
use crate::{Dtype, Result};

/// How a reduction is laid out on the GPU, per chunk of rows.
pub(super) struct ReductionPlan {
    pub(super) chunks: Vec<(RowChunk, ChunkSplits)>,
    pub(super) total_splits: u32,
    pub(super) layout: VectorLayout,
    pub(super) lanes_c: u32,
    pub(super) workgroup_columns: u32,
    /// The override constants of the kernels that walk x.
    pub(super) constants: [(&'static str, f64); 3],
}

/// How x is cut into vectors (see the layout comment of `shaders/batchnorm.wgsl`).
#[derive(Clone, Copy)]
pub(super) struct VectorLayout {
    pub(super) vector: VectorWidth,
    pub(super) lanes_are_channels: bool,
    /// Channel groups per sample and vectors of one group per sample.
    pub(super) groups: usize,
    pub(super) run_len: usize,
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

/// How one chunk of rows is dispatched: its ghost batches (one, possibly partial, without
/// them) of `rows` rows each, each cut into `splits` splits of `split_len` vectors.
pub(super) struct ChunkSplits {
    pub(super) rows: u32,
    pub(super) ghosts: u32,
    pub(super) first_ghost: u32,
    pub(super) split_len: u32,
    pub(super) splits: u32,
    pub(super) split_base: u32,
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
    pub ghost_batches: u32,
    pub first_ghost: u32,
}

const _: () = assert!(std::mem::size_of::<BatchNormParams>() == 80);

/// Splits x along N so that each chunk's binding stays within `max_binding` bytes and starts at
/// a multiple of `offset_alignment` bytes, and holds whole ghost batches where there are
/// several; refuses, naming the limit, when not even one aligned group of samples fits.
pub fn plan_row_chunks(
    shape: BatchNormShape,
    dtype: Dtype,
    max_binding: u64,
    offset_alignment: u64,
) -> Result<Vec<RowChunk>> {
    let unit_rows = if shape.ghost_batches > 1 {
        shape.ghost_rows()
    } else {
        1
    };
    let unit_bytes = (unit_rows * shape.c * shape.s * dtype.size()) as u64;
    let units = plan_chunks(
        &format!(
            "BatchNorm input of shape (N={}, C={}, S={})",
            shape.n, shape.c, shape.s
        ),
        shape.n / unit_rows,
        RowBytes {
            largest: unit_bytes,
            viewed: &[unit_bytes],
        },
        max_binding,
        offset_alignment,
    )?;
    Ok(units
        .into_iter()
        .map(|chunk| RowChunk {
            first_row: chunk.first_row * unit_rows,
            rows: chunk.rows * unit_rows,
        })
        .collect())
}

impl GpuBackend {
    pub(super) fn reduction_plan(
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
        let ghost_batches = shape.ghost_batches as u32;
        let wanted_splits = if shape.numel() * dtype.size() <= tuning.single_split_bytes {
            1
        } else {
            (tuning
                .target_workgroups
                .div_ceil(workgroup_columns * ghost_batches))
            .max(1)
        };
        // Small enough for one split, a few ghost batches are finished one after another by
        // the same workgroups, as the batch would be: no partials, and one dispatch each way.
        let looped = (2..=tuning.looped_ghost_batches).contains(&shape.ghost_batches);
        if looped && wanted_splits == 1 && chunks.len() == 1 {
            let rows = shape.ghost_rows();
            let ghost = ChunkSplits {
                rows: rows as u32,
                ghosts: 1,
                first_ghost: 0,
                split_len: (rows * layout.run_len) as u32,
                splits: 1,
                split_base: 0,
            };
            return Ok(ReductionPlan {
                chunks: vec![(chunks[0], ghost)],
                total_splits: 1,
                layout,
                lanes_c,
                workgroup_columns,
                constants: Self::reduction_constants(activation, tuning.reduction_walk, true),
            });
        }
        // Ghost batches have their slots of `partials` by index; without them, each chunk's
        // splits follow the last chunk's.
        let mut split_base = 0;
        let mut planned = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let (rows, ghosts) = match ghost_batches {
                1 => (chunk.rows, 1),
                _ => (shape.ghost_rows(), chunk.rows / shape.ghost_rows()),
            };
            let ghost_len = (rows * layout.run_len) as u32;
            let useful_splits = ghost_len.div_ceil(row_lanes * tuning.min_elements_per_thread);
            let split_len = ghost_len.div_ceil(wanted_splits.min(useful_splits).max(1));
            let splits = ghost_len.div_ceil(split_len);
            planned.push((
                chunk,
                ChunkSplits {
                    rows: rows as u32,
                    ghosts: ghosts as u32,
                    first_ghost: (chunk.first_row / shape.ghost_rows()) as u32,
                    split_len,
                    splits,
                    split_base,
                },
            ));
            if ghost_batches == 1 {
                split_base += splits;
            }
        }
        let total_splits = match ghost_batches {
            1 => split_base,
            // Every ghost batch has as many rows, hence as many splits.
            _ => planned[0].1.splits * ghost_batches,
        };
        Ok(ReductionPlan {
            chunks: planned,
            total_splits,
            layout,
            lanes_c,
            workgroup_columns,
            constants: Self::reduction_constants(activation, tuning.reduction_walk, false),
        })
    }

    /// The override constants of the kernels that walk x.
    fn reduction_constants(
        activation: Option<Activation>,
        walk: ReductionWalk,
        ghost_loop: bool,
    ) -> [(&'static str, f64); 3] {
        [
            (
                "CONTIGUOUS_WALK",
                f64::from(u8::from(walk == ReductionWalk::Contiguous)),
            ),
            ("ACTIVATION", f64::from(u8::from(activation.is_some()))),
            ("GHOST_LOOP", f64::from(u8::from(ghost_loop))),
        ]
    }
}

pub(super) fn plan_params(
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
        ghost_batches: shape.ghost_batches as u32,
        first_ghost: 0,
        count: shape.per_channel() as f32,
        eps: config.eps(),
        momentum: config.momentum(),
        running_var_factor: config.running_var_factor(shape.per_channel()),
        ..Default::default()
    }
}
