//! In-place optimizer updates of one parameter tensor, for both backends. The formulas live in
//! `shaders/optimizer.wgsl`; the CPU loops here are their twins. `src/optim.rs` keeps the state
//! and the step count around these kernels.

use crate::Result;
use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};
use crate::ops::check_len;

/// Uniform parameters of `shaders/optimizer.wgsl` (`struct OptimizerParams` there). Each
/// kernel reads the fields its formula names.
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OptimizerParams {
    pub len: u32,
    pub step_size: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub bias_correction2_sqrt: f32,
    pub momentum: f32,
}

const _: () = assert!(std::mem::size_of::<OptimizerParams>() == 32);

impl OptimizerParams {
    /// Adam at step `t` (1-based). The bias corrections and 1 − β are computed in f64 and
    /// rounded once, as PyTorch passes them to its kernels.
    pub fn adam(len: usize, lr: f64, beta1: f64, beta2: f64, eps: f64, t: u64) -> Self {
        let t = t as f64;
        Self {
            len: len as u32,
            step_size: (lr / (1.0 - beta1.powf(t))) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
            ..Self::default()
        }
    }

    pub fn sgd(len: usize, lr: f64, momentum: f64) -> Self {
        Self {
            len: len as u32,
            step_size: lr as f32,
            momentum: momentum as f32,
            ..Self::default()
        }
    }
}

/// Updates `param` in place from `grad`. Adam keeps two moment buffers, SGD one (momentum).
pub trait OptimizerOps: Backend + Sized {
    /// One Adam step on `param` with `grad`, its moments and the hyperparameters in `params`.
    fn adam_update(
        &self,
        params: &OptimizerParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        moment1: &mut Self::Buffer,
        moment2: &mut Self::Buffer,
    ) -> Result<()>;

    /// One SGD step (with momentum when `params` has it).
    fn sgd_update(
        &self,
        params: &OptimizerParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        momentum: &mut Self::Buffer,
    ) -> Result<()>;
}

fn check(params: &OptimizerParams, lens: &[(&str, usize)]) -> Result<()> {
    for &(what, len) in lens {
        check_len(what, len, params.len as usize)?;
    }
    Ok(())
}

impl OptimizerOps for CpuBackend {
    fn adam_update(
        &self,
        p: &OptimizerParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        moment1: &mut Vec<f32>,
        moment2: &mut Vec<f32>,
    ) -> Result<()> {
        check(
            p,
            &[
                ("parameter", param.len()),
                ("gradient", grad.len()),
                ("first moment", moment1.len()),
                ("second moment", moment2.len()),
            ],
        )?;
        for (((theta, &g), m), v) in param.iter_mut().zip(grad).zip(moment1).zip(moment2) {
            *m += p.one_minus_beta1 * (g - *m);
            *v = p.beta2 * *v + p.one_minus_beta2 * g * g;
            *theta -= p.step_size * *m / (v.sqrt() / p.bias_correction2_sqrt + p.eps);
        }
        Ok(())
    }

    fn sgd_update(
        &self,
        p: &OptimizerParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        momentum: &mut Vec<f32>,
    ) -> Result<()> {
        check(
            p,
            &[
                ("parameter", param.len()),
                ("gradient", grad.len()),
                ("momentum buffer", momentum.len()),
            ],
        )?;
        for ((theta, &g), b) in param.iter_mut().zip(grad).zip(momentum) {
            *b = p.momentum * *b + g;
            *theta -= p.step_size * *b;
        }
        Ok(())
    }
}

impl GpuBackend {
    /// Checks and dispatches one update kernel over `tensors` (name, slot, buffer).
    fn optimizer_update(
        &self,
        kernel: Kernel,
        p: &OptimizerParams,
        tensors: &[(&str, Slot, &GpuBuffer)],
    ) -> Result<()> {
        let lens: Vec<(&str, usize)> = tensors.iter().map(|&(n, _, b)| (n, b.len())).collect();
        check(p, &lens)?;
        let mut bindings = Vec::with_capacity(tensors.len());
        for &(name, slot, buffer) in tensors {
            self.check_bindable(name, buffer)?;
            bindings.push(Binding::whole(slot, buffer));
        }
        self.record(|encoder| {
            self.dispatch_elementwise(encoder, kernel, p, &bindings, p.len as usize)
        })
    }
}

impl OptimizerOps for GpuBackend {
    fn adam_update(
        &self,
        p: &OptimizerParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        moment1: &mut GpuBuffer,
        moment2: &mut GpuBuffer,
    ) -> Result<()> {
        let tensors = [
            ("parameter", Slot::Param, &*param),
            ("gradient", Slot::Grad, grad),
            ("first moment", Slot::Moment1, &*moment1),
            ("second moment", Slot::Moment2, &*moment2),
        ];
        self.optimizer_update(Kernel::Adam, p, &tensors)
    }

    fn sgd_update(
        &self,
        p: &OptimizerParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        momentum: &mut GpuBuffer,
    ) -> Result<()> {
        let tensors = [
            ("parameter", Slot::Param, &*param),
            ("gradient", Slot::Grad, grad),
            ("momentum buffer", Slot::Moment1, &*momentum),
        ];
        self.optimizer_update(Kernel::Sgd, p, &tensors)
    }
}
