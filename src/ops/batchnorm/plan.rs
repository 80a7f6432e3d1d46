//! How a reduction of `shaders/batchnorm.wgsl` is laid out on the GPU: x cut into vectors,
//! channel groups side by side in a workgroup, each chunk of rows split over workgroups (and over
//! ghost batches, the grid's third dimension, or runs of ghost batches finished one after another
//! by one workgroup), and the uniform parameters and pipeline constants that tell the shader so.
//! BatchNorm's grid is chosen here; GroupNorm's view chooses its own from the same pieces
//! (`src/ops/groupnorm/gpu.rs`). The launcher is `gpu.rs`.

use super::BatchNormShape;
use crate::gpu::{GpuBackend, ReductionWalk, VectorWidth, WORKGROUP};
use crate::ops::activation::Activation;
use crate::ops::chunks::{RowBytes, RowChunk, plan_chunks};
use crate::{Dtype, Result};

/// How a reduction is laid out on the GPU, per chunk of rows.
pub(crate) struct ReductionPlan {
    pub(super) chunks: Vec<(RowChunk, ChunkSplits)>,
    pub(super) total_splits: u32,
    pub(super) layout: VectorLayout,
    pub(super) lanes_c: u32,
    pub(super) workgroup_columns: u32,
    /// The override constants of the kernels that walk x.
    pub(super) constants: [(&'static str, f64); 4],
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

/// How one chunk of rows is dispatched: its `ghosts` ghost batches (one, possibly partial,
/// without them) of `rows` rows each, each workgroup finishing `ghost_loop` of them one after
/// another (1 unless one split covers each), each cut into `splits` splits of `split_len`
/// vectors.
pub(super) struct ChunkSplits {
    pub(super) rows: u32,
    pub(super) ghosts: u32,
    pub(super) ghost_loop: u32,
    pub(super) first_ghost: u32,
    pub(super) split_len: u32,
    pub(super) splits: u32,
    pub(super) split_base: u32,
}

impl ChunkSplits {
    /// The grid of one dispatch over the chunk.
    pub(super) fn grid(&self, workgroup_columns: u32) -> [u32; 3] {
        [
            workgroup_columns,
            self.splits,
            self.ghosts.div_ceil(self.ghost_loop),
        ]
    }
}

/// Which normalization a reduction's kernels compute: BatchNorm (with a fused activation, or
/// none), or GroupNorm's view of x (`GROUP_NORM` in `shaders/batchnorm.wgsl`).
#[derive(Clone, Copy)]
pub(crate) enum Normalization {
    BatchNorm(Option<Activation>),
    GroupNorm,
}

/// A reduction over a shape before its grid is chosen: the chunks of rows, how x is cut into
/// vectors, the channel groups a workgroup takes side by side, and the splits per ghost batch
/// the adapter class wants.
pub(crate) struct Reduction {
    chunks: Vec<RowChunk>,
    layout: VectorLayout,
    lanes_c: u32,
    workgroup_columns: u32,
    /// 1 where one split per ghost batch (or per batch) is enough.
    pub(crate) wanted_splits: u32,
    walk: ReductionWalk,
    min_elements_per_thread: u32,
}

impl Reduction {
    /// Workgroups side by side over the channel groups.
    pub(crate) fn workgroup_columns(&self) -> u32 {
        self.workgroup_columns
    }

    /// Ghost batches in the largest chunk of rows.
    pub(crate) fn largest_chunk_ghosts(&self, shape: BatchNormShape) -> usize {
        (self.chunks.iter())
            .map(|chunk| chunk.rows / shape.ghost_rows())
            .max()
            .unwrap_or(0)
    }

    /// One split per ghost batch (or per batch), each workgroup finishing `ghost_loop` ghost
    /// batches of its chunk one after another: no partials, one dispatch each way.
    pub(crate) fn looped(
        self,
        shape: BatchNormShape,
        ghost_loop: usize,
        normalization: Normalization,
    ) -> ReductionPlan {
        let rows = shape.ghost_rows();
        let chunks = (self.chunks.iter())
            .map(|&chunk| {
                let splits = ChunkSplits {
                    rows: rows as u32,
                    ghosts: (chunk.rows / rows) as u32,
                    ghost_loop: ghost_loop as u32,
                    first_ghost: (chunk.first_row / rows) as u32,
                    split_len: (rows * self.layout.run_len) as u32,
                    splits: 1,
                    split_base: 0,
                };
                (chunk, splits)
            })
            .collect();
        self.plan(chunks, 1, normalization, ghost_loop > 1)
    }

    /// Each ghost batch (or the batch) cut into as many splits as the adapter class wants and
    /// the rows fill, each split a workgroup, the ghost batches the grid's third dimension; the
    /// splits' partial results are merged by the finalize kernels.
    pub(crate) fn split(
        self,
        shape: BatchNormShape,
        normalization: Normalization,
    ) -> ReductionPlan {
        let row_lanes = WORKGROUP / self.lanes_c;
        let ghost_batches = shape.ghost_batches as u32;
        // Ghost batches have their slots of `partials` by index; without them, each chunk's
        // splits follow the last chunk's.
        let mut split_base = 0;
        let mut planned = Vec::with_capacity(self.chunks.len());
        for &chunk in &self.chunks {
            let (rows, ghosts) = match ghost_batches {
                1 => (chunk.rows, 1),
                _ => (shape.ghost_rows(), chunk.rows / shape.ghost_rows()),
            };
            let ghost_len = (rows * self.layout.run_len) as u32;
            let useful_splits = ghost_len.div_ceil(row_lanes * self.min_elements_per_thread);
            let split_len = ghost_len.div_ceil(self.wanted_splits.min(useful_splits).max(1));
            let splits = ghost_len.div_ceil(split_len);
            planned.push((
                chunk,
                ChunkSplits {
                    rows: rows as u32,
                    ghosts: ghosts as u32,
                    ghost_loop: 1,
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
        self.plan(planned, total_splits, normalization, false)
    }

    fn plan(
        self,
        chunks: Vec<(RowChunk, ChunkSplits)>,
        total_splits: u32,
        normalization: Normalization,
        ghost_loop: bool,
    ) -> ReductionPlan {
        let (activation, group_norm) = match normalization {
            Normalization::BatchNorm(activation) => (activation.is_some(), false),
            Normalization::GroupNorm => (false, true),
        };
        let flag = |set: bool| f64::from(u8::from(set));
        ReductionPlan {
            chunks,
            total_splits,
            layout: self.layout,
            lanes_c: self.lanes_c,
            workgroup_columns: self.workgroup_columns,
            constants: [
                (
                    "CONTIGUOUS_WALK",
                    flag(self.walk == ReductionWalk::Contiguous),
                ),
                ("ACTIVATION", flag(activation)),
                ("GHOST_LOOP", flag(ghost_loop)),
                ("GROUP_NORM", flag(group_norm)),
            ],
        }
    }
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
    pub bound_ghosts: u32,
    pub ghost_loop: u32,
}

const _: () = assert!(std::mem::size_of::<BatchNormParams>() == 88);

/// Splits x along N so that each chunk's binding stays within `max_binding` bytes and starts at
/// a multiple of `offset_alignment` bytes, and holds whole ghost batches where there are
/// several; refuses, naming the limit, when not even one aligned group of samples fits.
pub fn plan_row_chunks(
    shape: BatchNormShape,
    dtype: Dtype,
    max_binding: u64,
    offset_alignment: u64,
) -> Result<Vec<RowChunk>> {
    row_chunks(
        &batchnorm_input(shape),
        shape,
        dtype,
        max_binding,
        offset_alignment,
    )
}

/// BatchNorm's input as a refusal names it.
fn batchnorm_input(shape: BatchNormShape) -> String {
    format!(
        "BatchNorm input of shape (N={}, C={}, S={})",
        shape.n, shape.c, shape.s
    )
}

/// `plan_row_chunks` with `what` naming the input in a refusal.
fn row_chunks(
    what: &str,
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
        what,
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
    /// The reduction over `shape` before its grid is chosen; `what` names the input where its
    /// rows cannot be bound.
    pub(crate) fn reduction(
        &self,
        what: &str,
        shape: BatchNormShape,
        dtype: Dtype,
    ) -> Result<Reduction> {
        let tuning = self.tuning();
        let chunks = row_chunks(
            what,
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
        let workgroup_columns = layout.groups.div_ceil(lanes_c as usize) as u32;
        let wanted_splits = if shape.numel() * dtype.size() <= tuning.single_split_bytes {
            1
        } else {
            (tuning
                .target_workgroups
                .div_ceil(workgroup_columns * shape.ghost_batches as u32))
            .max(1)
        };
        Ok(Reduction {
            chunks,
            layout,
            lanes_c,
            workgroup_columns,
            wanted_splits,
            walk: tuning.reduction_walk,
            min_elements_per_thread: tuning.min_elements_per_thread,
        })
    }

    /// BatchNorm's grid: splits over the batch or each ghost batch; a few ghost batches that
    /// fit one split are finished one after another by the same workgroups, as the batch would
    /// be, so that one workgroup sees every ghost batch's statistics for the running update.
    pub(super) fn reduction_plan(
        &self,
        shape: BatchNormShape,
        dtype: Dtype,
        activation: Option<Activation>,
    ) -> Result<ReductionPlan> {
        let reduction = self.reduction(&batchnorm_input(shape), shape, dtype)?;
        let normalization = Normalization::BatchNorm(activation);
        let looped = (2..=self.tuning().looped_ghost_batches).contains(&shape.ghost_batches);
        if looped && reduction.wanted_splits == 1 && reduction.chunks.len() == 1 {
            return Ok(reduction.looped(shape, shape.ghost_batches, normalization));
        }
        Ok(reduction.split(shape, normalization))
    }
}

/// The parameters every dispatch of `plan` shares (each chunk's dispatch sets its rows, splits
/// and ghost batches); eps and the running-statistics update are the caller's to set.
pub(crate) fn plan_params(
    shape: BatchNormShape,
    plan: &ReductionPlan,
    activation: Option<Activation>,
) -> BatchNormParams {
    let dropout = activation.and_then(|activation| activation.dropout);
    let key = dropout.map_or([0; 2], |mask| mask.key());
    BatchNormParams {
        dropout_threshold: dropout.map_or(0, |mask| mask.threshold()),
        key_x: key[0],
        key_y: key[1],
        dropout_scale: dropout.map_or(1.0, |mask| mask.scale()),
        first_value: dropout.map_or(0, |mask| mask.first_element()),
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
        ..Default::default()
    }
}
