//! Matrix products on strided views:
//!
//! ```text
//! out[i, j] = Σ_k a[i, k]·b[k, j] (+ bias[j]),   k summed in increasing order
//! row_sums[i] = Σ_k a[i, k]                       (optional; k in increasing order)
//! ```
//!
//! each stored in place of what out (and row_sums) held or, with `Store::Add`, added to it: a
//! weight gradient summed over batches too large to bind at once.
//!
//! where a and b are views into flat buffers (element (i, j) at i·row_stride + j·col_stride),
//! so a transpose is a view, not a copy: the Linear layer's X·Wᵀ, dX = dY·W and dW = dYᵀ·X are
//! all this one op, and with a = dYᵀ the row sums are the bias gradient dB, formed in the same
//! pass as dW. The WGSL is `shaders/matmul.wgsl`.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::{
    MATMUL_ACCUMULATE, MATMUL_BIAS, MATMUL_K_STEP, MATMUL_ROW_SUMS, MATMUL_SIDE, MATMUL_TILE,
    MATMUL_VEC4_BLOCK, MatmulParams,
};

use crate::backend::Backend;
use crate::ops::check_u32_indexable;
use crate::{Error, Result};

/// A rows×cols matrix inside a flat buffer: element (i, j) sits at i·row_stride + j·col_stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixLayout {
    /// Rows of the logical matrix.
    pub rows: usize,
    /// Columns of the logical matrix.
    pub cols: usize,
    /// Distance in values between rows.
    pub row_stride: usize,
    /// Distance in values between columns.
    pub col_stride: usize,
}

impl MatrixLayout {
    /// A plain row-major rows×cols matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same data read as its transpose.
    pub fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every element lies inside a buffer of `len` values.
    pub fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < len
    }
}

/// What a product does with what its output held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Overwrites it.
    Replace,
    /// Adds the product to it (after the product's own sum over k).
    Add,
}

/// out = a·b (+ bias added to every row), out row-major a.rows × b.cols.
pub trait MatmulOps: Backend + Sized {
    /// out = a·b (+ bias per column), row-major a.rows × b.cols; a and b are strided views.
    fn matmul(
        &self,
        a: &Self::Buffer,
        a_layout: MatrixLayout,
        b: &Self::Buffer,
        b_layout: MatrixLayout,
        bias: Option<&Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let lens = [a, b, out].map(|buffer| self.len_of(buffer));
        check(
            lens,
            [a_layout, b_layout],
            bias.map(|bias| self.len_of(bias)),
        )?;
        self.matmul_unchecked(a, a_layout, b, b_layout, bias, out, None, Store::Replace)
    }

    /// out = a·b as `matmul` (no bias), and the sum of each row of a in `a_row_sums`, in the
    /// same pass: with a = dYᵀ, a Linear layer's weight and bias gradients. `store` says
    /// whether both replace or add to what `out` and `a_row_sums` hold.
    #[allow(clippy::too_many_arguments)]
    fn matmul_and_row_sums(
        &self,
        a: &Self::Buffer,
        a_layout: MatrixLayout,
        b: &Self::Buffer,
        b_layout: MatrixLayout,
        out: &mut Self::Buffer,
        a_row_sums: &mut Self::Buffer,
        store: Store,
    ) -> Result<()> {
        let lens = [a, b, out].map(|buffer| self.len_of(buffer));
        check(lens, [a_layout, b_layout], None)?;
        crate::ops::check_len("matmul row sums", self.len_of(a_row_sums), a_layout.rows)?;
        self.matmul_unchecked(a, a_layout, b, b_layout, None, out, Some(a_row_sums), store)
    }

    /// `matmul` (and the row sums of a, where asked) on checked arguments.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn matmul_unchecked(
        &self,
        a: &Self::Buffer,
        a_layout: MatrixLayout,
        b: &Self::Buffer,
        b_layout: MatrixLayout,
        bias: Option<&Self::Buffer>,
        out: &mut Self::Buffer,
        a_row_sums: Option<&mut Self::Buffer>,
        store: Store,
    ) -> Result<()>;
}

/// Checks the operands' layouts against their lengths (a, b, out) and the bias's length.
fn check(
    [a_len, b_len, out_len]: [usize; 3],
    [a, b]: [MatrixLayout; 2],
    bias_len: Option<usize>,
) -> Result<()> {
    if a.cols != b.rows {
        return Err(Error::Shape(format!(
            "matmul of {}x{} by {}x{}: inner dimensions differ",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    if !a.fits(a_len) {
        return Err(Error::Shape(format!(
            "matmul operand a {a:?} does not fit its {a_len} values"
        )));
    }
    if !b.fits(b_len) {
        return Err(Error::Shape(format!(
            "matmul operand b {b:?} does not fit its {b_len} values"
        )));
    }
    if bias_len.is_some_and(|len| len != b.cols) {
        return Err(Error::Shape(format!(
            "matmul bias has {} values, expected {}",
            bias_len.unwrap_or(0),
            b.cols
        )));
    }
    check_u32_indexable("matmul operand a", a_len)?;
    check_u32_indexable("matmul operand b", b_len)?;
    check_u32_indexable("matmul output", out_len)?;
    if out_len != a.rows * b.cols {
        return Err(Error::Shape(format!(
            "matmul output has {out_len} values, expected {}x{}",
            a.rows, b.cols
        )));
    }
    Ok(())
}
