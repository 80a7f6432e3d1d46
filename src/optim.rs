//! Optimizers: their settings, their per-parameter state on the device, and the step count.
//! The update formulas are the kernels of `src/ops/optimizer/`.

use crate::backend::Backend;
use crate::graph::Compute;
use crate::ops::check_len;
use crate::ops::optimizer::OptimizerParams;
use crate::{Error, Result};

/// An optimizer's settings; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// Adam (Kingma and Ba) with PyTorch's defaults; with a weight decay, AdamW (Loshchilov and
    /// Hutter: the decay decoupled from the gradient, as `torch.optim.AdamW`).
    Adam {
        /// Learning rate.
        lr: f64,
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the root of the second moment.
        eps: f64,
        /// AdamW's decoupled weight decay (0: plain Adam; left out of saved settings when 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        weight_decay: f64,
    },
    /// Stochastic gradient descent, with optional heavy-ball momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Weight of the previous update (0: plain SGD).
        momentum: f64,
        /// L2 weight decay added to the gradient, as `torch.optim.SGD` (left out of saved
        /// settings when 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        weight_decay: f64,
    },
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl OptimizerConfig {
    /// Adam at learning rate `lr` with PyTorch's β1 0.9, β2 0.999 and eps 1e-8.
    pub fn adam(lr: f64) -> Self {
        Self::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// SGD at `lr` with `momentum` (0 for none).
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Self::Sgd {
            lr,
            momentum,
            weight_decay: 0.0,
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_lr(mut self, lr: f64) -> Self {
        match &mut self {
            Self::Adam { lr: rate, .. } | Self::Sgd { lr: rate, .. } => *rate = lr,
        }
        self
    }

    /// The same optimizer with a weight decay: AdamW's decoupled one for Adam, L2 for SGD.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        match &mut self {
            Self::Adam {
                weight_decay: decay,
                ..
            }
            | Self::Sgd {
                weight_decay: decay,
                ..
            } => *decay = weight_decay,
        }
        self
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Self::Adam { lr, .. } | Self::Sgd { lr, .. } => lr,
        }
    }

    /// Refuses a learning rate or moment setting that is not finite and in range, naming the
    /// setting: "lr must be a positive finite number, got 0".
    pub fn validate(&self) -> Result<()> {
        let positive = |x: f64| x > 0.0 && x.is_finite();
        let fraction = |x: f64| (0.0..1.0).contains(&x);
        let checks = match *self {
            Self::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => vec![
                ("lr", lr, positive(lr), "a positive finite number"),
                ("beta1", beta1, fraction(beta1), "in [0, 1)"),
                ("beta2", beta2, fraction(beta2), "in [0, 1)"),
                ("eps", eps, positive(eps), "a positive finite number"),
                (
                    "weight-decay",
                    weight_decay,
                    fraction(weight_decay * lr),
                    "at least 0, and below 1/lr",
                ),
            ],
            Self::Sgd {
                lr,
                momentum,
                weight_decay,
            } => vec![
                ("lr", lr, positive(lr), "a positive finite number"),
                ("momentum", momentum, fraction(momentum), "in [0, 1)"),
                (
                    "weight-decay",
                    weight_decay,
                    weight_decay >= 0.0 && weight_decay.is_finite(),
                    "a finite number, at least 0",
                ),
            ],
        };
        match checks.into_iter().find(|(_, _, ok, _)| !ok) {
            Some((name, value, _, rule)) => Err(Error::InvalidArgument(format!(
                "{name} must be {rule}, got {value}"
            ))),
            None => Ok(()),
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
        let names = config.state_names().len();
        if let Some(per_param) = host.iter().find(|per_param| per_param.len() != names) {
            return Err(Error::Shape(format!(
                "optimizer state has {} tensors per parameter, expected {names}",
                per_param.len(),
            )));
        }
        // One arena per state name, laid out as the parameters' arena.
        let mut state: Vec<Vec<B::Buffer>> = host.iter().map(|_| Vec::new()).collect();
        for name in 0..names {
            let values: Vec<&[f32]> = host.iter().map(|per_param| &per_param[name][..]).collect();
            for (per_param, buffer) in state.iter_mut().zip(backend.upload_arena(&values)?) {
                per_param.push(buffer);
            }
        }
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
        for ((param, grad), state) in params.iter().zip(grads).zip(&self.state) {
            let len = backend.len_of(param);
            for tensor in std::iter::once(grad).chain(state) {
                check_len("optimizer tensor", backend.len_of(tensor), len)?;
            }
        }
        self.steps += 1;
        // Where parameters, gradients and state each lie in one arena, one update covers them all.
        let spans = self.arena_spans(backend, &params, grads);
        if let Some(mut spans) = spans {
            return update(
                backend,
                self.config,
                self.steps,
                &mut spans.param,
                &spans.grad,
                &mut spans.state,
            );
        }
        for ((param, grad), state) in params.into_iter().zip(grads).zip(&mut self.state) {
            update(backend, self.config, self.steps, param, grad, state)?;
        }
        Ok(())
    }

    /// Views spanning all parameters, all gradients and all of each state tensor, where each
    /// set lies in one arena laid out alike; else None.
    fn arena_spans(
        &self,
        backend: &B,
        params: &[&mut B::Buffer],
        grads: &[B::Buffer],
    ) -> Option<ArenaSpans<B>> {
        let param = backend.arena_span(&params.iter().map(|param| &**param).collect::<Vec<_>>())?;
        let grad = backend.arena_span(&grads.iter().collect::<Vec<_>>())?;
        let state = (0..self.config.state_names().len())
            .map(|name| {
                let tensors: Vec<&B::Buffer> = self
                    .state
                    .iter()
                    .map(|per_param| &per_param[name])
                    .collect();
                backend.arena_span(&tensors)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(ArenaSpans { param, grad, state })
    }
}

/// One view over each arena an optimizer step touches.
struct ArenaSpans<B: Backend> {
    param: B::Buffer,
    grad: B::Buffer,
    /// In `state_names` order.
    state: Vec<B::Buffer>,
}

/// The update of step `steps` of one parameter (or one span of them) from its gradient.
fn update<B: Compute>(
    backend: &B,
    config: OptimizerConfig,
    steps: u64,
    param: &mut B::Buffer,
    grad: &B::Buffer,
    state: &mut [B::Buffer],
) -> Result<()> {
    let len = backend.len_of(param);
    match (config, state) {
        (
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            },
            [moment1, moment2],
        ) => {
            let p = OptimizerParams::adam(len, lr, beta1, beta2, eps, steps)
                .with_decoupled_decay(lr, weight_decay);
            backend.adam_update(&p, param, grad, moment1, moment2)
        }
        (
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            },
            [buffer],
        ) => {
            let p = OptimizerParams::sgd(len, lr, momentum).with_l2_decay(weight_decay);
            backend.sgd_update(&p, param, grad, buffer)
        }
        _ => Err(Error::Shape(
            "optimizer state does not match its kind".to_string(),
        )),
    }
}
