//! The sum of squares of a buffer's values into one slot of another: `out[slot] = Σ x²`, the
//! squared L2 norm of a gradient, so that training can log gradient norms on the device and
//! read them back once an epoch (`train::GradNormLog`). `shaders/sum_squares.wgsl` is the
//! kernel; `cpu.rs` its twin.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::SumSquaresParams;

use crate::backend::Backend;
use crate::{Error, Result};

/// Sums of squares on a backend.
pub trait SumSquaresOps: Backend + Sized {
    /// Writes Σ x² into `out[slot]`, leaving the rest of `out` as it is.
    fn sum_squares(&self, x: &Self::Buffer, out: &mut Self::Buffer, slot: usize) -> Result<()> {
        let len = self.len_of(out);
        if slot >= len {
            return Err(Error::Shape(format!(
                "sum of squares into slot {slot} of a buffer of {len} values"
            )));
        }
        crate::ops::check_u32_indexable("sum of squares input", self.len_of(x))?;
        self.sum_squares_unchecked(x, out, slot)
    }

    /// `sum_squares` on checked arguments.
    #[doc(hidden)]
    fn sum_squares_unchecked(
        &self,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        slot: usize,
    ) -> Result<()>;
}
