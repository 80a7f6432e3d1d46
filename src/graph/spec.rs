//! The architecture: a checked stack of layers and residual blocks, flattened into a graph of
//! nodes (`nodes.rs`), and the tensors it holds, each by its `state_dict` name. A `ModelSpec` is
//! checked when it is made, so every model built from one can run.

use super::layer_spec::{Image, SampleShape};
use super::layers::{BatchNorm, LayerSpec, TensorDef, features_and_positions};
use super::nodes::{Node, Source, push, residual_nodes};
use super::plan::Plan;
use super::residual::Block;
use crate::ops::batchnorm::BatchNormConfig;
use crate::{Error, Result};

/// A tensor a model holds: its `state_dict` name, its shape, how it starts, and whether the
/// optimizer trains it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The `state_dict` name, e.g. `0.weight` or `3.body.1.running_mean`.
    pub name: String,
    /// Its shape, PyTorch's order.
    pub shape: Vec<usize>,
    /// The node it belongs to.
    pub node: usize,
    /// What it is in its layer.
    pub def: TensorDef,
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

/// A BatchNorm node: its index, its name, the features it normalizes, and the positions each
/// feature has per sample (1 for BatchNorm1d).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchNormNode {
    /// Index in `ModelSpec::nodes`.
    pub node: usize,
    /// Its `state_dict` prefix.
    pub name: String,
    /// Features (channels) normalized.
    pub features: usize,
    /// Values of each feature per sample: height·width for BatchNorm2d, else 1.
    pub positions: usize,
    /// PyTorch's name of the module: BatchNorm1d or BatchNorm2d.
    pub kind: &'static str,
}

/// The architecture: a checked stack of layers and residual blocks on samples of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    input: SampleShape,
    blocks: Vec<Block>,
    nodes: Vec<Node>,
    /// Worked out once from the nodes; forward and backward both read it.
    plan: Plan,
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
        Self::with_blocks(
            input,
            layers.into_iter().map(Block::Layer).collect(),
            batchnorm_config,
        )
    }

    /// The stack of layers and residual blocks `blocks` on samples of `input`.
    pub fn with_blocks(
        input: SampleShape,
        blocks: Vec<Block>,
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
        let mut nodes = Vec::new();
        let mut from = (Source::Input, input);
        for (index, block) in blocks.iter().enumerate() {
            from = match block {
                Block::Layer(layer) => {
                    push(&mut nodes, Node::new(index.to_string(), *layer, from))?
                }
                Block::Residual(residual) => residual_nodes(&mut nodes, residual, from, index)?,
            };
        }
        let plan = Plan::of(&nodes);
        let spec = Self {
            input,
            blocks,
            nodes,
            plan,
            batchnorm_config,
        };
        match from.1 {
            SampleShape::Flat(_) if !spec.nodes.is_empty() => {}
            output => {
                return Err(Error::InvalidArgument(format!(
                    "the model must end in flat class scores (a Linear layer last), but gives {}",
                    output.describe()
                )));
            }
        }
        // Kernels index with u32; beyond that, shape arithmetic could also overflow.
        for param in spec.tensors() {
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
        // A convolution binds its patches at least one image at a time (the tensors' check
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

    /// Output classes: the last node's features.
    pub fn classes(&self) -> usize {
        self.output().len()
    }

    fn output(&self) -> SampleShape {
        self.nodes.last().map_or(self.input, |node| node.output)
    }

    /// The top-level stack: layers and residual blocks, in `nn.Sequential` order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The graph: every layer, in an order in which each reads only earlier nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The layers of a plain stack (no residual block), or `None`.
    pub fn layers(&self) -> Option<Vec<LayerSpec>> {
        (self.blocks.iter())
            .map(|block| match block {
                Block::Layer(layer) => Some(*layer),
                Block::Residual(_) => None,
            })
            .collect()
    }

    /// Whether the backward pass computes the gradient reaching node `node`'s input: only where
    /// a layer with parameters lies before it.
    pub fn computes_input_grad(&self, node: usize) -> bool {
        self.plan.wants_input_grad(&self.nodes[node])
    }

    /// The fusion plan.
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
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
        !self.batchnorm_nodes().is_empty()
    }

    /// The most values one activation of a pass holds per sample. A device binds at most its
    /// binding limit over this many samples' worth at once (a convolution's im2col patches,
    /// larger still, are bound in chunks of images).
    pub fn largest_activation_per_sample(&self) -> usize {
        (self.nodes.iter())
            .map(|node| node.output.len())
            .chain([self.input.len()])
            .max()
            .unwrap_or(0)
    }

    /// The most values one tensor of a pass holds per sample, a convolution's im2col patches
    /// included: what the memory of a pass grows with.
    pub fn largest_tensor_per_sample(&self) -> usize {
        let patches = self
            .nodes
            .iter()
            .map(|node| match (node.layer, node.input, node.output) {
                (
                    LayerSpec::Conv2d(conv),
                    SampleShape::Image(input),
                    SampleShape::Image(output),
                ) => output.positions() * conv.window.patch_len(input.channels),
                _ => 0,
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

    /// Every tensor of the `state_dict`, node by node, each node's parameters before its
    /// running statistics.
    pub fn tensors(&self) -> Vec<ParamSpec> {
        let mut tensors = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            for def in node.layer.kind().tensors(node.input) {
                tensors.push(ParamSpec {
                    name: node.tensor_name(def.name),
                    shape: def.shape.clone(),
                    node: index,
                    def,
                });
            }
        }
        tensors
    }

    /// The learned tensors, in the order the gradients and the optimizer lay them out.
    pub fn params(&self) -> Vec<ParamSpec> {
        self.tensors()
            .into_iter()
            .filter(|t| t.def.trained)
            .collect()
    }

    /// The running statistics.
    pub fn running(&self) -> Vec<ParamSpec> {
        self.tensors()
            .into_iter()
            .filter(|t| !t.def.trained)
            .collect()
    }

    /// Learned values in all parameters (checked at construction not to overflow).
    pub fn param_count(&self) -> u64 {
        self.params().iter().map(|p| p.len() as u64).sum()
    }

    /// The BatchNorm nodes, in order.
    pub fn batchnorm_nodes(&self) -> Vec<BatchNormNode> {
        (self.nodes.iter().enumerate())
            .filter(|(_, node)| node.layer == LayerSpec::BatchNorm(BatchNorm))
            .map(|(index, node)| {
                let (features, positions) = features_and_positions(node.input);
                BatchNormNode {
                    node: index,
                    name: node.name.clone(),
                    features,
                    positions,
                    kind: BatchNorm::torch_name(node.input),
                }
            })
            .collect()
    }

    /// The PyTorch module this model's `state_dict` loads into: an `nn.Sequential` of torch.nn
    /// modules and, for a residual block, `Residual(body, shortcut)`, a module computing
    /// relu(body(x) + shortcut(x)) with `shortcut` None for the identity.
    pub fn torch_module(&self) -> String {
        let config = self.batchnorm_config;
        let mut nodes = self.nodes.iter();
        let mut torch = |layers: usize| -> Vec<String> {
            (nodes.by_ref().take(layers))
                .map(|node| node.layer.kind().torch(node.input, config))
                .collect()
        };
        let modules: Vec<String> = (self.blocks.iter())
            .map(|block| match block {
                Block::Layer(_) => torch(1).remove(0),
                Block::Residual(residual) => {
                    let body = torch(residual.body.len()).join(", ");
                    let shortcut = match residual.shortcut.len() {
                        0 => "None".to_string(),
                        layers => format!("nn.Sequential({})", torch(layers).join(", ")),
                    };
                    torch(1);
                    format!("Residual(nn.Sequential({body}), {shortcut})")
                }
            })
            .collect();
        format!("nn.Sequential({})", modules.join(", "))
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
