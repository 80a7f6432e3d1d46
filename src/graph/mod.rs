//! A model as a graph of layers: an `nn.Sequential` stack whose items are layers and residual
//! blocks (`residual.rs`), flattened into nodes (`spec.rs`). Each layer kind is one file of
//! `layers/`, its forward and backward side by side; `plan.rs` decides once which layers run in
//! another's pass; this file runs the passes. Tensor names are PyTorch's `state_dict` names;
//! `arch.rs` names and parses architectures, `presets.rs` holds the presets, `host.rs` a model's
//! tensors on the host and `tensors.rs` moves them to and from the device.

mod arch;
mod fold;
mod host;
mod layer_spec;
mod layers;
mod nodes;
mod plan;
mod presets;
mod residual;
mod spec;
mod tensors;

pub use arch::{ARCH_GRAMMAR, parse_blocks, parse_layers};
pub use fold::fold_batchnorm;
pub use host::{HostModel, Init};
pub use layer_spec::{Image, SampleShape};
pub use layers::{
    AvgPool, BatchNorm, BatchNormLayer, Conv2d, Dropout, Flatten, GroupNorm, Groups, Layer,
    LayerKind, LayerSpec, Linear, MaxPool2d, OnnxAttribute, OnnxNode, Relu, Start, TensorDef,
};
pub use nodes::{Node, Source};
pub use presets::{MNIST_IMAGE, Norm, Preset};
pub use residual::{Block, Residual};
pub use spec::{BatchNormNode, ModelSpec, ParamSpec};

use std::rc::Rc;

use crate::backend::Backend;
use crate::distributed::Collective;
pub use crate::ops::Compute;
use crate::ops::activation::DropoutMask;
use crate::ops::batchnorm::Mode;
use crate::{Dtype, Error, Result};
use layers::{Fused, ParamGrads, Pass, Saved, Value};
use plan::Step;

/// What a forward pass leaves for its backward: each node's saved state (none for a node run
/// in another's pass), and the mode it ran in (only a training forward saves what backward
/// needs).
pub struct Tape<B: Compute> {
    mode: Mode,
    rows: usize,
    saved: Vec<Option<Saved<B>>>,
    /// The group whose global batch the forward's BatchNorm layers normalized by, which their
    /// backward sums over too.
    group: Option<Rc<dyn Collective>>,
}

/// Which dropout masks a training forward draws: keyed by the run's seed and the global step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepKey {
    /// The run's seed.
    pub seed: u64,
    /// The global training step.
    pub step: u64,
    /// Samples of the global batch ahead of this batch's first (a data-parallel rank's slice;
    /// 0 on one device): a sample's dropout mask does not depend on which rank holds it.
    pub first_row: usize,
}

impl StepKey {
    /// Step `step` of run `seed`, on the whole batch.
    pub fn new(seed: u64, step: u64) -> Self {
        Self {
            seed,
            step,
            first_row: 0,
        }
    }
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
pub struct Sequential<B: Compute> {
    /// The architecture.
    pub spec: ModelSpec,
    /// One layer per node of `spec.nodes()`.
    pub layers: Vec<Layer<B>>,
    /// How hidden activations are stored between layers (f16 needs `Backend::supports`). The
    /// input, the logits, every gradient, the parameters and all arithmetic stay f32.
    pub activations: Dtype,
    /// Values in each parameter, in `ModelSpec::params` order: the gradient arena's layout.
    param_lens: Vec<usize>,
}

/// The values of a pass: the input, then each node's output while it is still to be read.
struct Values<B: Compute> {
    input: Option<Value<B>>,
    outputs: Vec<Option<Value<B>>>,
    /// Reads of each node's output still to come.
    reads_left: Vec<usize>,
    input_reads_left: usize,
}

impl<B: Compute> Values<B> {
    /// The values of a pass of `nodes` on `x`, each to be read by the nodes that read it, and
    /// the last node's output once more, as the pass's result.
    fn new(nodes: &[Node], x: B::Buffer) -> Self {
        let mut values = Self {
            input: Some(Rc::new(x)),
            outputs: vec![None; nodes.len()],
            reads_left: vec![0; nodes.len()],
            input_reads_left: 0,
        };
        for &source in nodes.iter().flat_map(|node| &node.inputs) {
            match source {
                Source::Input => values.input_reads_left += 1,
                Source::Node(from) => values.reads_left[from] += 1,
            }
        }
        if let Some(last) = values.reads_left.last_mut() {
            *last += 1;
        }
        values
    }

    /// Hands out `source` for one read, letting go of it after its last.
    fn read(&mut self, source: Source) -> Result<Value<B>> {
        let (slot, left) = match source {
            Source::Input => (&mut self.input, &mut self.input_reads_left),
            Source::Node(from) => (&mut self.outputs[from], &mut self.reads_left[from]),
        };
        *left = left.saturating_sub(1);
        let value = match *left {
            0 => slot.take(),
            _ => slot.clone(),
        };
        value.ok_or_else(|| Error::Shape(format!("{source:?} was read before it was computed")))
    }
}

impl<B: Compute> Sequential<B> {
    /// Each BatchNorm layer's input in an eval-mode forward of `x` (`rows` samples), in node
    /// order and channels-last: what a diagnosis of its running statistics compares them on.
    pub fn batchnorm_inputs(
        &mut self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let no_dropout = StepKey::new(0, 0);
        let (_, tape) = self.forward(backend, Mode::Eval, x, rows, no_dropout)?;
        let inputs: Vec<&B::Buffer> = (tape.saved.iter().flatten())
            .filter_map(|saved| match saved {
                Saved::BatchNorm(saved) => Some(&*saved.input),
                _ => None,
            })
            .collect();
        backend.download_many(&inputs)
    }

    /// The BatchNorm layers, in order.
    pub fn batchnorms_mut(&mut self) -> impl Iterator<Item = &mut BatchNormLayer<B>> {
        self.layers.iter_mut().filter_map(|layer| match layer {
            Layer::BatchNorm(bn) => Some(bn),
            _ => None,
        })
    }

    /// The dropout mask node `node` draws in this forward (`None` in eval mode, where p = 0
    /// and for other layers).
    fn dropout_mask(&self, node: Option<usize>, mode: Mode, key: StepKey) -> Option<DropoutMask> {
        match self.layers.get(node?)? {
            Layer::Dropout(dropout) if mode == Mode::Train && dropout.p > 0.0 => {
                let per_sample = self.spec.nodes()[node?].output.len();
                let mask = DropoutMask::new(dropout.p, key.seed, node? as u32, key.step);
                Some(mask.starting_at(key.first_row * per_sample))
            }
            _ => None,
        }
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
        self.forward_in_group(backend, mode, x, rows, key, None)
    }

    /// `forward` on one data-parallel rank's slice of a global batch: with `group`, a
    /// training-mode BatchNorm normalizes by the statistics of the whole group's batch
    /// (synchronized BatchNorm), and the backward pass of the tape sums over it too.
    pub fn forward_in_group(
        &mut self,
        backend: &B,
        mode: Mode,
        x: B::Buffer,
        rows: usize,
        key: StepKey,
        group: Option<&Rc<dyn Collective>>,
    ) -> Result<(B::Buffer, Tape<B>)> {
        check_activations(backend, self.activations)?;
        let nodes = self.spec.nodes();
        let mut values: Values<B> = Values::new(nodes, x);
        let last = nodes.len().saturating_sub(1);
        let mut saved: Vec<Option<Saved<B>>> = (0..nodes.len()).map(|_| None).collect();
        for (index, state) in saved.iter_mut().enumerate() {
            let Step::Own(fusion) = self.spec.plan().steps[index] else {
                continue;
            };
            let node = &self.spec.nodes()[index];
            let x = values.read(node.inputs[0])?;
            let addend = match node.inputs.get(1) {
                Some(&source) => Some(values.read(source)?),
                None => None,
            };
            let is_dropout = matches!(node.layer, LayerSpec::Dropout(_));
            let fused = Fused {
                relu: fusion.relu.is_some(),
                dropout: self.dropout_mask(
                    fusion.dropout.or(is_dropout.then_some(index)),
                    mode,
                    key,
                ),
                addend,
            };
            let through = fusion.last(index);
            let pass = Pass {
                backend,
                mode,
                rows,
                group: group.map(|group| &**group),
                output: match through == last {
                    true => Dtype::F32,
                    false => self.activations,
                },
            };
            let (y, saved_state) = self.layers[index].forward(&pass, x, &fused)?;
            values.outputs[through] = Some(y);
            *state = Some(saved_state);
        }
        let logits = values.read(Source::Node(last))?;
        let logits = Rc::try_unwrap(logits)
            .map_err(|_| Error::Shape("the logits are still shared after the pass".to_string()))?;
        let group = group.cloned();
        Ok((
            logits,
            Tape {
                mode,
                rows,
                saved,
                group,
            },
        ))
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

    /// `backward`, showing `observe(node, dx)` the gradient reaching the input of each Linear
    /// and convolution layer where it is computed (not before the first layer with
    /// parameters).
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
        let nodes = self.spec.nodes();
        let params = self.spec.params();
        // The gradients share one arena laid out as the parameters', so the optimizer can
        // update all parameters in one pass; each layer takes its slots by name.
        let mut slots: Vec<Option<B::Buffer>> = (backend.scratch_arena(&self.param_lens)?)
            .into_iter()
            .map(Some)
            .collect();
        let mut grads: Vec<Option<Value<B>>> = vec![None; nodes.len()];
        grads[nodes.len() - 1] = Some(Rc::new(dlogits));
        let pass = Pass {
            backend,
            mode: tape.mode,
            rows: tape.rows,
            group: tape.group.as_deref(),
            output: Dtype::F32,
        };
        for (index, saved) in tape.saved.into_iter().enumerate().rev() {
            let Step::Own(fusion) = self.spec.plan().steps[index] else {
                continue;
            };
            let Some(saved) = saved else {
                return Err(Error::InvalidArgument(format!(
                    "the tape has nothing for layer {}",
                    nodes[index].name
                )));
            };
            if !self.spec.plan().needs_grad[index] {
                continue;
            }
            let dy = grads[fusion.last(index)].take().ok_or_else(|| {
                Error::Shape(format!("no gradient reached layer {}", nodes[index].name))
            })?;
            let mut taken = Vec::new();
            for (at, param) in params.iter().enumerate() {
                if param.node == index {
                    let slot = slots[at].take().ok_or_else(|| {
                        Error::Shape(format!("{} has two gradient slots", param.name))
                    })?;
                    taken.push((param.def.name, slot));
                }
            }
            let mut node_grads = ParamGrads::new(taken);
            let wants_dx = self.spec.plan().wants_input_grad(&nodes[index]);
            let dx = self.layers[index].backward(&pass, saved, dy, &mut node_grads, wants_dx)?;
            for (name, grad) in node_grads.into_filled()? {
                let at = (params.iter())
                    .position(|p| p.node == index && p.def.name == name)
                    .ok_or_else(|| Error::Shape(format!("layer {index} has no {name}")))?;
                slots[at] = Some(grad);
            }
            let Some(dx) = dx.filter(|_| wants_dx) else {
                continue;
            };
            if nodes[index].layer.kind().is_weighted() {
                observe(index, &dx)?;
            }
            for &source in &nodes[index].inputs {
                if let Source::Node(from) = source
                    && self.spec.plan().needs_grad[from]
                {
                    grads[from] = Some(match grads[from].take() {
                        None => dx.clone(),
                        Some(other) => {
                            let mut sum = backend.scratch(backend.len_of(&dx))?;
                            backend.add(&other, &dx, &mut sum)?;
                            Rc::new(sum)
                        }
                    });
                }
            }
        }
        (slots.into_iter().zip(&params))
            .map(|(slot, param)| {
                slot.ok_or_else(|| Error::Shape(format!("{} got no gradient", param.name)))
            })
            .collect()
    }
}
