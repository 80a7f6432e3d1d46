//! Every layer kind in one file of its own: its `--arch` token, the shape it gives, its named
//! tensors with their shapes and how they start, its PyTorch module, its ONNX node, and on a
//! backend its forward and backward side by side with the state the backward needs. This file
//! is the registry: adding a layer kind is its file and one line in `registry!` below.

mod avg_pool;
mod batchnorm;
mod conv2d;
mod dropout;
mod flatten;
mod groupnorm;
mod linear;
mod max_pool;
mod relu;

pub use avg_pool::AvgPool;
pub use batchnorm::{BatchNorm, BatchNormLayer};
pub use conv2d::Conv2d;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use groupnorm::{GroupNorm, Groups};
pub use linear::Linear;
pub use max_pool::MaxPool2d;
pub use relu::Relu;

pub(crate) use batchnorm::{features_and_positions, fold_into};

use std::fmt;
use std::rc::Rc;

use super::layer_spec::SampleShape;
use crate::backend::Backend;
use crate::distributed::Collective;
use crate::ops::Compute;
use crate::ops::activation::DropoutMask;
use crate::ops::batchnorm::{BatchNormConfig, Mode};
use crate::{Dtype, Error, Result};

/// A tensor in a forward or backward pass. Shared, because a value can feed several layers (a
/// residual block's input feeds its body and its shortcut) and a layer's backward may keep the
/// output of the layer before (a BatchNorm keeps the ReLU output it produced).
pub type Value<B> = Rc<<B as Backend>::Buffer>;

/// How a tensor of a layer starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Start {
    /// A weight matrix of a Linear or convolution: fan-in and fan-out count the kernel's taps.
    Weight {
        /// Inputs per output (input features, or channels·k²).
        fan_in: usize,
        /// Outputs per input (output features, or channels·k²).
        fan_out: usize,
    },
    /// The bias of a Linear or convolution whose weight has this fan-in.
    Bias {
        /// Inputs per output.
        fan_in: usize,
    },
    /// Every value 1 (γ, running variance).
    Ones,
    /// Every value 0 (β, running mean).
    Zeros,
}

/// One tensor a layer holds: its name in the layer (`weight`, `running_mean`), its shape in
/// PyTorch's order, how it starts, and whether the optimizer trains it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDef {
    /// The name within the layer: the last part of its `state_dict` name.
    pub name: &'static str,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// Its initial values.
    pub start: Start,
    /// Whether it is a parameter (else a running statistic).
    pub trained: bool,
}

impl TensorDef {
    pub(crate) fn param(name: &'static str, shape: Vec<usize>, start: Start) -> Self {
        Self {
            name,
            shape,
            start,
            trained: true,
        }
    }

    pub(crate) fn running(name: &'static str, shape: Vec<usize>, start: Start) -> Self {
        Self {
            name,
            shape,
            start,
            trained: false,
        }
    }
}

/// An ONNX attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum OnnxAttribute {
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
}

/// The ONNX node a layer becomes: its operator, attributes, and the layer's tensors it takes
/// after its input, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxNode {
    /// The operator (`Gemm`, `Conv`, ...).
    pub op: &'static str,
    /// Its attributes by name.
    pub attributes: Vec<(&'static str, OnnxAttribute)>,
    /// The layer's tensors it reads after the data input, by their names in the layer.
    pub tensors: Vec<&'static str>,
}

/// What every layer kind tells about itself, without a backend.
pub trait LayerKind: fmt::Debug + fmt::Display {
    /// What it gives for `input`, or why it cannot take it.
    fn output(&self, input: SampleShape) -> Result<SampleShape>;

    /// Its tensors for `input`, parameters first.
    fn tensors(&self, _input: SampleShape) -> Vec<TensorDef> {
        Vec::new()
    }

    /// The PyTorch module it loads into.
    fn torch(&self, input: SampleShape, config: BatchNormConfig) -> String;

    /// Its ONNX node, `None` where ONNX computes nothing for it (dropout in inference), or why
    /// it has none.
    fn onnx(&self, input: SampleShape, config: BatchNormConfig) -> Result<Option<OnnxNode>>;

    /// Whether it is a product with a weight (a Linear or a convolution): BatchNorm folds into
    /// it, and gradient-norm logging records the gradient reaching its input.
    fn is_weighted(&self) -> bool {
        false
    }
}

/// A layer's view of the pass it runs in.
pub(crate) struct Pass<'a, B: Compute> {
    pub backend: &'a B,
    pub mode: Mode,
    /// Samples in the batch.
    pub rows: usize,
    /// The group whose global batch a training BatchNorm normalizes by (synchronized
    /// BatchNorm), if any.
    pub group: Option<&'a dyn Collective>,
    /// How its output is stored (f32 for the logits).
    pub output: Dtype,
}

/// What the fusion plan runs inside a layer's own pass, read by its forward and its backward
/// alike: the ReLU after a BatchNorm, the dropout after a ReLU, the addition before a ReLU.
pub(crate) struct Fused<B: Compute> {
    /// A ReLU run in a BatchNorm's pass.
    pub relu: bool,
    /// The dropout mask this pass applies (a dropout layer's own, or the one after a ReLU).
    pub dropout: Option<DropoutMask>,
    /// A value added to the input before a ReLU (a residual block's shortcut).
    pub addend: Option<Value<B>>,
}

/// The gradient slots of one layer's parameters, by name, for its backward to fill.
pub(crate) struct ParamGrads<B: Backend> {
    slots: Vec<(&'static str, Option<B::Buffer>)>,
}

impl<B: Backend> ParamGrads<B> {
    pub(crate) fn new(slots: Vec<(&'static str, B::Buffer)>) -> Self {
        Self {
            slots: slots.into_iter().map(|(n, b)| (n, Some(b))).collect(),
        }
    }

    /// The slot of parameter `name`.
    pub(crate) fn take(&mut self, name: &str) -> Result<B::Buffer> {
        (self.slots.iter_mut())
            .find(|(n, _)| *n == name)
            .and_then(|(_, slot)| slot.take())
            .ok_or_else(|| Error::Shape(format!("no gradient slot for parameter {name}")))
    }

    /// Hands back the slot of `name`, filled.
    pub(crate) fn put(&mut self, name: &'static str, grad: B::Buffer) {
        match self.slots.iter_mut().find(|(n, _)| *n == name) {
            Some((_, slot)) => *slot = Some(grad),
            None => self.slots.push((name, Some(grad))),
        }
    }

    /// The filled slots by name.
    pub(crate) fn into_filled(self) -> Result<Vec<(&'static str, B::Buffer)>> {
        (self.slots.into_iter())
            .map(|(name, slot)| {
                slot.map(|grad| (name, grad)).ok_or_else(|| {
                    Error::Shape(format!("the backward pass left {name}'s gradient unset"))
                })
            })
            .collect()
    }
}

/// A layer on a backend: its forward and its backward.
pub(crate) trait Module<B: Compute> {
    /// What the forward leaves for the backward.
    type Saved;

    /// The output of `x`, and what the backward will need.
    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        fused: &Fused<B>,
    ) -> Result<(Value<B>, Self::Saved)>;

    /// The gradient of the input, if `wants_dx`, from the gradient `dy` of the output; the
    /// parameters' gradients into `grads`.
    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: Self::Saved,
        dy: Value<B>,
        grads: &mut ParamGrads<B>,
        wants_dx: bool,
    ) -> Result<Option<Value<B>>>;

    /// Its tensors on the device by name, as `LayerKind::tensors` lists them.
    fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
        Vec::new()
    }

    /// The same, to be changed (the optimizer's parameters, recalibrated statistics).
    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        Vec::new()
    }
}

/// Takes the tensors of a layer being built, by name.
pub(crate) trait TakeTensor<B: Backend> {
    /// Tensor `name` of the layer.
    fn take(&mut self, name: &str) -> Result<B::Buffer>;
}

/// Declares the layer kinds: `LayerSpec` (a layer as an architecture names it), `Layer<B>` (a
/// layer with its tensors on a backend) and `Saved<B>` (what its forward left), each with one
/// variant per kind, and the dispatch between them.
macro_rules! registry {
    ($($kind:ident => $layer:ty),* $(,)?) => {
        /// One layer of a model, as an architecture names it.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum LayerSpec {
            $(
                #[allow(missing_docs)]
                $kind($kind)
            ),*
        }

        impl LayerSpec {
            /// What the kind tells about itself.
            pub fn kind(&self) -> &dyn LayerKind {
                match self {
                    $(LayerSpec::$kind(kind) => kind),*
                }
            }

            /// The layer on `backend`, its tensors taken by name from `tensors`.
            pub(crate) fn build<B: Compute>(
                &self,
                input: SampleShape,
                config: BatchNormConfig,
                tensors: &mut dyn TakeTensor<B>,
            ) -> Result<Layer<B>> {
                Ok(match self {
                    $(LayerSpec::$kind(kind) => Layer::$kind(kind.build(input, config, tensors)?)),*
                })
            }
        }

        impl fmt::Display for LayerSpec {
            /// The layer's `--arch` token.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self.kind(), f)
            }
        }

        $(impl From<$kind> for LayerSpec {
            fn from(kind: $kind) -> Self {
                LayerSpec::$kind(kind)
            }
        })*

        /// One layer with its tensors on a backend.
        pub enum Layer<B: Compute> {
            $(
                #[allow(missing_docs)]
                $kind($layer)
            ),*
        }

        /// What one layer's forward left for its backward.
        pub(crate) enum Saved<B: Compute> {
            $($kind(<$layer as Module<B>>::Saved)),*
        }

        impl<B: Compute> Layer<B> {
            pub(crate) fn forward(
                &mut self,
                pass: &Pass<'_, B>,
                x: Value<B>,
                fused: &Fused<B>,
            ) -> Result<(Value<B>, Saved<B>)> {
                match self {
                    $(Layer::$kind(layer) => {
                        let (y, saved) = layer.forward(pass, x, fused)?;
                        Ok((y, Saved::$kind(saved)))
                    }),*
                }
            }

            pub(crate) fn backward(
                &self,
                pass: &Pass<'_, B>,
                saved: Saved<B>,
                dy: Value<B>,
                grads: &mut ParamGrads<B>,
                wants_dx: bool,
            ) -> Result<Option<Value<B>>> {
                match (self, saved) {
                    $((Layer::$kind(layer), Saved::$kind(saved)) => {
                        layer.backward(pass, saved, dy, grads, wants_dx)
                    })*
                    #[allow(unreachable_patterns)]
                    _ => Err(Error::InvalidArgument(
                        "the tape does not match the model's layers".to_string(),
                    )),
                }
            }

            /// Its tensors by name.
            pub(crate) fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
                match self {
                    $(Layer::$kind(layer) => <$layer as Module<B>>::tensors(layer)),*
                }
            }

            /// Its tensors by name, to be changed.
            pub(crate) fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
                match self {
                    $(Layer::$kind(layer) => <$layer as Module<B>>::tensors_mut(layer)),*
                }
            }
        }
    };
}

registry! {
    Linear => LinearLayer<B>,
    Conv2d => Conv2dLayer<B>,
    BatchNorm => BatchNormLayer<B>,
    GroupNorm => GroupNormLayer<B>,
    Relu => ReluLayer,
    Dropout => DropoutLayer,
    MaxPool2d => MaxPoolLayer,
    AvgPool => AvgPoolLayer,
    Flatten => FlattenLayer,
}

use avg_pool::AvgPoolLayer;
use conv2d::Conv2dLayer;
use dropout::DropoutLayer;
use flatten::FlattenLayer;
use groupnorm::GroupNormLayer;
use linear::LinearLayer;
use max_pool::MaxPoolLayer;
use relu::ReluLayer;
