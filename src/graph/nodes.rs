//! The graph a stack of layers and residual blocks makes: its nodes, the values each reads,
//! and how a chain of layers and a residual block are added to it.

use super::layer_spec::SampleShape;
use super::layers::{LayerSpec, Relu};
use super::residual::{Block, Residual};
use crate::{Error, Result};

/// Where a node reads a value: the model's input, or the output of an earlier node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The model's input.
    Input,
    /// The output of node i.
    Node(usize),
}

/// One node of the graph: a layer, the values it reads, and the shapes in and out. A node with
/// two inputs adds them before its layer (a residual block's ReLU).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The prefix of its tensors' `state_dict` names: `3` in a plain stack, `4.body.0` in a
    /// residual block's body, `4.shortcut.0` in its projection.
    pub name: String,
    /// The layer.
    pub layer: LayerSpec,
    /// What it reads: one value, or two that are added.
    pub inputs: Vec<Source>,
    /// The shape of what it reads.
    pub input: SampleShape,
    /// The shape it gives.
    pub output: SampleShape,
}

impl Node {
    /// `layer` named `name` reading `from`; its output is found when it is added.
    pub(super) fn new(name: String, layer: LayerSpec, from: (Source, SampleShape)) -> Self {
        Self {
            name,
            layer,
            inputs: vec![from.0],
            input: from.1,
            output: from.1,
        }
    }

    /// The `state_dict` name of its tensor `tensor`.
    pub fn tensor_name(&self, tensor: &str) -> String {
        format!("{}.{tensor}", self.name)
    }
}

/// Adds `layers` to `nodes` in a chain reading `from`, named `prefix` and their index.
pub(super) fn chain(
    nodes: &mut Vec<Node>,
    layers: &[LayerSpec],
    mut from: (Source, SampleShape),
    prefix: &str,
) -> Result<(Source, SampleShape)> {
    for (index, layer) in layers.iter().enumerate() {
        from = push(nodes, Node::new(format!("{prefix}{index}"), *layer, from))?;
    }
    Ok(from)
}

/// Adds `node`, its output found from its layer, or an error naming it.
pub(super) fn push(nodes: &mut Vec<Node>, mut node: Node) -> Result<(Source, SampleShape)> {
    node.output = node.layer.kind().output(node.input).map_err(|e| match e {
        Error::Shape(message) | Error::InvalidArgument(message) => {
            Error::InvalidArgument(format!("layer {} (`{}`): {message}", node.name, node.layer))
        }
        other => other,
    })?;
    let output = node.output;
    nodes.push(node);
    Ok((Source::Node(nodes.len() - 1), output))
}

/// Adds residual block `index`'s nodes after `from`: the body, the projection, and the ReLU
/// that adds them.
pub(super) fn residual_nodes(
    nodes: &mut Vec<Node>,
    residual: &Residual,
    from: (Source, SampleShape),
    index: usize,
) -> Result<(Source, SampleShape)> {
    let block = Block::Residual(residual.clone());
    let invalid =
        |message: String| Error::InvalidArgument(format!("layer {index} (`{block}`): {message}"));
    if residual.body.is_empty() {
        return Err(invalid("a residual block needs a body".to_string()));
    }
    let body = chain(nodes, &residual.body, from, &format!("{index}.body."))?;
    let shortcut = chain(
        nodes,
        &residual.shortcut,
        from,
        &format!("{index}.shortcut."),
    )?;
    if body.1 != shortcut.1 {
        let hint = match body.1 {
            SampleShape::Image(image) if residual.shortcut.is_empty() => format!(
                "; project the shortcut with res{}s<stride>(...)",
                image.channels
            ),
            _ => String::new(),
        };
        return Err(invalid(format!(
            "the body gives {} but the shortcut {}{hint}",
            body.1.describe(),
            shortcut.1.describe()
        )));
    }
    let join = Node {
        name: format!("{index}.relu"),
        layer: LayerSpec::Relu(Relu),
        inputs: vec![body.0, shortcut.0],
        input: body.1,
        output: body.1,
    };
    push(nodes, join)
}
