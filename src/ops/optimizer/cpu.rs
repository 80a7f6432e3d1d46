//! The CPU twin of `shaders/optimizer.wgsl`.

use super::{OptimizerOps, OptimizerParams};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

/// 0 for a subnormal moment, as `flushed` in the WGSL (why is written there).
fn flushed(value: f32) -> f32 {
    if value.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        value
    }
}

impl OptimizerOps for CpuBackend {
    fn adam_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut CpuBuffer,
        grad: &CpuBuffer,
        moment1: &mut CpuBuffer,
        moment2: &mut CpuBuffer,
    ) -> Result<()> {
        for (((theta, &g), m), v) in param.iter_mut().zip(grad).zip(moment1).zip(moment2) {
            *m = flushed(*m + p.one_minus_beta1 * (g - *m));
            *v = flushed(p.beta2 * *v + p.one_minus_beta2 * g * g);
            *theta = *theta * p.param_scale
                - p.step_size * *m / (v.sqrt() / p.bias_correction2_sqrt + p.eps);
        }
        Ok(())
    }

    fn sgd_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut CpuBuffer,
        grad: &CpuBuffer,
        momentum: &mut CpuBuffer,
    ) -> Result<()> {
        for ((theta, &g), b) in param.iter_mut().zip(grad).zip(momentum) {
            *b = flushed(p.momentum * *b + (g + p.weight_decay * *theta));
            *theta -= p.step_size * *b;
        }
        Ok(())
    }
}
