//! The MLP as a sequence of layers, each with its forward and backward side by side and the
//! state its backward needs saved in a named struct. Layer positions are those of the
//! equivalent `torch.nn.Sequential`, so parameter names match PyTorch's `state_dict`.

use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::backend::Backend;
pub use crate::ops::Compute;
use crate::ops::activation::DropoutMask;
use crate::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormShape, Mode, RunningStats,
};
use crate::ops::matmul::MatrixLayout;
use crate::{Dtype, Error, Result};

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

/// out = x·Wᵀ + b.
pub struct Linear<B: Backend> {
    /// [outputs, inputs], row-major as PyTorch stores it.
    pub weight: B::Buffer,
    /// One value per output.
    pub bias: B::Buffer,
    inputs: usize,
    outputs: usize,
}

/// The input, for dW.
pub struct LinearSaved<B: Backend> {
    input: B::Buffer,
}

/// The gradients of a Linear layer's parameters.
pub struct LinearGrads<B: Backend> {
    /// dL/dW, [outputs, inputs].
    pub weight: B::Buffer,
    /// dL/db.
    pub bias: B::Buffer,
}

impl<B: Compute> Linear<B> {
    /// y = x·Wᵀ + b, stored as `output`.
    fn forward(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
        output: Dtype,
    ) -> Result<(B::Buffer, LinearSaved<B>)> {
        let mut y = backend.scratch_as(rows * self.outputs, output)?;
        backend.matmul(
            &x,
            MatrixLayout::row_major(rows, self.inputs),
            &self.weight,
            MatrixLayout::row_major(self.outputs, self.inputs).transposed(),
            Some(&self.bias),
            &mut y,
        )?;
        Ok((y, LinearSaved { input: x }))
    }

    /// dW = dyᵀ·x, db = 1ᵀ·dy (the product with a row of ones sums the columns), and
    /// dx = dy·W unless the input is the data.
    fn backward(
        &self,
        backend: &B,
        saved: LinearSaved<B>,
        dy: &B::Buffer,
        rows: usize,
        ones: &B::Buffer,
        want_dx: bool,
    ) -> Result<(LinearGrads<B>, Option<B::Buffer>)> {
        let dy_layout = MatrixLayout::row_major(rows, self.outputs);
        let mut grads = LinearGrads {
            weight: backend.scratch(self.outputs * self.inputs)?,
            bias: backend.scratch(self.outputs)?,
        };
        backend.matmul(
            dy,
            dy_layout.transposed(),
            &saved.input,
            MatrixLayout::row_major(rows, self.inputs),
            None,
            &mut grads.weight,
        )?;
        backend.matmul(
            ones,
            MatrixLayout::row_major(1, rows),
            dy,
            dy_layout,
            None,
            &mut grads.bias,
        )?;
        if !want_dx {
            return Ok((grads, None));
        }
        let mut dx = backend.scratch(rows * self.inputs)?;
        backend.matmul(
            dy,
            dy_layout,
            &self.weight,
            MatrixLayout::row_major(self.outputs, self.inputs),
            None,
            &mut dx,
        )?;
        Ok((grads, Some(dx)))
    }
}

/// BatchNorm over the features of (rows, features) activations.
pub struct BatchNorm<B: Backend> {
    /// Its γ and β.
    pub affine: Affine<B>,
    /// Running mean and variance.
    pub running: RunningStats<B>,
    /// Training forwards so far (`num_batches_tracked` in PyTorch).
    pub batches_tracked: u64,
    features: usize,
    config: BatchNormConfig,
}

/// The input and the batch statistics it was normalized with.
pub struct BatchNormSaved<B: Backend> {
    input: B::Buffer,
    stats: B::Buffer,
}

impl<B: Compute> BatchNorm<B> {
    fn shape(&self, rows: usize) -> BatchNormShape {
        BatchNormShape {
            n: rows,
            c: self.features,
            s: 1,
        }
    }

    fn forward(
        &mut self,
        backend: &B,
        mode: Mode,
        x: B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, BatchNormSaved<B>)> {
        let shape = self.shape(rows);
        let mut out = BatchNormForward {
            y: backend.scratch_as(shape.numel(), backend.dtype_of(&x))?,
            stats: backend.scratch(shape.stats_len())?,
        };
        backend.batchnorm_forward(
            mode,
            &x,
            shape,
            &self.affine,
            &mut self.running,
            self.config,
            &mut out,
        )?;
        if mode == Mode::Train {
            self.batches_tracked += 1;
        }
        let saved = BatchNormSaved {
            input: x,
            stats: out.stats,
        };
        Ok((out.y, saved))
    }

    fn backward(
        &self,
        backend: &B,
        saved: BatchNormSaved<B>,
        dy: &B::Buffer,
        rows: usize,
    ) -> Result<BatchNormGrads<B>> {
        let shape = self.shape(rows);
        let mut grads = BatchNormGrads {
            dx: backend.scratch(shape.numel())?,
            dgamma: backend.scratch(shape.c)?,
            dbeta: backend.scratch(shape.c)?,
        };
        backend.batchnorm_backward(
            &saved.input,
            dy,
            shape,
            &self.affine.gamma,
            &saved.stats,
            &mut grads,
        )?;
        Ok(grads)
    }
}

/// The input, whose sign gates dy.
pub struct ReluSaved<B: Backend> {
    input: B::Buffer,
}

fn relu_forward<B: Compute>(backend: &B, x: B::Buffer) -> Result<(B::Buffer, ReluSaved<B>)> {
    let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
    backend.relu_forward(&x, &mut y)?;
    Ok((y, ReluSaved { input: x }))
}

fn relu_backward<B: Compute>(
    backend: &B,
    saved: ReluSaved<B>,
    dy: &B::Buffer,
) -> Result<B::Buffer> {
    let mut dx = backend.scratch(backend.len_of(dy))?;
    backend.relu_backward(&saved.input, dy, &mut dx)?;
    Ok(dx)
}

/// The mask's key (the mask itself is recomputed); `None` where dropout was the identity.
pub struct DropoutSaved {
    mask: Option<DropoutMask>,
}

fn dropout_forward<B: Compute>(
    backend: &B,
    mask: Option<DropoutMask>,
    x: B::Buffer,
) -> Result<(B::Buffer, DropoutSaved)> {
    let Some(mask) = mask else {
        return Ok((x, DropoutSaved { mask: None }));
    };
    let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
    backend.dropout_forward(&mask, &x, &mut y)?;
    Ok((y, DropoutSaved { mask: Some(mask) }))
}

fn dropout_backward<B: Compute>(
    backend: &B,
    saved: DropoutSaved,
    dy: B::Buffer,
) -> Result<B::Buffer> {
    let Some(mask) = saved.mask else {
        return Ok(dy);
    };
    let mut dx = backend.scratch(backend.len_of(&dy))?;
    backend.dropout_backward(&mask, &dy, &mut dx)?;
    Ok(dx)
}

/// One layer with its parameters on a backend.
pub enum Layer<B: Backend> {
    /// y = x·Wᵀ + b.
    Linear(Linear<B>),
    /// BatchNorm over the features.
    BatchNorm(BatchNorm<B>),
    /// y = max(x, 0).
    Relu,
    /// Inverted dropout in training, the identity in eval mode.
    Dropout {
        /// Probability of dropping each value.
        p: f32,
    },
}

enum Saved<B: Backend> {
    Linear(LinearSaved<B>),
    BatchNorm(BatchNormSaved<B>),
    Relu(ReluSaved<B>),
    Dropout(DropoutSaved),
}

/// What a forward pass leaves for its backward: each layer's saved state, in layer order, and
/// the mode it ran in (only a training forward saves what backward needs).
pub struct Tape<B: Backend> {
    mode: Mode,
    rows: usize,
    saved: Vec<Saved<B>>,
}

/// Which dropout masks a training forward draws: keyed by the run's seed and the global step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepKey {
    /// The run's seed.
    pub seed: u64,
    /// The global training step.
    pub step: u64,
}

/// Refuses an activation storage type the backend cannot hold.
pub(crate) fn check_activations<B: Backend>(backend: &B, dtype: Dtype) -> Result<()> {
    if backend.supports(dtype) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{} cannot store {dtype:?} activations",
        backend.describe()
    )))
}

/// The MLP on one backend.
pub struct Mlp<B: Backend> {
    /// The architecture.
    pub spec: ModelSpec,
    /// The layers in `Sequential` order.
    pub layers: Vec<Layer<B>>,
    /// How hidden activations are stored between layers (f16 needs `Backend::supports`). The
    /// input, the logits, every gradient, the parameters and all arithmetic stay f32.
    pub activations: Dtype,
    /// A row of ones at least as long as the largest batch seen, for bias gradients.
    ones: B::Buffer,
}

impl<B: Compute> Mlp<B> {
    /// Uploads `host` (checked against `spec`) to the backend.
    pub fn upload(backend: &B, spec: &ModelSpec, host: &HostModel) -> Result<Self> {
        Self::upload_with_weights(backend, spec, host, Dtype::F32)
    }

    /// For inference in half precision: the Linear weights stored as `dtype` (each rounded
    /// once) and the activations too; biases, BatchNorm's parameters and statistics and all
    /// arithmetic stay f32. A model with f16 weights cannot be trained (the optimizer kernels
    /// take f32 only and refuse it).
    pub fn upload_for_inference(
        backend: &B,
        spec: &ModelSpec,
        host: &HostModel,
        dtype: Dtype,
    ) -> Result<Self> {
        let mut model = Self::upload_with_weights(backend, spec, host, dtype)?;
        model.activations = dtype;
        Ok(model)
    }

    fn upload_with_weights(
        backend: &B,
        spec: &ModelSpec,
        host: &HostModel,
        weights: Dtype,
    ) -> Result<Self> {
        spec.validate()?;
        host.check(spec)?;
        let mut params = host.params.iter();
        let mut running = host.running.iter();
        let mut next_param = |dtype: Dtype| -> Result<B::Buffer> {
            let values = params
                .next()
                .ok_or_else(|| Error::Shape("model is missing a parameter".to_string()))?;
            backend.upload_as(values, dtype)
        };
        let mut layers = Vec::new();
        for layer in spec.layers() {
            layers.push(match layer {
                LayerSpec::Linear { inputs, outputs } => Layer::Linear(Linear {
                    weight: next_param(weights)?,
                    bias: next_param(Dtype::F32)?,
                    inputs,
                    outputs,
                }),
                LayerSpec::BatchNorm { features } => {
                    let affine = Affine {
                        gamma: next_param(Dtype::F32)?,
                        beta: next_param(Dtype::F32)?,
                    };
                    let stats = running.next().ok_or_else(|| {
                        Error::Shape("model is missing running statistics".to_string())
                    })?;
                    Layer::BatchNorm(BatchNorm {
                        affine,
                        running: RunningStats {
                            mean: backend.upload(&stats.mean)?,
                            var: backend.upload(&stats.var)?,
                        },
                        batches_tracked: stats.batches_tracked,
                        features,
                        config: spec.batchnorm_config,
                    })
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Dropout { p } => Layer::Dropout { p },
            });
        }
        Ok(Self {
            spec: spec.clone(),
            layers,
            activations: Dtype::F32,
            ones: backend.filled(1, 1.0)?,
        })
    }

    /// Copies every tensor of the `state_dict` back to the host.
    pub fn download(&self, backend: &B) -> Result<HostModel> {
        let mut host = HostModel {
            params: Vec::new(),
            running: Vec::new(),
        };
        for layer in &self.layers {
            match layer {
                Layer::Linear(linear) => {
                    host.params.push(backend.download(&linear.weight)?);
                    host.params.push(backend.download(&linear.bias)?);
                }
                Layer::BatchNorm(bn) => {
                    host.params.push(backend.download(&bn.affine.gamma)?);
                    host.params.push(backend.download(&bn.affine.beta)?);
                    host.running.push(HostRunning {
                        mean: backend.download(&bn.running.mean)?,
                        var: backend.download(&bn.running.var)?,
                        batches_tracked: bn.batches_tracked,
                    });
                }
                Layer::Relu | Layer::Dropout { .. } => {}
            }
        }
        Ok(host)
    }

    /// The parameters, in `ModelSpec::params` order, for the optimizer to update.
    pub fn params_mut(&mut self) -> Vec<&mut B::Buffer> {
        let mut params = Vec::new();
        for layer in &mut self.layers {
            match layer {
                Layer::Linear(linear) => {
                    params.push(&mut linear.weight);
                    params.push(&mut linear.bias);
                }
                Layer::BatchNorm(bn) => {
                    params.push(&mut bn.affine.gamma);
                    params.push(&mut bn.affine.beta);
                }
                Layer::Relu | Layer::Dropout { .. } => {}
            }
        }
        params
    }

    /// Logits of `x` (rows × inputs, consumed). `Mode::Train` uses batch statistics, updates
    /// the running ones and draws dropout masks from `key`; `Mode::Eval` changes nothing.
    pub fn forward(
        &mut self,
        backend: &B,
        mode: Mode,
        x: B::Buffer,
        rows: usize,
        key: StepKey,
    ) -> Result<(B::Buffer, Tape<B>)> {
        check_activations(backend, self.activations)?;
        let mut saved = Vec::with_capacity(self.layers.len());
        let mut h = x;
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let (out, state) = match layer {
                Layer::Linear(linear) => {
                    let output = if index == last {
                        Dtype::F32
                    } else {
                        self.activations
                    };
                    let (y, s) = linear.forward(backend, h, rows, output)?;
                    (y, Saved::Linear(s))
                }
                Layer::BatchNorm(bn) => {
                    let (y, s) = bn.forward(backend, mode, h, rows)?;
                    (y, Saved::BatchNorm(s))
                }
                Layer::Relu => {
                    let (y, s) = relu_forward(backend, h)?;
                    (y, Saved::Relu(s))
                }
                Layer::Dropout { p } => {
                    let mask = (mode == Mode::Train && *p > 0.0)
                        .then(|| DropoutMask::new(*p, key.seed, index as u32, key.step));
                    let (y, s) = dropout_forward(backend, mask, h)?;
                    (y, Saved::Dropout(s))
                }
            };
            h = out;
            saved.push(state);
        }
        Ok((h, Tape { mode, rows, saved }))
    }

    /// Gradients of every parameter, in `ModelSpec::params` order, from a training forward's
    /// tape and the loss gradient with respect to the logits.
    pub fn backward(
        &mut self,
        backend: &B,
        tape: Tape<B>,
        dlogits: B::Buffer,
    ) -> Result<Vec<B::Buffer>> {
        if tape.mode != Mode::Train {
            return Err(Error::InvalidArgument(
                "backward needs the tape of a training-mode forward; this one ran in eval mode, \
                 which saves running statistics and no dropout mask"
                    .to_string(),
            ));
        }
        let rows = tape.rows;
        if backend.len_of(&self.ones) < rows {
            self.ones = backend.filled(rows, 1.0)?;
        }
        let mut grads_reversed = Vec::new();
        let mut dy = dlogits;
        for (index, (layer, saved)) in self.layers.iter().zip(tape.saved).enumerate().rev() {
            dy = match (layer, saved) {
                (Layer::Linear(linear), Saved::Linear(s)) => {
                    let (grads, dx) =
                        linear.backward(backend, s, &dy, rows, &self.ones, index > 0)?;
                    grads_reversed.push(grads.bias);
                    grads_reversed.push(grads.weight);
                    match dx {
                        Some(dx) => dx,
                        None => break,
                    }
                }
                (Layer::BatchNorm(bn), Saved::BatchNorm(s)) => {
                    let grads = bn.backward(backend, s, &dy, rows)?;
                    grads_reversed.push(grads.dbeta);
                    grads_reversed.push(grads.dgamma);
                    grads.dx
                }
                (Layer::Relu, Saved::Relu(s)) => relu_backward(backend, s, &dy)?,
                (Layer::Dropout { .. }, Saved::Dropout(s)) => dropout_backward(backend, s, dy)?,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "the tape does not match layer {index}"
                    )));
                }
            };
        }
        grads_reversed.reverse();
        Ok(grads_reversed)
    }
}
