//! The CPU twin of `shaders/activation.wgsl`.

use super::{ActivationOps, DropoutMask};
use crate::Result;
use crate::cpu::CpuBackend;

impl ActivationOps for CpuBackend {
    fn relu_forward_unchecked(&self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.max(0.0);
        }
        Ok(())
    }

    fn relu_backward_unchecked(
        &self,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
            *dx = if x > 0.0 { dy } else { 0.0 };
        }
        Ok(())
    }

    fn dropout_forward_unchecked(
        &self,
        mask: &DropoutMask,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        masked_scale(mask, x, y);
        Ok(())
    }

    fn dropout_backward_unchecked(
        &self,
        mask: &DropoutMask,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        masked_scale(mask, dy, dx);
        Ok(())
    }
}

fn masked_scale(mask: &DropoutMask, input: &[f32], output: &mut [f32]) {
    let scale = mask.scale();
    for (i, (out, &value)) in output.iter_mut().zip(input).enumerate() {
        *out = if mask.keeps(i as u32) {
            value * scale
        } else {
            0.0
        };
    }
}
