//! A model's tensors on the host: how they start, and their check against an architecture.

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::layer_spec::{LayerSpec, SampleShape};
use super::spec::ModelSpec;
use crate::{Error, Result};

/// How weights start, for Linear and convolution layers alike with fan-in = inputs·k² and
/// fan-out = outputs·k² (k = 1 for Linear): Keras' `glorot_uniform` (weights
/// U(±sqrt(6/(fan-in + fan-out))), zero biases) or PyTorch's default (weights and biases
/// U(±1/sqrt(fan-in))). BatchNorm starts at γ = 1, β = 0, running mean 0, running variance 1
/// in both; LayerNorm, GroupNorm and InstanceNorm at γ = 1, β = 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Keras' `glorot_uniform` weights and zero biases.
    Keras,
    /// PyTorch's `nn.Linear` and `nn.Conv2d` default: U(±1/sqrt(fan-in)) for both.
    Torch,
}

/// Running statistics of one BatchNorm layer, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRunning {
    /// Running mean per feature.
    pub mean: Vec<f32>,
    /// Running variance per feature.
    pub var: Vec<f32>,
    /// Training forwards seen (`num_batches_tracked`).
    pub batches_tracked: u64,
}

/// Every tensor of a model's `state_dict`, on the host: parameters in `ModelSpec::params`
/// order, running statistics in `ModelSpec::batchnorm_layers` order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostModel {
    /// Every parameter in `ModelSpec::params` order.
    pub params: Vec<Vec<f32>>,
    /// Each BatchNorm layer's running statistics, in layer order.
    pub running: Vec<HostRunning>,
}

impl HostModel {
    /// Initial weights drawn on the host from `seed`, so every backend starts from the same ones.
    pub fn initial(spec: &ModelSpec, init: Init, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut params = Vec::new();
        for (layer, &input) in spec.layers().iter().zip(spec.shapes()) {
            let (fan_in, fan_out) = match (*layer, input) {
                (LayerSpec::Linear { outputs }, _) => (input.len(), outputs),
                (LayerSpec::Conv2d { outputs, window }, SampleShape::Image(image)) => {
                    let area = window.kernel * window.kernel;
                    (image.channels * area, outputs * area)
                }
                (layer, _) if layer.is_normalization() => {
                    let features = match input {
                        SampleShape::Flat(features) => features,
                        SampleShape::Image(image) => image.channels,
                    };
                    params.push(vec![1.0; features]);
                    params.push(vec![0.0; features]);
                    continue;
                }
                _ => continue,
            };
            let (weight_limit, bias_limit) = match init {
                Init::Keras => ((6.0 / (fan_in + fan_out) as f64).sqrt(), 0.0),
                Init::Torch => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    (bound, bound)
                }
            };
            let mut uniform = |len: usize, limit: f64| -> Vec<f32> {
                (0..len)
                    .map(|_| (limit * (2.0 * rng.random::<f64>() - 1.0)) as f32)
                    .collect()
            };
            let outputs = match *layer {
                LayerSpec::Linear { outputs } | LayerSpec::Conv2d { outputs, .. } => outputs,
                _ => 0,
            };
            params.push(uniform(fan_in * outputs, weight_limit));
            params.push(uniform(outputs, bias_limit));
        }
        let running = spec
            .batchnorm_layers()
            .into_iter()
            .map(|layer| HostRunning {
                mean: vec![0.0; layer.features],
                var: vec![1.0; layer.features],
                batches_tracked: 0,
            })
            .collect();
        Self { params, running }
    }

    /// Refuses tensors whose sizes do not match `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        let params = spec.params();
        let layers = spec.batchnorm_layers();
        if self.params.len() != params.len() || self.running.len() != layers.len() {
            return Err(Error::Shape(format!(
                "model has {} parameters and {} BatchNorm layers, the architecture {} and {}",
                self.params.len(),
                self.running.len(),
                params.len(),
                layers.len()
            )));
        }
        for (values, param) in self.params.iter().zip(&params) {
            crate::ops::check_len(&param.name, values.len(), param.len())?;
        }
        for (running, layer) in self.running.iter().zip(layers) {
            let index = layer.index;
            let features = layer.features;
            crate::ops::check_len(
                &format!("{index}.running_mean"),
                running.mean.len(),
                features,
            )?;
            crate::ops::check_len(&format!("{index}.running_var"), running.var.len(), features)?;
        }
        Ok(())
    }
}
