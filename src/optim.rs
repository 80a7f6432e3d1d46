//! Optimizers: their settings, their per-parameter state on the device, and the step count.
//! The update formulas are the kernels of `src/ops/optimizer/`.

use crate::backend::Backend;
use crate::graph::Compute;
use crate::ops::optimizer::OptimizerParams;
use crate::{Error, Result};

/// An optimizer's settings; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// Adam (Kingma and Ba) with PyTorch's defaults.
    Adam {
        /// Learning rate.
        lr: f64,
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the root of the second moment.
        eps: f64,
    },
    /// Stochastic gradient descent, with optional heavy-ball momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Weight of the previous update (0: plain SGD).
        momentum: f64,
    },
}

impl OptimizerConfig {
    /// Adam at learning rate `lr` with PyTorch's β1 0.9, β2 0.999 and eps 1e-8.
    pub fn adam(lr: f64) -> Self {
        Self::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// SGD at `lr` with `momentum` (0 for none).
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Self::Sgd { lr, momentum }
    }

    /// The same optimizer with another learning rate.
    pub fn with_lr(self, lr: f64) -> Self {
        match self {
            Self::Adam {
                beta1, beta2, eps, ..
            } => Self::Adam {
                lr,
                beta1,
                beta2,
                eps,
            },
            Self::Sgd { momentum, .. } => Self::Sgd { lr, momentum },
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Self::Adam { lr, .. } | Self::Sgd { lr, .. } => lr,
        }
    }

    /// Refuses a learning rate or moment setting that is not finite and in range.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            Self::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                lr > 0.0
                    && lr.is_finite()
                    && (0.0..1.0).contains(&beta1)
                    && (0.0..1.0).contains(&beta2)
                    && eps > 0.0
            }
            Self::Sgd { lr, momentum } => {
                lr > 0.0 && lr.is_finite() && (0.0..1.0).contains(&momentum)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "optimizer settings out of range: {self:?} (lr > 0, betas and momentum in [0, 1))"
            )))
        }
    }

    /// Names of the state tensors kept per parameter, as in PyTorch's optimizer `state`.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            Self::Adam { .. } => &["exp_avg", "exp_avg_sq"],
            Self::Sgd { .. } => &["momentum_buffer"],
        }
    }
}

/// An optimizer and its state: one buffer per (parameter, state name), and the steps taken.
pub struct Optimizer<B: Backend> {
    /// The algorithm and its settings.
    pub config: OptimizerConfig,
    /// Steps taken.
    pub steps: u64,
    /// state[parameter][state name index]
    pub state: Vec<Vec<B::Buffer>>,
}

impl<B: Compute> Optimizer<B> {
    /// Fresh state (zeros) for parameters of the given lengths.
    pub fn new(backend: &B, config: OptimizerConfig, param_lens: &[usize]) -> Result<Self> {
        let host: Vec<Vec<Vec<f32>>> = param_lens
            .iter()
            .map(|&len| vec![vec![0.0; len]; config.state_names().len()])
            .collect();
        Self::upload(backend, config, 0, &host)
    }

    /// State restored from the host, as `download` returned it.
    pub fn upload(
        backend: &B,
        config: OptimizerConfig,
        steps: u64,
        host: &[Vec<Vec<f32>>],
    ) -> Result<Self> {
        config.validate()?;
        let state = host
            .iter()
            .map(|per_param| {
                if per_param.len() != config.state_names().len() {
                    return Err(Error::Shape(format!(
                        "optimizer state has {} tensors per parameter, expected {}",
                        per_param.len(),
                        config.state_names().len()
                    )));
                }
                per_param
                    .iter()
                    .map(|values| backend.upload(values))
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            steps,
            state,
        })
    }

    /// The state tensors, per parameter and per `state_names` entry.
    pub fn download(&self, backend: &B) -> Result<Vec<Vec<Vec<f32>>>> {
        Ok(self.host_state(backend.download_many(&self.tensors())?))
    }

    /// Every state tensor, parameter by parameter, for one `download_many`.
    pub fn tensors(&self) -> Vec<&B::Buffer> {
        self.state.iter().flatten().collect()
    }

    /// state[parameter][state name index] from the values of `tensors`, in that order.
    pub fn host_state(&self, values: Vec<Vec<f32>>) -> Vec<Vec<Vec<f32>>> {
        let mut values = values.into_iter();
        self.state
            .iter()
            .map(|per_param| values.by_ref().take(per_param.len()).collect())
            .collect()
    }

    /// One update of every parameter from its gradient.
    pub fn step(
        &mut self,
        backend: &B,
        params: Vec<&mut B::Buffer>,
        grads: &[B::Buffer],
    ) -> Result<()> {
        if params.len() != self.state.len() || grads.len() != self.state.len() {
            return Err(Error::Shape(format!(
                "optimizer holds state for {} parameters, got {} parameters and {} gradients",
                self.state.len(),
                params.len(),
                grads.len()
            )));
        }
        self.steps += 1;
        for ((param, grad), state) in params.into_iter().zip(grads).zip(&mut self.state) {
            let len = backend.len_of(param);
            match (self.config, state.as_mut_slice()) {
                (
                    OptimizerConfig::Adam {
                        lr,
                        beta1,
                        beta2,
                        eps,
                    },
                    [moment1, moment2],
                ) => {
                    let p = OptimizerParams::adam(len, lr, beta1, beta2, eps, self.steps);
                    backend.adam_update(&p, param, grad, moment1, moment2)?;
                }
                (OptimizerConfig::Sgd { lr, momentum }, [buffer]) => {
                    let p = OptimizerParams::sgd(len, lr, momentum);
                    backend.sgd_update(&p, param, grad, buffer)?;
                }
                _ => {
                    return Err(Error::Shape(
                        "optimizer state does not match its kind".to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}
