//! The architecture: a checked stack of layers (`layer_spec.rs`) and the tensors it learns. A
//! `ModelSpec` is checked when it is made, so every model built from one can run.

use super::layer_spec::{Image, LayerSpec, SampleShape, batchnorm_features};
use crate::ops::batchnorm::BatchNormConfig;
use crate::{Error, Result};

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

    /// Whether it is the weight of a Linear or convolution, the operand of a matrix product
    /// (the only parameters that inference in half precision stores as f16).
    pub fn is_matrix(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// A BatchNorm layer: its `Sequential` index, the features it normalizes, and the positions
/// each feature has per sample (1 for BatchNorm1d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormLayer {
    /// Index in the `Sequential`.
    pub index: usize,
    /// Features (channels) normalized.
    pub features: usize,
    /// Values of each feature per sample: height·width for BatchNorm2d, else 1.
    pub positions: usize,
}

/// The architecture: a checked stack of layers on samples of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    input: SampleShape,
    layers: Vec<LayerSpec>,
    /// The input of each layer, then the model's output.
    shapes: Vec<SampleShape>,
    batchnorm_config: BatchNormConfig,
}

impl ModelSpec {
    /// The stack `layers` on samples of `input`, with BatchNorm settings `batchnorm_config`;
    /// refuses a stack that cannot run, naming the layer and why.
    pub fn new(
        input: SampleShape,
        layers: Vec<LayerSpec>,
        batchnorm_config: BatchNormConfig,
    ) -> Result<Self> {
        if let SampleShape::Image(image) = input {
            Image::new(image.channels, image.height, image.width)?;
        }
        if input.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the model's input must hold values, got {}",
                input.describe()
            )));
        }
        let mut shapes = vec![input];
        for (index, layer) in layers.iter().enumerate() {
            let invalid = |message: String| {
                Error::InvalidArgument(format!("layer {index} (`{layer}`): {message}"))
            };
            match *layer {
                LayerSpec::Linear { outputs: 0 } | LayerSpec::Conv2d { outputs: 0, .. } => {
                    return Err(invalid("needs at least one output".to_string()));
                }
                LayerSpec::Dropout { p } if !(0.0..1.0).contains(&p) => {
                    return Err(invalid(format!("dropout must be in [0, 1), got {p}")));
                }
                LayerSpec::MaxPool2d { window } if window.padding != 0 => {
                    return Err(invalid("max pooling takes no padding".to_string()));
                }
                _ => {}
            }
            let input = shapes[index];
            let output = layer.output(input).map_err(|e| match e {
                Error::Shape(message) | Error::InvalidArgument(message) | Error::Limit(message) => {
                    invalid(message)
                }
                other => other,
            })?;
            shapes.push(output);
        }
        let spec = Self {
            input,
            layers,
            shapes,
            batchnorm_config,
        };
        match spec.output() {
            SampleShape::Flat(_) if !spec.layers.is_empty() => {}
            output => {
                return Err(Error::InvalidArgument(format!(
                    "the model must end in flat class scores (a Linear layer last), but gives {}",
                    output.describe()
                )));
            }
        }
        // Kernels index with u32; beyond that, shape arithmetic could also overflow.
        for param in spec.params() {
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
        // A convolution binds its patches at least one image at a time (the weights' check
        // above keeps this product from overflowing).
        let per_sample = spec.largest_tensor_per_sample();
        if per_sample > u32::MAX as usize {
            return Err(Error::Limit(format!(
                "one sample's tensors hold {per_sample} values (a convolution's patches \
                 included), more than the 2^32 a kernel can index"
            )));
        }
        Ok(spec)
    }

    /// What one sample is.
    pub fn input(&self) -> SampleShape {
        self.input
    }

    /// Values per input sample (784 for MNIST).
    pub fn inputs(&self) -> usize {
        self.input.len()
    }

    /// Output classes: the last layer's features.
    pub fn classes(&self) -> usize {
        self.output().len()
    }

    fn output(&self) -> SampleShape {
        self.shapes[self.layers.len()]
    }

    /// The layers in `Sequential` order.
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// The input of each layer, then the model's output.
    pub fn shapes(&self) -> &[SampleShape] {
        &self.shapes
    }

    /// eps, momentum and running-variance convention of every BatchNorm layer.
    pub fn batchnorm_config(&self) -> BatchNormConfig {
        self.batchnorm_config
    }

    /// The same architecture with other BatchNorm settings.
    pub fn with_batchnorm_config(mut self, config: BatchNormConfig) -> Self {
        self.batchnorm_config = config;
        self
    }

    /// Whether any layer is a BatchNorm.
    pub fn has_batchnorm(&self) -> bool {
        self.layers.contains(&LayerSpec::BatchNorm)
    }

    /// The most values one activation of a pass holds per sample. A device binds at most its
    /// binding limit over this many samples' worth at once (a convolution's im2col patches,
    /// larger still, are bound in chunks of images).
    pub fn largest_activation_per_sample(&self) -> usize {
        self.shapes
            .iter()
            .map(|shape| shape.len())
            .max()
            .unwrap_or(0)
    }

    /// The most values one tensor of a pass holds per sample, a convolution's im2col patches
    /// included: what the memory of a pass grows with.
    pub fn largest_tensor_per_sample(&self) -> usize {
        let patches = self.layers.iter().enumerate().map(|(index, layer)| {
            match (layer, self.shapes[index], self.shapes[index + 1]) {
                (
                    LayerSpec::Conv2d { window, .. },
                    SampleShape::Image(input),
                    SampleShape::Image(output),
                ) => output.positions() * window.patch_len(input.channels),
                _ => 0,
            }
        });
        patches
            .max()
            .unwrap_or(0)
            .max(self.largest_activation_per_sample())
    }

    /// The most samples one pass can take on a device whose bindings hold at most
    /// `max_binding_bytes` (unbounded without a limit), each value taking 4 bytes; an error where
    /// not even one fits.
    pub fn max_rows(&self, max_binding_bytes: Option<u64>) -> Result<usize> {
        let Some(limit) = max_binding_bytes else {
            return Ok(usize::MAX);
        };
        let per_sample = 4 * self.largest_activation_per_sample() as u64;
        match usize::try_from(limit / per_sample.max(1)) {
            Ok(0) => Err(Error::Limit(format!(
                "one sample needs a tensor of {per_sample} bytes, more than the adapter's \
                 max_storage_buffer_binding_size of {limit} bytes"
            ))),
            Ok(rows) => Ok(rows),
            Err(_) => Ok(usize::MAX),
        }
    }

    /// The most samples (at least one) a pass takes whose largest tensor, patches included,
    /// stays within `bytes` at 4 bytes a value.
    pub fn memory_rows(&self, bytes: u64) -> usize {
        let per_sample = 4 * self.largest_tensor_per_sample() as u64;
        usize::try_from(bytes / per_sample.max(1))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// Learned values in all parameters (checked at construction not to overflow).
    pub fn param_count(&self) -> u64 {
        self.params().iter().map(|p| p.len() as u64).sum()
    }

    /// The learned tensors in order: per Linear and convolution weight and bias, per BatchNorm
    /// weight (γ) and bias (β).
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut params = Vec::new();
        for (index, (layer, &input)) in self.layers.iter().zip(&self.shapes).enumerate() {
            if let Some([weight, bias]) = layer.param_shapes(input) {
                params.push(ParamSpec {
                    name: format!("{index}.weight"),
                    shape: weight,
                });
                params.push(ParamSpec {
                    name: format!("{index}.bias"),
                    shape: bias,
                });
            }
        }
        params
    }

    /// The BatchNorm layers, in order.
    pub fn batchnorm_layers(&self) -> Vec<BatchNormLayer> {
        (self.layers.iter().zip(&self.shapes).enumerate())
            .filter(|(_, (layer, _))| **layer == LayerSpec::BatchNorm)
            .map(|(index, (_, &input))| BatchNormLayer {
                index,
                features: batchnorm_features(input),
                positions: match input {
                    SampleShape::Flat(_) => 1,
                    SampleShape::Image(image) => image.positions(),
                },
            })
            .collect()
    }

    /// The PyTorch module this model's `state_dict` loads into.
    pub fn torch_module(&self) -> String {
        let layers: Vec<String> = (self.layers.iter().zip(&self.shapes))
            .map(|(layer, &input)| layer.torch(input, self.batchnorm_config))
            .collect();
        format!("nn.Sequential({})", layers.join(", "))
    }

    /// `torch_module`, and what of the model PyTorch has no word for: BatchNorm's ghost batches.
    pub fn describe(&self) -> String {
        match self.batchnorm_config.virtual_batch() {
            Some(samples) if self.has_batchnorm() => format!(
                "{} with BatchNorm training statistics over ghost batches of {samples}",
                self.torch_module()
            ),
            _ => self.torch_module(),
        }
    }
}
