//! Inference-mode BatchNorm folded into the Linear or convolution before it: the same function
//! of the input with fewer layers, for deployment. It folds inside residual blocks too, in a
//! body and in a shortcut's projection.

use super::HostModel;
use super::layers::{LayerSpec, fold_into};
use super::nodes::Node;
use super::residual::{Block, Residual};
use super::spec::ModelSpec;
use crate::{Error, Result};

/// `spec` and `model` with every BatchNorm folded into the Linear or convolution right before
/// it, in f64 (`fold_into`). The folded model computes what the original does in eval mode (to
/// f32 rounding) and has no running statistics. A BatchNorm after anything else cannot be
/// folded and is refused, naming it. LayerNorm, GroupNorm and InstanceNorm, whose statistics
/// are the input's own, stay as they are.
pub fn fold_batchnorm(spec: &ModelSpec, model: &HostModel) -> Result<(ModelSpec, HostModel)> {
    model.check(spec)?;
    let mut folding = Folding {
        model,
        eps: f64::from(spec.batchnorm_config().eps()),
        kept: Vec::new(),
        last: None,
    };
    let mut nodes = spec.nodes().iter();
    let mut blocks = Vec::new();
    let mut run: Vec<&Node> = Vec::new();
    for block in spec.blocks() {
        let Block::Residual(residual) = block else {
            run.extend(nodes.next());
            continue;
        };
        // Consecutive top-level layers fold as one chain.
        let layers = folding.chain(&std::mem::take(&mut run))?;
        blocks.extend(layers.into_iter().map(Block::Layer));
        let body: Vec<&Node> = nodes.by_ref().take(residual.body.len()).collect();
        let body = folding.chain(&body)?;
        let shortcut: Vec<&Node> = nodes.by_ref().take(residual.shortcut.len()).collect();
        let shortcut = folding.chain(&shortcut)?;
        let join: Vec<&Node> = nodes.by_ref().take(1).collect();
        folding.chain(&join)?;
        blocks.push(Block::Residual(Residual { body, shortcut }));
    }
    let layers = folding.chain(&run)?;
    blocks.extend(layers.into_iter().map(Block::Layer));
    let folded = ModelSpec::with_blocks(spec.input(), blocks, spec.batchnorm_config())?;
    // The folded graph keeps every node but the BatchNorms, in the same order: each kept
    // node's tensors take its new name.
    let mut host = HostModel::default();
    for (node, kept) in folded.nodes().iter().zip(folding.kept) {
        for (name, values) in kept {
            host.insert(node.tensor_name(name), values);
        }
    }
    host.check(&folded)?;
    Ok((folded, host))
}

/// The folding so far: the tensors of every node kept, by name in its layer, and which of them
/// a BatchNorm that comes next folds into.
struct Folding<'a> {
    model: &'a HostModel,
    eps: f64,
    kept: Vec<Vec<(&'static str, Vec<f32>)>>,
    /// The kept node the chain being folded ends in, if it is a Linear or convolution.
    last: Option<usize>,
}

impl Folding<'_> {
    /// `nodes`, a chain, with its BatchNorms folded: the layers it keeps.
    fn chain(&mut self, nodes: &[&Node]) -> Result<Vec<LayerSpec>> {
        let mut layers = Vec::new();
        self.last = None;
        for node in nodes {
            let tensor = |name: &str| self.model.tensor(&node.tensor_name(name));
            if let LayerSpec::BatchNorm(_) = node.layer {
                let Some(at) = self.last.take() else {
                    return Err(Error::InvalidArgument(format!(
                        "layer {} (BatchNorm) does not follow a Linear or convolution layer, so \
                         it cannot be folded into one",
                        node.name
                    )));
                };
                let [(_, weight), (_, bias)] = &mut self.kept[at][..] else {
                    return Err(Error::Shape(format!(
                        "the layer before {} has no weight and bias",
                        node.name
                    )));
                };
                fold_into(
                    (weight, bias),
                    (tensor("weight")?, tensor("bias")?),
                    (tensor("running_mean")?, tensor("running_var")?),
                    self.eps,
                );
                continue;
            }
            let tensors = (node.layer.kind().tensors(node.input).into_iter())
                .map(|def| Ok((def.name, tensor(def.name)?.to_vec())))
                .collect::<Result<_>>()?;
            self.kept.push(tensors);
            self.last = matches!(node.layer, LayerSpec::Linear(_) | LayerSpec::Conv2d(_))
                .then_some(self.kept.len() - 1);
            layers.push(node.layer);
        }
        Ok(layers)
    }
}
