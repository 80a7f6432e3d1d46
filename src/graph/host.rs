//! A model's tensors on the host, by `state_dict` name: how they start, and their check
//! against an architecture.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::layers::Start;
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

/// Every tensor of a model's `state_dict`, on the host, by name: the parameters, the running
/// statistics, and each BatchNorm's count of training batches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostModel {
    tensors: BTreeMap<String, Vec<f32>>,
    /// `num_batches_tracked` by the BatchNorm node's name.
    batches_tracked: BTreeMap<String, u64>,
}

impl HostModel {
    /// Initial tensors drawn on the host from `seed`, so every backend starts from the same
    /// ones: each node's in order, a Linear's or convolution's weight, then its bias.
    pub fn initial(spec: &ModelSpec, init: Init, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Self::default();
        for tensor in spec.tensors() {
            let len = tensor.len();
            let mut uniform = |limit: f64| -> Vec<f32> {
                (0..len)
                    .map(|_| (limit * (2.0 * rng.random::<f64>() - 1.0)) as f32)
                    .collect()
            };
            let values = match (tensor.def.start, init) {
                (Start::Ones, _) => vec![1.0; len],
                (Start::Zeros, _) => vec![0.0; len],
                (Start::Weight { fan_in, fan_out }, Init::Keras) => {
                    uniform((6.0 / (fan_in + fan_out) as f64).sqrt())
                }
                (Start::Weight { fan_in, .. } | Start::Bias { fan_in }, Init::Torch) => {
                    uniform(1.0 / (fan_in as f64).sqrt())
                }
                // Drawn all the same, so that Keras and PyTorch starts share their weights'
                // random stream.
                (Start::Bias { .. }, Init::Keras) => uniform(0.0),
            };
            model.tensors.insert(tensor.name, values);
        }
        for batchnorm in spec.batchnorm_nodes() {
            model.batches_tracked.insert(batchnorm.name, 0);
        }
        model
    }

    /// Tensor `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&[f32]> {
        (self.tensors.get(name))
            .map(Vec::as_slice)
            .ok_or_else(|| Error::Shape(format!("the model has no tensor {name}")))
    }

    /// Tensor `name`, to be changed.
    pub fn tensor_mut(&mut self, name: &str) -> Result<&mut Vec<f32>> {
        (self.tensors.get_mut(name))
            .ok_or_else(|| Error::Shape(format!("the model has no tensor {name}")))
    }

    /// Sets tensor `name`.
    pub fn insert(&mut self, name: impl Into<String>, values: Vec<f32>) {
        self.tensors.insert(name.into(), values);
    }

    /// Every tensor by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[f32])> {
        (self.tensors.iter()).map(|(name, values)| (name.as_str(), values.as_slice()))
    }

    /// The training batches the BatchNorm node `node` has seen (`num_batches_tracked`).
    pub fn batches_tracked(&self, node: &str) -> Result<u64> {
        (self.batches_tracked.get(node).copied())
            .ok_or_else(|| Error::Shape(format!("the model has no BatchNorm {node}")))
    }

    /// Sets the count of BatchNorm node `node`.
    pub fn set_batches_tracked(&mut self, node: impl Into<String>, batches: u64) {
        self.batches_tracked.insert(node.into(), batches);
    }

    /// The parameters in `ModelSpec::params` order: the layout of the optimizer's arena.
    pub fn params(&self, spec: &ModelSpec) -> Result<Vec<&[f32]>> {
        (spec.params().iter())
            .map(|param| self.tensor(&param.name))
            .collect()
    }

    /// Refuses tensors whose names or sizes do not match `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        let expected = spec.tensors();
        for tensor in &expected {
            crate::ops::check_len(&tensor.name, self.tensor(&tensor.name)?.len(), tensor.len())?;
        }
        if let Some(extra) =
            (self.tensors.keys()).find(|name| !expected.iter().any(|t| &t.name == *name))
        {
            return Err(Error::Shape(format!(
                "the model has a tensor {extra} the architecture does not"
            )));
        }
        let batchnorms = spec.batchnorm_nodes();
        for batchnorm in &batchnorms {
            self.batches_tracked(&batchnorm.name)?;
        }
        if self.batches_tracked.len() != batchnorms.len() {
            return Err(Error::Shape(format!(
                "the model counts batches for {} BatchNorm layers, the architecture has {}",
                self.batches_tracked.len(),
                batchnorms.len()
            )));
        }
        Ok(())
    }
}
