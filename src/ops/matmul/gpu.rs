//! Launches `shaders/matmul.wgsl`: one of three kernels that sum in the same order, chosen by
//! the backend's schedule and the operands' layouts, with `matmul_tiled` splitting a long k
//! over more workgroups where a product has too few blocks to fill the GPU.

use super::{MatmulOps, MatrixLayout, Store};
use crate::gpu::{
    Binding, GpuBackend, GpuBuffer, Kernel, MatmulSchedule, Slot, Variant, WORKGROUP,
};
use crate::{Backend, Result};

/// Uniform parameters of `shaders/matmul.wgsl` (`struct MatmulParams` there).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_row_stride: u32,
    pub a_col_stride: u32,
    pub b_row_stride: u32,
    pub b_col_stride: u32,
    /// `MATMUL_BIAS` and `MATMUL_ROW_SUMS` (`FLAG_*` in WGSL).
    pub flags: u32,
    /// k values per split of `matmul_tiled` (a multiple of `MATMUL_K_STEP`; k when unsplit).
    pub k_split: u32,
    /// Splits of k (1: none).
    pub splits: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// `MatmulParams::flags`: add the bias row.
pub const MATMUL_BIAS: u32 = 1;
/// `MatmulParams::flags`: write the row sums of a.
pub const MATMUL_ROW_SUMS: u32 = 2;
/// The pipeline constant that makes a product add to what the output (and the row sums) hold.
pub const MATMUL_ACCUMULATE: &str = "ACCUMULATE";

const _: () = assert!(std::mem::size_of::<MatmulParams>() == 48);

/// Outputs per thread along each dimension (`TILE` in WGSL), threads per workgroup side
/// (`SIDE`), and the k values staged per round by the tiled kernel (`K_STEP`).
pub const MATMUL_TILE: usize = 4;
/// Threads per side of a `matmul_tiled` workgroup.
pub const MATMUL_SIDE: usize = 8;
/// k values staged per round of `matmul_tiled`.
pub const MATMUL_K_STEP: usize = 16;
/// Rows and columns of c per thread of `matmul_vec4` (`V_ROWS`, `V_COLS`).
pub const MATMUL_VEC4_BLOCK: usize = 16;

/// Which dimension of each operand `matmul_vec4` loads as vec4, when the layouts allow it:
/// one contiguous dimension per operand, 4-aligned strides, k a multiple of 4, and rows (or
/// columns) a multiple of 4 where they are the contiguous dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vec4Layout {
    a_k_contiguous: bool,
    b_k_contiguous: bool,
}

impl Vec4Layout {
    fn of(a: MatrixLayout, b: MatrixLayout) -> Option<Self> {
        let k = a.cols;
        if k == 0 || !k.is_multiple_of(4) {
            return None;
        }
        let a_k_contiguous = if a.col_stride == 1 && a.row_stride.is_multiple_of(4) {
            true
        } else if a.row_stride == 1 && a.col_stride.is_multiple_of(4) && a.rows.is_multiple_of(4) {
            false
        } else {
            return None;
        };
        let b_k_contiguous = if b.row_stride == 1 && b.col_stride.is_multiple_of(4) {
            true
        } else if b.col_stride == 1 && b.row_stride.is_multiple_of(4) && b.cols.is_multiple_of(4) {
            false
        } else {
            return None;
        };
        Some(Self {
            a_k_contiguous,
            b_k_contiguous,
        })
    }
}

/// How `matmul` runs for a pair of layouts under the current schedule.
enum MatmulPlan {
    Vec4(Vec4Layout),
    /// `matmul` or `matmul_tiled`: TILE×TILE blocks, SIDE×SIDE threads per workgroup.
    Blocks(Kernel),
}

impl GpuBackend {
    fn matmul_plan(&self, a: MatrixLayout, b: MatrixLayout) -> MatmulPlan {
        match (self.matmul_schedule(), Vec4Layout::of(a, b)) {
            (MatmulSchedule::Registers, Some(vec4)) => MatmulPlan::Vec4(vec4),
            (MatmulSchedule::Registers, None) => MatmulPlan::Blocks(Kernel::Matmul),
            (MatmulSchedule::WorkgroupTiles, _) => MatmulPlan::Blocks(Kernel::MatmulTiled),
        }
    }

    /// The kernel `matmul` runs for these layouts under the current schedule: the register
    /// schedule loads vec4s where the layouts allow it.
    pub fn matmul_kernel(&self, a: MatrixLayout, b: MatrixLayout) -> Kernel {
        match self.matmul_plan(a, b) {
            MatmulPlan::Vec4(_) => Kernel::MatmulVec4,
            MatmulPlan::Blocks(kernel) => kernel,
        }
    }

    /// How many ranges of k `matmul_tiled` splits a product of these layouts into (1: none),
    /// and the k values in each. A product of few 32×32 blocks with a long k (a batch-32
    /// Linear forward: 4 blocks, k = 784) would leave a large GPU idle while a few workgroups
    /// walk all of k; split, its blocks fill about `Tuning::target_workgroups` workgroups, at
    /// the cost of a second dispatch that adds the splits up, in order. Split products are
    /// deterministic but sum k in another order than the unsplit kernels.
    #[doc(hidden)]
    pub fn matmul_splits(&self, a: MatrixLayout, b: MatrixLayout) -> (usize, usize) {
        let k = a.cols;
        if self.matmul_kernel(a, b) != Kernel::MatmulTiled {
            return (1, k);
        }
        let per_group = MATMUL_TILE * MATMUL_SIDE;
        let blocks = a.rows.div_ceil(per_group) * b.cols.div_ceil(per_group);
        let target = self.tuning().target_workgroups as usize;
        let wanted = (target / blocks).min(k / MIN_K_PER_SPLIT);
        if wanted < MIN_SPLITS {
            return (1, k);
        }
        let k_split = k.div_ceil(wanted).next_multiple_of(MATMUL_K_STEP);
        (k.div_ceil(k_split), k_split)
    }
}

/// The `MATMUL_ACCUMULATE` constant of a product that does what `store` says.
fn accumulate(store: Store) -> (&'static str, f64) {
    (MATMUL_ACCUMULATE, f64::from(u8::from(store == Store::Add)))
}

/// k values a split of `matmul_tiled` sums at least: below it a split's partial block costs
/// more to store and add up than its share of k.
const MIN_K_PER_SPLIT: usize = 64;

/// Splits worth the second dispatch: fewer would not shorten the walk over k enough.
const MIN_SPLITS: usize = 4;

impl MatmulOps for GpuBackend {
    fn matmul_unchecked(
        &self,
        a: &GpuBuffer,
        a_layout: MatrixLayout,
        b: &GpuBuffer,
        b_layout: MatrixLayout,
        bias: Option<&GpuBuffer>,
        out: &mut GpuBuffer,
        a_row_sums: Option<&mut GpuBuffer>,
        store: Store,
    ) -> Result<()> {
        self.check_bindable("matmul operand a", a)?;
        self.check_bindable("matmul operand b", b)?;
        self.check_bindable("matmul output", out)?;
        let (m, n) = (a_layout.rows, b_layout.cols);
        if m == 0 || n == 0 {
            return Ok(());
        }
        let params = MatmulParams {
            m: m as u32,
            n: n as u32,
            k: a_layout.cols as u32,
            a_row_stride: a_layout.row_stride as u32,
            a_col_stride: a_layout.col_stride as u32,
            b_row_stride: b_layout.row_stride as u32,
            b_col_stride: b_layout.col_stride as u32,
            flags: if bias.is_some() { MATMUL_BIAS } else { 0 }
                | if a_row_sums.is_some() {
                    MATMUL_ROW_SUMS
                } else {
                    0
                },
            k_split: a_layout.cols as u32,
            splits: 1,
            _pad0: 0,
            _pad1: 0,
        };
        // Slots a kernel will not touch still need buffers: the placeholders.
        let bias = bias.unwrap_or(self.placeholder());
        let row_sums = a_row_sums.map_or(self.writable_placeholder(), |sums| &*sums);
        let kernel = match self.matmul_plan(a_layout, b_layout) {
            MatmulPlan::Blocks(kernel) => kernel,
            MatmulPlan::Vec4(vec4) => {
                return self.matmul_vec4(vec4, &params, store, [a, b, bias, row_sums], out);
            }
        };
        let accumulate = [accumulate(store)];
        let variant = Variant {
            constants: &accumulate,
            ..Variant::default()
        };
        let (splits, k_split) = self.matmul_splits(a_layout, b_layout);
        let params = MatmulParams {
            k_split: k_split as u32,
            splits: splits as u32,
            ..params
        };
        let per_group = MATMUL_TILE * MATMUL_SIDE;
        let groups = [
            n.div_ceil(per_group) as u32,
            m.div_ceil(per_group) as u32,
            splits as u32,
        ];
        if splits == 1 {
            let bindings = [
                Binding::whole(Slot::MatA, a),
                Binding::whole(Slot::MatB, b),
                Binding::whole(Slot::Bias, bias),
                Binding::whole(Slot::RowSums, row_sums),
                Binding::whole(Slot::Out, out),
                Binding::whole(Slot::Partials, self.writable_placeholder()),
            ];
            // Only the tiled kernel has partial results to store.
            let bound = if kernel == Kernel::MatmulTiled {
                &bindings[..]
            } else {
                &bindings[..5]
            };
            return self.record(|recording| {
                self.dispatch_specialized(recording, kernel, variant, &params, bound, groups)
            });
        }
        let partials = self.scratch(splits * (m * n + m))?;
        self.check_bindable("matmul partial results", &partials)?;
        // The tiled pass writes only partials; out and row_sums are bound for the layout.
        let tiled = [
            Binding::whole(Slot::MatA, a),
            Binding::whole(Slot::MatB, b),
            Binding::whole(Slot::Bias, bias),
            Binding::whole(Slot::RowSums, self.writable_placeholder()),
            Binding::whole(Slot::Partials, &partials),
            Binding::whole(Slot::Out, self.writable_placeholder()),
        ];
        let reduce = [
            Binding::whole(Slot::Bias, bias),
            Binding::whole(Slot::RowSums, row_sums),
            Binding::whole(Slot::Partials, &partials),
            Binding::whole(Slot::Out, out),
        ];
        // The splits store partial results whatever `store` says; their sum adds to out.
        self.record(|recording| {
            self.dispatch(recording, kernel, &params, &tiled, groups)?;
            self.dispatch_threads(
                recording,
                Kernel::MatmulReduceSplits,
                variant,
                WORKGROUP,
                &params,
                &reduce,
                m * n + m,
            )
        })
    }
}

impl GpuBackend {
    /// `matmul_vec4`: 16×16 blocks of c per thread, one thread per block.
    fn matmul_vec4(
        &self,
        vec4: Vec4Layout,
        params: &MatmulParams,
        store: Store,
        [a, b, bias, row_sums]: [&GpuBuffer; 4],
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let (m, n) = (params.m as usize, params.n as usize);
        let group = self.tuning().matmul_group;
        let threads = m.div_ceil(MATMUL_VEC4_BLOCK) * n.div_ceil(MATMUL_VEC4_BLOCK);
        let constants = [
            ("A_K_CONTIGUOUS", f64::from(u8::from(vec4.a_k_contiguous))),
            ("B_K_CONTIGUOUS", f64::from(u8::from(vec4.b_k_contiguous))),
            ("V_GROUP", f64::from(group)),
            accumulate(store),
        ];
        // The vec4 views cover whole quads; `Vec4Layout::of`'s alignment conditions keep every
        // quad the kernel reads inside them.
        let bindings = [
            Binding::rows(Slot::MatA4, a, 0, a.len() / 4 * 4),
            Binding::rows(Slot::MatB4, b, 0, b.len() / 4 * 4),
            Binding::whole(Slot::Bias, bias),
            Binding::whole(Slot::RowSums, row_sums),
            Binding::whole(Slot::Out, out),
        ];
        self.record(|recording| {
            self.dispatch_threads(
                recording,
                Kernel::MatmulVec4,
                Variant {
                    constants: &constants,
                    ..Variant::default()
                },
                group,
                params,
                &bindings,
                threads,
            )
        })
    }
}
