//! CPU twin of `shaders/sum_squares.wgsl`: the same strided f32 sums, added in the same tree.

use super::SumSquaresOps;
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};
use crate::gpu::WORKGROUP;

impl SumSquaresOps for CpuBackend {
    fn sum_squares_unchecked(&self, x: &CpuBuffer, out: &mut CpuBuffer, slot: usize) -> Result<()> {
        let threads = WORKGROUP as usize;
        let mut partial = vec![0.0f32; threads];
        for (i, &value) in x.iter().enumerate() {
            partial[i % threads] += value * value;
        }
        let mut stride = threads / 2;
        while stride > 0 {
            for lane in 0..stride {
                partial[lane] += partial[lane + stride];
            }
            stride /= 2;
        }
        out[slot] = partial[0];
        Ok(())
    }
}
