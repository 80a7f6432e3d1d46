//! CPU twin of `shaders/matmul.wgsl` (formula there): the same strided product, computed by
//! `matrixmultiply`'s packed, vectorized sgemm.

use super::{MatmulOps, MatrixLayout, Store};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

impl MatmulOps for CpuBackend {
    fn matmul_unchecked(
        &self,
        a: &CpuBuffer,
        a_layout: MatrixLayout,
        b: &CpuBuffer,
        b_layout: MatrixLayout,
        bias: Option<&CpuBuffer>,
        out: &mut CpuBuffer,
        a_row_sums: Option<&mut CpuBuffer>,
        store: Store,
    ) -> Result<()> {
        matmul(
            a,
            a_layout,
            b,
            b_layout,
            bias.map(|bias| &bias[..]),
            out,
            store,
        );
        if let Some(sums) = a_row_sums {
            let sums = &mut sums[..a_layout.rows];
            let held = (store == Store::Add).then(|| sums.to_vec());
            row_sums(a, a_layout, sums);
            // The kernel adds what the sums held after summing the row, as here.
            for (sum, held) in sums.iter_mut().zip(held.iter().flatten()) {
                *sum += held;
            }
        }
        Ok(())
    }
}

/// sums[i] = Σ_k a[i, k], k in increasing order as the WGSL adds them. Where a is stored
/// transposed (each row strided), the loop runs over k outside and i inside, so it reads memory
/// in order and vectorizes; each sum still adds the same terms in the same order.
fn row_sums(a: &[f32], layout: MatrixLayout, sums: &mut [f32]) {
    let sums = &mut sums[..layout.rows];
    if layout.col_stride > layout.row_stride {
        sums.fill(0.0);
        for k in 0..layout.cols {
            let column = &a[k * layout.col_stride..];
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum += column[i * layout.row_stride];
            }
        }
    } else {
        for (i, sum) in sums.iter_mut().enumerate() {
            let row = &a[i * layout.row_stride..];
            *sum = (0..layout.cols)
                .map(|k| row[k * layout.col_stride])
                .fold(0.0, |total, value| total + value);
        }
    }
}

/// out (m×n, row-major) = a·b (+ bias per column), or out += a·b with `Store::Add`. Layouts must
/// have been checked against the buffers with `MatrixLayout::fits`.
fn matmul(
    a: &[f32],
    a_layout: MatrixLayout,
    b: &[f32],
    b_layout: MatrixLayout,
    bias: Option<&[f32]>,
    out: &mut [f32],
    store: Store,
) {
    let (m, k, n) = (a_layout.rows, a_layout.cols, b_layout.cols);
    // `MatmulOps::matmul` returns a shape error before calling this; the assert only keeps the
    // unsafe block below sound for any other caller, so bad input never reaches it.
    assert!(
        a_layout.fits(a.len())
            && b_layout.fits(b.len())
            && out.len() >= m * n
            && k == b_layout.rows
    );
    // sgemm computes out = a·b + beta·out: the bias (or what out held) goes in first.
    if let Some(bias) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            match store {
                Store::Replace => row.copy_from_slice(&bias[..n]),
                Store::Add => row
                    .iter_mut()
                    .zip(bias)
                    .for_each(|(out, bias)| *out += bias),
            }
        }
    }
    let beta = match (bias, store) {
        (None, Store::Replace) => 0.0,
        _ => 1.0,
    };
    // matrixmultiply's kernels are wide along n: a product with few output columns and many
    // rows (a 3×3 convolution's weight gradient, 32×25088×9) runs three times faster as its
    // transpose, outᵀ = bᵀ·aᵀ, written through out's strides.
    let (rows, cols, out_strides, lhs, rhs) = if n < 16 && m > n {
        (
            n,
            m,
            (1, n),
            (b, b_layout.transposed()),
            (a, a_layout.transposed()),
        )
    } else {
        (m, n, (n, 1), (a, a_layout), (b, b_layout))
    };
    // SAFETY: the assert above checks that every index sgemm touches lies inside a, b and out:
    // a's largest is (m−1)·rsa + (k−1)·csa (MatrixLayout::fits), likewise b, and out is m×n
    // (its transpose reaches the same indices).
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            cols,
            1.0,
            lhs.0.as_ptr(),
            lhs.1.row_stride as isize,
            lhs.1.col_stride as isize,
            rhs.0.as_ptr(),
            rhs.1.row_stride as isize,
            rhs.1.col_stride as isize,
            beta,
            out.as_mut_ptr(),
            out_strides.0 as isize,
            out_strides.1 as isize,
        );
    }
}
