//! A model as a sequence of layers, each with its forward and backward side by side and the
//! state its backward needs saved in a named struct (`layers.rs`, `image_layers.rs`). Layer
//! positions are those of the equivalent `torch.nn.Sequential`, so parameter names match
//! PyTorch's `state_dict`; `spec.rs` describes the architecture, `arch.rs` names and parses
//! it, and `host.rs` holds a model's tensors on the host.

mod arch;
mod host;
mod image_layers;
mod layers;
mod spec;

pub use arch::{ARCH_GRAMMAR, MNIST_IMAGE, Preset, parse_layers};
pub use host::{HostModel, HostRunning, Init};
pub use image_layers::{Conv2d, Conv2dSaved, MaxPool2d, MaxPoolSaved};
pub use layers::{
    BatchNorm, BatchNormSaved, DropoutSaved, Linear, LinearGrads, LinearSaved, ReluSaved,
};
pub use spec::{BatchNormLayer, Image, LayerSpec, ModelSpec, ParamSpec, SampleShape};

use crate::backend::Backend;
pub use crate::ops::Compute;
use crate::ops::activation::{Activation, DropoutMask};
use crate::ops::batchnorm::{Affine, Mode, RunningStats};
use crate::{Dtype, Error, Result};
use image_layers::{avg_pool_backward, avg_pool_forward, flatten, flatten_is_identity};
use layers::{dropout_backward, dropout_forward, relu_backward, relu_forward};

/// One layer with its parameters on a backend.
pub enum Layer<B: Backend> {
    /// y = x·Wᵀ + b.
    Linear(Linear<B>),
    /// A 2-D convolution.
    Conv2d(Conv2d<B>),
    /// BatchNorm over the features, or over each channel's positions.
    BatchNorm(BatchNorm<B>),
    /// y = max(x, 0).
    Relu,
    /// Inverted dropout in training, the identity in eval mode.
    Dropout {
        /// Probability of dropping each value.
        p: f32,
    },
    /// The maximum of each window.
    MaxPool2d(MaxPool2d),
    /// The mean of each channel over images of this shape.
    AvgPool(Image),
    /// Images of this shape to flat features in PyTorch's order.
    Flatten(Image),
}

enum Saved<B: Backend> {
    Linear(LinearSaved<B>),
    Conv2d(Conv2dSaved<B>),
    BatchNorm(BatchNormSaved<B>),
    Relu(ReluSaved<B>),
    Dropout(DropoutSaved),
    MaxPool2d(MaxPoolSaved<B>),
    /// Pooling and flattening save nothing.
    Reshaped,
    /// A ReLU that ran inside the BatchNorm before it.
    ReluInBatchNorm,
    /// A dropout that ran inside the ReLU before it (one pass over memory each way).
    DropoutInRelu,
}

/// Whether the last layer saved is a ReLU (which then runs the dropout after it).
fn saved_relu<B: Backend>(saved: &[Saved<B>]) -> bool {
    matches!(saved.last(), Some(Saved::Relu(_) | Saved::ReluInBatchNorm))
}

/// Whether the layer at `at` keeps its input for its backward, where the BatchNorm before a
/// ReLU finds the ReLU's output (dropout and a flatten that moves nothing pass it on).
fn keeps_input<B: Backend>(layers: &[Layer<B>], at: usize) -> bool {
    match layers.get(at) {
        Some(Layer::Linear(_) | Layer::Conv2d(_) | Layer::MaxPool2d(_)) => true,
        Some(Layer::Dropout { .. }) => keeps_input(layers, at + 1),
        Some(Layer::Flatten(image)) if flatten_is_identity(*image) => keeps_input(layers, at + 1),
        _ => false,
    }
}

/// Whether the last layer saved is a BatchNorm that ran the ReLU after it.
fn saved_batchnorm_activation<B: Backend>(saved: &[Saved<B>]) -> bool {
    matches!(saved.last(), Some(Saved::BatchNorm(s)) if s.activation().is_some())
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

/// A model on one backend.
pub struct Sequential<B: Backend> {
    /// The architecture.
    pub spec: ModelSpec,
    /// The layers in `Sequential` order.
    pub layers: Vec<Layer<B>>,
    /// How hidden activations are stored between layers (f16 needs `Backend::supports`). The
    /// input, the logits, every gradient, the parameters and all arithmetic stay f32.
    pub activations: Dtype,
    /// Values in each parameter, in `ModelSpec::params` order: the gradient arena's layout.
    param_lens: Vec<usize>,
}

impl<B: Compute> Sequential<B> {
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
        host.check(spec)?;
        // Trainable f32 parameters share one arena, so the optimizer updates them in one pass.
        let mut params = if weights == Dtype::F32 {
            let values: Vec<&[f32]> = host.params.iter().map(Vec::as_slice).collect();
            backend.upload_arena(&values)?
        } else {
            (host.params.iter().zip(spec.params()))
                .map(|(values, param)| {
                    let dtype = if param.is_matrix() {
                        weights
                    } else {
                        Dtype::F32
                    };
                    backend.upload_as(values, dtype)
                })
                .collect::<Result<_>>()?
        }
        .into_iter();
        let mut running = host.running.iter();
        let mut next_param = || -> Result<B::Buffer> {
            params
                .next()
                .ok_or_else(|| Error::Shape("model is missing a parameter".to_string()))
        };
        let mut layers = Vec::new();
        let image = |shape: SampleShape| match shape {
            SampleShape::Image(image) => Ok(image),
            SampleShape::Flat(_) => Err(Error::Shape(format!("{shape:?} is not an image"))),
        };
        for (&layer, &input) in spec.layers().iter().zip(spec.shapes()) {
            layers.push(match layer {
                LayerSpec::Linear { outputs } => Layer::Linear(Linear {
                    weight: next_param()?,
                    bias: next_param()?,
                    inputs: input.len(),
                    outputs,
                }),
                LayerSpec::Conv2d { outputs, window } => Layer::Conv2d(Conv2d {
                    weight: next_param()?,
                    bias: next_param()?,
                    input: image(input)?,
                    outputs,
                    window,
                }),
                LayerSpec::BatchNorm => {
                    let affine = Affine {
                        gamma: next_param()?,
                        beta: next_param()?,
                    };
                    let stats = running.next().ok_or_else(|| {
                        Error::Shape("model is missing running statistics".to_string())
                    })?;
                    let (features, positions) = match input {
                        SampleShape::Flat(features) => (features, 1),
                        SampleShape::Image(image) => (image.channels, image.positions()),
                    };
                    Layer::BatchNorm(BatchNorm {
                        affine,
                        running: RunningStats {
                            mean: backend.upload(&stats.mean)?,
                            var: backend.upload(&stats.var)?,
                        },
                        batches_tracked: stats.batches_tracked,
                        features,
                        positions,
                        config: spec.batchnorm_config(),
                    })
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Dropout { p } => Layer::Dropout { p },
                LayerSpec::MaxPool2d { window } => Layer::MaxPool2d(MaxPool2d {
                    input: image(input)?,
                    window,
                }),
                LayerSpec::AvgPool => Layer::AvgPool(image(input)?),
                LayerSpec::Flatten => Layer::Flatten(image(input)?),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            layers,
            activations: Dtype::F32,
            param_lens: spec.params().iter().map(ParamSpec::len).collect(),
        })
    }

    /// Copies every tensor of the `state_dict` back to the host.
    pub fn download(&self, backend: &B) -> Result<HostModel> {
        self.host_model(backend.download_many(&self.tensors())?)
    }

    /// Every tensor of the `state_dict` on the device: the parameters in `ModelSpec::params`
    /// order, then each BatchNorm layer's running mean and variance, so that one
    /// `download_many` reads them all.
    pub fn tensors(&self) -> Vec<&B::Buffer> {
        let mut tensors = Vec::new();
        let mut running = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::Linear(linear) => tensors.extend([&linear.weight, &linear.bias]),
                Layer::Conv2d(conv) => tensors.extend([&conv.weight, &conv.bias]),
                Layer::BatchNorm(bn) => {
                    tensors.extend([&bn.affine.gamma, &bn.affine.beta]);
                    running.extend([&bn.running.mean, &bn.running.var]);
                }
                _ => {}
            }
        }
        tensors.extend(running);
        tensors
    }

    /// The host model from the values of `tensors`, in that order.
    pub fn host_model(&self, values: Vec<Vec<f32>>) -> Result<HostModel> {
        let params = self.spec.params().len();
        let batchnorms: Vec<u64> = (self.layers.iter())
            .filter_map(|layer| match layer {
                Layer::BatchNorm(bn) => Some(bn.batches_tracked),
                _ => None,
            })
            .collect();
        if values.len() != params + 2 * batchnorms.len() {
            return Err(Error::Shape(format!(
                "{} tensors for a model of {params} parameters and {} BatchNorm layers",
                values.len(),
                batchnorms.len()
            )));
        }
        let mut values = values.into_iter();
        let params = values.by_ref().take(params).collect();
        let running = batchnorms
            .into_iter()
            .map(|batches_tracked| HostRunning {
                mean: values.next().unwrap_or_default(),
                var: values.next().unwrap_or_default(),
                batches_tracked,
            })
            .collect();
        Ok(HostModel { params, running })
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
                Layer::Conv2d(conv) => {
                    params.push(&mut conv.weight);
                    params.push(&mut conv.bias);
                }
                Layer::BatchNorm(bn) => {
                    params.push(&mut bn.affine.gamma);
                    params.push(&mut bn.affine.beta);
                }
                _ => {}
            }
        }
        params
    }

    /// The dropout mask each layer draws in this forward (`None` for other layers, in eval
    /// mode and where p = 0).
    fn dropout_masks(&self, mode: Mode, key: StepKey) -> Vec<Option<DropoutMask>> {
        (self.layers.iter().enumerate())
            .map(|(index, layer)| match layer {
                Layer::Dropout { p } if mode == Mode::Train && *p > 0.0 => {
                    Some(DropoutMask::new(*p, key.seed, index as u32, key.step))
                }
                _ => None,
            })
            .collect()
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
        let masks = self.dropout_masks(mode, key);
        // A ReLU runs in the BatchNorm's pass where its backward can find the ReLU's output.
        let fuse_relu: Vec<bool> = (1..=self.layers.len())
            .map(|next| {
                matches!(self.layers.get(next), Some(Layer::Relu))
                    && keeps_input(&self.layers, next + 1)
            })
            .collect();
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
                Layer::Conv2d(conv) => {
                    let (y, s) = conv.forward(backend, h, rows, self.activations)?;
                    (y, Saved::Conv2d(s))
                }
                Layer::BatchNorm(bn) => {
                    // A ReLU right after runs in the BatchNorm's pass, with the dropout after it.
                    let activation = fuse_relu[index].then(|| Activation {
                        relu: true,
                        dropout: masks.get(index + 2).copied().flatten(),
                    });
                    let (y, s) = bn.forward(backend, mode, h, rows, activation)?;
                    (y, Saved::BatchNorm(s))
                }
                Layer::Relu if saved_batchnorm_activation(&saved) => (h, Saved::ReluInBatchNorm),
                Layer::Relu => {
                    let fused = masks.get(index + 1).copied().flatten();
                    let (y, s) = relu_forward(backend, h, fused)?;
                    (y, Saved::Relu(s))
                }
                Layer::Dropout { .. } if masks[index].is_some() && saved_relu(&saved) => {
                    (h, Saved::DropoutInRelu)
                }
                Layer::Dropout { .. } => {
                    let (y, s) = dropout_forward(backend, masks[index], h)?;
                    (y, Saved::Dropout(s))
                }
                Layer::MaxPool2d(pool) => {
                    let (y, s) = pool.forward(backend, h, rows)?;
                    (y, Saved::MaxPool2d(s))
                }
                Layer::AvgPool(image) => (
                    avg_pool_forward(backend, *image, &h, rows)?,
                    Saved::Reshaped,
                ),
                Layer::Flatten(image) => {
                    (flatten(backend, *image, h, rows, false)?, Saved::Reshaped)
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
        &self,
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
        // The gradients share one arena laid out as the parameters', so the optimizer can
        // update all parameters in one pass. Walking backwards, each layer takes its slots from
        // the end.
        let mut slots = backend.scratch_arena(&self.param_lens)?;
        let mut next_slot = move || {
            slots
                .pop()
                .ok_or_else(|| Error::Shape("the model has more parameters than its spec".into()))
        };
        let mut grads_reversed = Vec::new();
        let mut dy = dlogits;
        // The input saved by the layer after the current one: the current layer's output,
        // where the layers between passed it on unchanged.
        let mut following_input = None;
        for (index, (layer, saved)) in self.layers.iter().zip(tape.saved).enumerate().rev() {
            dy = match (layer, saved) {
                (Layer::Linear(linear), Saved::Linear(s)) => {
                    let mut grads = LinearGrads {
                        bias: next_slot()?,
                        weight: next_slot()?,
                    };
                    let (dx, input) =
                        linear.backward(backend, s, &dy, rows, &mut grads, index > 0)?;
                    following_input = Some(input);
                    grads_reversed.push(grads.bias);
                    grads_reversed.push(grads.weight);
                    match dx {
                        Some(dx) => dx,
                        None => break,
                    }
                }
                (Layer::Conv2d(conv), Saved::Conv2d(s)) => {
                    let mut grads = LinearGrads {
                        bias: next_slot()?,
                        weight: next_slot()?,
                    };
                    let (dx, input) =
                        conv.backward(backend, s, &dy, rows, &mut grads, index > 0)?;
                    following_input = Some(input);
                    grads_reversed.push(grads.bias);
                    grads_reversed.push(grads.weight);
                    match dx {
                        Some(dx) => dx,
                        None => break,
                    }
                }
                (Layer::MaxPool2d(pool), Saved::MaxPool2d(s)) => {
                    let (dx, input) = pool.backward(backend, s, &dy, rows)?;
                    following_input = Some(input);
                    dx
                }
                (Layer::AvgPool(image), Saved::Reshaped) => {
                    following_input = None;
                    avg_pool_backward(backend, *image, &dy, rows)?
                }
                (Layer::Flatten(image), Saved::Reshaped) => {
                    if !flatten_is_identity(*image) {
                        following_input = None;
                    }
                    flatten(backend, *image, dy, rows, true)?
                }
                (Layer::BatchNorm(bn), Saved::BatchNorm(s)) => {
                    let dbeta = next_slot()?;
                    let dgamma = next_slot()?;
                    let activated = following_input.take();
                    let grads =
                        bn.backward(backend, s, activated.as_ref(), &dy, rows, dgamma, dbeta)?;
                    grads_reversed.push(grads.dbeta);
                    grads_reversed.push(grads.dgamma);
                    grads.dx
                }
                (Layer::Relu, Saved::Relu(s)) => {
                    following_input = None;
                    relu_backward(backend, s, &dy)?
                }
                (Layer::Dropout { .. }, Saved::Dropout(s)) => {
                    if !s.is_identity() {
                        following_input = None;
                    }
                    dropout_backward(backend, s, dy)?
                }
                (Layer::Relu, Saved::ReluInBatchNorm)
                | (Layer::Dropout { .. }, Saved::DropoutInRelu) => dy,
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
