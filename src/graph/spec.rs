//! The architecture, and a model's tensors on the host: what `Mlp` is built from and saved as.

use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::ops::batchnorm::BatchNormConfig;
use crate::{Error, Result};

/// The architecture: inputs → [Linear → (BatchNorm) → ReLU → Dropout] per hidden width → Linear.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelSpec {
    /// Features per input row (784 for MNIST).
    pub inputs: usize,
    /// Width of each hidden layer, in order.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
    /// Whether each hidden Linear is followed by BatchNorm.
    pub batchnorm: bool,
    /// Dropout probability after each hidden ReLU, in [0, 1).
    pub dropout: f32,
    /// eps, momentum and running-variance convention of every BatchNorm layer.
    pub batchnorm_config: BatchNormConfig,
}

/// One layer of the architecture, at its `Sequential` index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerSpec {
    /// A fully connected layer.
    Linear {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
    /// BatchNorm1d over `features`.
    BatchNorm {
        /// Features normalized.
        features: usize,
    },
    /// max(x, 0).
    Relu,
    /// Inverted dropout.
    Dropout {
        /// Probability of dropping each value.
        p: f32,
    },
}

/// A learned tensor: its `state_dict` name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// The `state_dict` name, e.g. `0.weight`.
    pub name: String,
    /// Its shape, PyTorch's order.
    pub shape: Vec<usize>,
}

impl ParamSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is a Linear layer's weight matrix (the only parameter that inference in half
    /// precision stores as f16).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }
}

impl ModelSpec {
    /// The course material's MNIST MLP: 784 → Linear 128 → (BatchNorm) → ReLU → Dropout 0.2 →
    /// Linear 10, with PyTorch's BatchNorm settings.
    pub fn reference_mlp(batchnorm: bool) -> Self {
        Self {
            inputs: crate::data::mnist::PIXELS,
            hidden: vec![128],
            classes: crate::data::mnist::CLASSES,
            batchnorm,
            dropout: 0.2,
            batchnorm_config: BatchNormConfig::default(),
        }
    }

    /// Refuses architectures that cannot be built.
    pub fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.classes == 0 || self.hidden.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "layer widths must be positive, got inputs {}, hidden {:?}, classes {}",
                self.inputs, self.hidden, self.classes
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidArgument(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        // Kernels index with u32; beyond that, shape arithmetic could also overflow.
        for param in self.params() {
            let elements = (param.shape.iter())
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .filter(|&n| n <= u64::from(u32::MAX));
            if elements.is_none() {
                return Err(Error::Limit(format!(
                    "{} of shape {:?} exceeds the 2^32 elements a kernel can index",
                    param.name, param.shape
                )));
            }
        }
        Ok(())
    }

    /// Learned values in all parameters (after `validate`, this cannot overflow).
    pub fn param_count(&self) -> u64 {
        self.params().iter().map(|p| p.len() as u64).sum()
    }

    /// The layers in `Sequential` order.
    pub fn layers(&self) -> Vec<LayerSpec> {
        let mut layers = Vec::new();
        let mut width = self.inputs;
        for &outputs in &self.hidden {
            layers.push(LayerSpec::Linear {
                inputs: width,
                outputs,
            });
            if self.batchnorm {
                layers.push(LayerSpec::BatchNorm { features: outputs });
            }
            layers.push(LayerSpec::Relu);
            layers.push(LayerSpec::Dropout { p: self.dropout });
            width = outputs;
        }
        layers.push(LayerSpec::Linear {
            inputs: width,
            outputs: self.classes,
        });
        layers
    }

    /// The learned tensors in order: per Linear weight [out, in] and bias, per BatchNorm
    /// weight (γ) and bias (β).
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut params = Vec::new();
        for (index, layer) in self.layers().into_iter().enumerate() {
            let (weight, bias) = match layer {
                LayerSpec::Linear { inputs, outputs } => (vec![outputs, inputs], vec![outputs]),
                LayerSpec::BatchNorm { features } => (vec![features], vec![features]),
                LayerSpec::Relu | LayerSpec::Dropout { .. } => continue,
            };
            params.push(ParamSpec {
                name: format!("{index}.weight"),
                shape: weight,
            });
            params.push(ParamSpec {
                name: format!("{index}.bias"),
                shape: bias,
            });
        }
        params
    }

    /// `Sequential` indices of the BatchNorm layers, with their widths.
    pub fn batchnorm_layers(&self) -> Vec<(usize, usize)> {
        self.layers()
            .into_iter()
            .enumerate()
            .filter_map(|(index, layer)| match layer {
                LayerSpec::BatchNorm { features } => Some((index, features)),
                _ => None,
            })
            .collect()
    }

    /// The PyTorch module this model's `state_dict` loads into.
    pub fn torch_module(&self) -> String {
        let layers: Vec<String> = self
            .layers()
            .into_iter()
            .map(|layer| match layer {
                LayerSpec::Linear { inputs, outputs } => format!("nn.Linear({inputs}, {outputs})"),
                LayerSpec::BatchNorm { features } => {
                    let config = self.batchnorm_config;
                    if config == BatchNormConfig::default() {
                        format!("nn.BatchNorm1d({features})")
                    } else {
                        format!(
                            "nn.BatchNorm1d({features}, eps={}, momentum={})",
                            config.eps(),
                            config.momentum()
                        )
                    }
                }
                LayerSpec::Relu => "nn.ReLU()".to_string(),
                LayerSpec::Dropout { p } => format!("nn.Dropout({p})"),
            })
            .collect();
        format!("nn.Sequential({})", layers.join(", "))
    }
}

/// How weights start: Keras' `glorot_uniform` (weights U(±sqrt(6/(in + out))), zero biases) or
/// PyTorch's `nn.Linear` default (weights and biases U(±1/sqrt(in))). BatchNorm starts at γ = 1,
/// β = 0, running mean 0, running variance 1 in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Keras' `glorot_uniform` weights and zero biases.
    Keras,
    /// PyTorch's `nn.Linear` default: U(±1/sqrt(in)) for both.
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
        for layer in spec.layers() {
            match layer {
                LayerSpec::Linear { inputs, outputs } => {
                    let (weight_limit, bias_limit) = match init {
                        Init::Keras => ((6.0 / (inputs + outputs) as f64).sqrt(), 0.0),
                        Init::Torch => {
                            let bound = 1.0 / (inputs as f64).sqrt();
                            (bound, bound)
                        }
                    };
                    let mut uniform = |len: usize, limit: f64| -> Vec<f32> {
                        (0..len)
                            .map(|_| (limit * (2.0 * rng.random::<f64>() - 1.0)) as f32)
                            .collect()
                    };
                    params.push(uniform(inputs * outputs, weight_limit));
                    params.push(uniform(outputs, bias_limit));
                }
                LayerSpec::BatchNorm { features } => {
                    params.push(vec![1.0; features]);
                    params.push(vec![0.0; features]);
                }
                LayerSpec::Relu | LayerSpec::Dropout { .. } => {}
            }
        }
        let running = spec
            .batchnorm_layers()
            .into_iter()
            .map(|(_, features)| HostRunning {
                mean: vec![0.0; features],
                var: vec![1.0; features],
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
        for (running, (index, features)) in self.running.iter().zip(layers) {
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
