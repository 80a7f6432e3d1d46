//! The fusion plan: which layers run inside another's pass, worked out once from the graph and
//! read by the forward and the backward alike. A ReLU runs in the pass of the BatchNorm before
//! it, and a dropout in the pass of the ReLU (or the BatchNorm's ReLU) before it, wherever that
//! layer's output feeds nothing else and is not the model's output; a ReLU with two inputs adds
//! them in its pass (a residual block's join).

use super::layers::LayerSpec;
use super::nodes::{Node, Source};

/// How one node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// In a pass of its own, which also runs what `Fusion` says.
    Own(Fusion),
    /// Inside the pass of node `by`.
    Inside {
        /// The node whose pass runs it.
        by: usize,
    },
}

/// What a node's own pass runs besides its layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fusion {
    /// The ReLU after a BatchNorm.
    pub relu: Option<usize>,
    /// The dropout after the ReLU (the node's own, or the fused one).
    pub dropout: Option<usize>,
}

impl Fusion {
    /// The last node the pass runs: the one whose output it gives.
    pub(crate) fn last(self, node: usize) -> usize {
        self.dropout.or(self.relu).unwrap_or(node)
    }
}

/// Every node's step, and what each value needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    /// Per node, whether the gradient of its output is needed (some parameter lies before it).
    pub needs_grad: Vec<bool>,
}

impl Plan {
    pub(crate) fn of(nodes: &[Node]) -> Self {
        let mut consumers = vec![Vec::new(); nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            for &source in &node.inputs {
                if let Source::Node(from) = source {
                    consumers[from].push(index);
                }
            }
        }
        // The single node reading node `from`'s output, if it is `wanted` with one input.
        let only_reader = |from: usize, wanted: fn(&LayerSpec) -> bool| match consumers[from][..] {
            [next] if wanted(&nodes[next].layer) && nodes[next].inputs.len() == 1 => Some(next),
            _ => None,
        };
        let is_relu = |layer: &LayerSpec| matches!(layer, LayerSpec::Relu(_));
        let is_dropout = |layer: &LayerSpec| matches!(layer, LayerSpec::Dropout(_));
        let mut steps = vec![Step::Own(Fusion::default()); nodes.len()];
        for index in 0..nodes.len() {
            if let Step::Inside { .. } = steps[index] {
                continue;
            }
            // A BatchNorm keeps the output of the activation it runs for its backward, so that
            // output must not be the logits, which the pass hands over.
            let batchnorm = matches!(nodes[index].layer, LayerSpec::BatchNorm(_));
            let kept = |fused: &usize| !batchnorm || *fused != nodes.len() - 1;
            let relu = match batchnorm {
                true => only_reader(index, is_relu).filter(kept),
                false => None,
            };
            let activated = match nodes[index].layer {
                LayerSpec::Relu(_) => Some(index),
                _ => relu,
            };
            let dropout = activated.and_then(|at| only_reader(at, is_dropout).filter(kept));
            for fused in relu.into_iter().chain(dropout) {
                steps[fused] = Step::Inside { by: index };
            }
            steps[index] = Step::Own(Fusion { relu, dropout });
        }
        let mut needs_grad = vec![false; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            let learns = node
                .layer
                .kind()
                .tensors(node.input)
                .iter()
                .any(|t| t.trained);
            let reads = node.inputs.iter().any(|source| match source {
                Source::Input => false,
                Source::Node(from) => needs_grad[*from],
            });
            needs_grad[index] = learns || reads;
        }
        Self { steps, needs_grad }
    }

    /// Whether the backward pass wants the gradient of what `node` reads.
    pub(crate) fn wants_input_grad(&self, node: &Node) -> bool {
        node.inputs.iter().any(|source| match source {
            Source::Input => false,
            Source::Node(from) => self.needs_grad[*from],
        })
    }
}
