//! A model as a sequence of layers, each with its forward and backward side by side and the
//! state its backward needs saved in a named struct (`layers.rs`, `image_layers.rs`). Layer
//! positions are those of the equivalent `torch.nn.Sequential`, so parameter names match
//! PyTorch's `state_dict`; `layer_spec.rs` and `spec.rs` describe the architecture, `arch.rs`
//! names and parses it, `host.rs` holds a model's tensors on the host and `tensors.rs` moves
//! them to and from the device.

mod arch;
mod fold;
mod host;
mod image_layers;
mod layer_spec;
mod layers;
mod presets;
mod spec;
mod tensors;

pub use arch::{ARCH_GRAMMAR, parse_layers};
pub use fold::fold_batchnorm;
pub use host::{HostModel, HostRunning, Init};
pub use image_layers::{Conv2d, Conv2dSaved, MaxPool2d, MaxPoolSaved};
pub use layer_spec::{Image, LayerSpec, SampleShape};
pub use layers::{
    BatchNorm, BatchNormSaved, DropoutSaved, GroupNorm, GroupNormSaved, Linear, LinearGrads,
    LinearSaved, ReluSaved,
};
pub use presets::{MNIST_IMAGE, Norm, Preset};
pub use spec::{BatchNormLayer, ModelSpec, ParamSpec};

use crate::backend::Backend;
pub use crate::ops::Compute;
use crate::ops::activation::{Activation, DropoutMask};
use crate::ops::batchnorm::Mode;
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
    /// LayerNorm, GroupNorm or InstanceNorm: statistics per sample (and group).
    GroupNorm(GroupNorm<B>),
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
    GroupNorm(GroupNormSaved<B>),
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
    /// Each BatchNorm layer's input in an eval-mode forward of `x` (`rows` samples), in layer
    /// order and channels-last: what a diagnosis of its running statistics compares them on.
    pub fn batchnorm_inputs(
        &mut self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let no_dropout = StepKey { seed: 0, step: 0 };
        let (_, tape) = self.forward(backend, Mode::Eval, x, rows, no_dropout)?;
        let inputs: Vec<&B::Buffer> = (tape.saved.iter())
            .filter_map(|saved| match saved {
                Saved::BatchNorm(saved) => Some(saved.input()),
                _ => None,
            })
            .collect();
        backend.download_many(&inputs)
    }

    /// The BatchNorm layers, in order.
    pub fn batchnorms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm<B>> {
        self.layers.iter_mut().filter_map(|layer| match layer {
            Layer::BatchNorm(bn) => Some(bn),
            _ => None,
        })
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
                Layer::GroupNorm(norm) => {
                    let (y, s) = norm.forward(backend, h, rows)?;
                    (y, Saved::GroupNorm(s))
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
                    let (y, s) = pool.forward(backend, mode, h, rows)?;
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
        self.backward_observed(backend, tape, dlogits, &mut |_, _| Ok(()))
    }

    /// `backward`, showing `observe(index, dx)` the gradient reaching the input of each Linear
    /// and convolution layer after the first, as it is computed.
    pub fn backward_observed(
        &self,
        backend: &B,
        tape: Tape<B>,
        dlogits: B::Buffer,
        observe: &mut dyn FnMut(usize, &B::Buffer) -> Result<()>,
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
                // A Linear and a convolution (a Linear over im2col's rows) take the same slots.
                weighted @ ((Layer::Linear(_), Saved::Linear(_))
                | (Layer::Conv2d(_), Saved::Conv2d(_))) => {
                    let mut grads = LinearGrads {
                        bias: next_slot()?,
                        weight: next_slot()?,
                    };
                    let needs_dx = index > 0;
                    let (dx, input) = match weighted {
                        (Layer::Linear(linear), Saved::Linear(s)) => {
                            linear.backward(backend, s, &dy, rows, &mut grads, needs_dx)?
                        }
                        (Layer::Conv2d(conv), Saved::Conv2d(s)) => {
                            conv.backward(backend, s, &dy, rows, &mut grads, needs_dx)?
                        }
                        _ => unreachable!("matched as a Linear or a convolution above"),
                    };
                    following_input = Some(input);
                    grads_reversed.push(grads.bias);
                    grads_reversed.push(grads.weight);
                    match dx {
                        Some(dx) => {
                            observe(index, &dx)?;
                            dx
                        }
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
                (Layer::GroupNorm(norm), Saved::GroupNorm(s)) => {
                    following_input = None;
                    let dbeta = next_slot()?;
                    let dgamma = next_slot()?;
                    let grads = norm.backward(backend, s, &dy, rows, dgamma, dbeta)?;
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
