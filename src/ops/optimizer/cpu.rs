//! The CPU twin of `shaders/optimizer.wgsl`.

use super::{OptimizerOps, OptimizerParams};
use crate::Result;
use crate::cpu::CpuBackend;

impl OptimizerOps for CpuBackend {
    fn adam_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        moment1: &mut Vec<f32>,
        moment2: &mut Vec<f32>,
    ) -> Result<()> {
        for (((theta, &g), m), v) in param.iter_mut().zip(grad).zip(moment1).zip(moment2) {
            *m += p.one_minus_beta1 * (g - *m);
            *v = p.beta2 * *v + p.one_minus_beta2 * g * g;
            *theta -= p.step_size * *m / (v.sqrt() / p.bias_correction2_sqrt + p.eps);
        }
        Ok(())
    }

    fn sgd_update_unchecked(
        &self,
        p: &OptimizerParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        momentum: &mut Vec<f32>,
    ) -> Result<()> {
        for ((theta, &g), b) in param.iter_mut().zip(grad).zip(momentum) {
            *b = p.momentum * *b + g;
            *theta -= p.step_size * *b;
        }
        Ok(())
    }
}
