//! CPU twin of `shaders/matmul.wgsl` (formula there): the same strided product, computed by
//! `matrixmultiply`'s packed, vectorized sgemm.

use super::{MatmulOps, MatrixLayout};
use crate::Result;
use crate::cpu::CpuBackend;

impl MatmulOps for CpuBackend {
    fn matmul_unchecked(
        &self,
        a: &Vec<f32>,
        a_layout: MatrixLayout,
        b: &Vec<f32>,
        b_layout: MatrixLayout,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
        a_row_sums: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        matmul(a, a_layout, b, b_layout, bias.map(Vec::as_slice), out);
        if let Some(sums) = a_row_sums {
            row_sums(a, a_layout, sums);
        }
        Ok(())
    }
}

/// sums[i] = Σ_k a[i, k], k in increasing order as the WGSL adds them.
fn row_sums(a: &[f32], layout: MatrixLayout, sums: &mut [f32]) {
    for (i, sum) in sums.iter_mut().enumerate().take(layout.rows) {
        let row = &a[i * layout.row_stride..];
        *sum = (0..layout.cols)
            .map(|k| row[k * layout.col_stride])
            .fold(0.0, |total, value| total + value);
    }
}

/// out (m×n, row-major) = a·b (+ bias per column). Layouts must have been checked against the
/// buffers with `MatrixLayout::fits`.
fn matmul(
    a: &[f32],
    a_layout: MatrixLayout,
    b: &[f32],
    b_layout: MatrixLayout,
    bias: Option<&[f32]>,
    out: &mut [f32],
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
    let beta = match bias {
        Some(bias) => {
            for row in out[..m * n].chunks_exact_mut(n) {
                row.copy_from_slice(&bias[..n]);
            }
            1.0
        }
        None => 0.0,
    };
    // SAFETY: the assert above checks that every index sgemm touches lies inside a, b and out:
    // a's largest is (m−1)·rsa + (k−1)·csa (MatrixLayout::fits), likewise b, and out is m×n.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            a_layout.row_stride as isize,
            a_layout.col_stride as isize,
            b.as_ptr(),
            b_layout.row_stride as isize,
            b_layout.col_stride as isize,
            beta,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}
