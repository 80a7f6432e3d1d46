//! In-place optimizer updates of one parameter tensor, as PyTorch writes them:
//!
//! ```text
//! Adam: m += (1 − β1)(g − m);  v = β2·v + (1 − β2)·g²;
//!       θ = θ·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (sqrt(v)/sqrt(1 − β2ᵗ) + eps)   (AdamW's decay)
//! SGD:  b = momentum·b + (g + wd·θ);  θ −= lr·b                            (L2 decay)
//! ```
//!
//! with moments below the smallest normal f32 stored as 0 (see `shaders/optimizer.wgsl`).
//!
//! The WGSL is `shaders/optimizer.wgsl`; `src/optim.rs` keeps the state and the step count
//! around these kernels.

mod cpu;
mod gpu;

use crate::Result;
use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};

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
    pub param_scale: f32,
    pub weight_decay: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

const _: () = assert!(std::mem::size_of::<OptimizerParams>() == 48);

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
            param_scale: 1.0,
            ..Self::default()
        }
    }

    /// AdamW's decoupled weight decay at learning rate `lr`: θ shrinks by lr·`weight_decay`
    /// before the step (the factor computed in f64, as PyTorch's `param.mul_(1 - lr * wd)`).
    pub fn with_decoupled_decay(self, lr: f64, weight_decay: f64) -> Self {
        Self {
            param_scale: (1.0 - lr * weight_decay) as f32,
            ..self
        }
    }

    /// SGD's L2 weight decay: `weight_decay`·θ added to the gradient.
    pub fn with_l2_decay(self, weight_decay: f64) -> Self {
        Self {
            weight_decay: weight_decay as f32,
            ..self
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
    ) -> Result<()> {
        check(
            params,
            &[
                ("parameter", self.len_of(param)),
                ("gradient", self.len_of(grad)),
                ("first moment", self.len_of(moment1)),
                ("second moment", self.len_of(moment2)),
            ],
        )?;
        self.adam_update_unchecked(params, param, grad, moment1, moment2)
    }

    /// One SGD step (with momentum when `params` has it).
    fn sgd_update(
        &self,
        params: &OptimizerParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        momentum: &mut Self::Buffer,
    ) -> Result<()> {
        check(
            params,
            &[
                ("parameter", self.len_of(param)),
                ("gradient", self.len_of(grad)),
                ("momentum buffer", self.len_of(momentum)),
            ],
        )?;
        self.sgd_update_unchecked(params, param, grad, momentum)
    }

    /// `adam_update` on checked arguments.
    #[doc(hidden)]
    fn adam_update_unchecked(
        &self,
        params: &OptimizerParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        moment1: &mut Self::Buffer,
        moment2: &mut Self::Buffer,
    ) -> Result<()>;

    /// `sgd_update` on checked arguments.
    #[doc(hidden)]
    fn sgd_update_unchecked(
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
    check_u32_indexable("parameter", params.len as usize)
}
