//! Models as ONNX files (opsets 13 to 17), for runtimes other than wgnorm: the graph PyTorch would
//! export for the same `nn.Sequential` in eval mode, on NCHW images or flat features, with a
//! dynamic batch dimension. Each layer's node comes from its kind (`LayerKind::onnx`); a residual
//! block's join is an `Add` before its `Relu`. Dropout is the identity there and is left out.

mod proto;

use prost::Message;

use crate::graph::{HostModel, ModelSpec, OnnxAttribute, SampleShape, Source};
use crate::{Error, Result};
use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto, attribute_type,
};

/// The ONNX operator sets a file can declare: every operator wgnorm writes means the same from
/// opset 13 to 17.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=17;
/// The operator set files declare unless asked for another.
pub const DEFAULT_OPSET: i64 = 13;

/// The ONNX IR version released with `opset`.
fn ir_version(opset: i64) -> i64 {
    if opset <= 14 { 7 } else { 8 }
}
/// The graph's input and output names.
pub const INPUT: &str = "input";
/// The graph's output: one row of logits per sample.
pub const OUTPUT: &str = "logits";

/// `spec` with `model`'s tensors as an ONNX model of operator set `opset` (one of `OPSETS`):
/// input `INPUT`, float32 [N, features] or
/// [N, channels, height, width] as the first layer takes it, output `OUTPUT` [N, classes].
/// Each BatchNorm is a `BatchNormalization` with the model's epsilon; ONNX's momentum is
/// 1 − PyTorch's, which the metadata also notes.
pub fn export(spec: &ModelSpec, model: &HostModel, opset: i64) -> Result<Vec<u8>> {
    if !OPSETS.contains(&opset) {
        return Err(Error::InvalidArgument(format!(
            "ONNX opset {opset} is not supported: choose {} to {}",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    model.check(spec)?;
    let mut initializer = Vec::new();
    let mut nodes = Vec::new();
    // The ONNX name of each node's output; dropout passes its input's on.
    let mut outputs: Vec<String> = Vec::with_capacity(spec.nodes().len());
    let config = spec.batchnorm_config();
    for (index, node) in spec.nodes().iter().enumerate() {
        let mut inputs: Vec<String> = (node.inputs.iter())
            .map(|source| match source {
                Source::Input => INPUT.to_string(),
                Source::Node(from) => outputs[*from].clone(),
            })
            .collect();
        let layer = node
            .layer
            .kind()
            .onnx(node.input, config)
            .map_err(|e| match e {
                Error::InvalidArgument(message) => Error::InvalidArgument(format!(
                    "layer {} (`{}`): {message}",
                    node.name, node.layer
                )),
                other => other,
            })?;
        let Some(layer) = layer else {
            outputs.push(inputs.remove(0));
            continue;
        };
        if let [_, _] = inputs[..] {
            // A residual block's join: the sum, then the layer on it.
            let sum = format!("{}.sum", node.name);
            nodes.push(NodeProto {
                input: std::mem::take(&mut inputs),
                output: vec![sum.clone()],
                name: format!("{}.Add", node.name),
                op_type: "Add".to_string(),
                attribute: Vec::new(),
            });
            inputs.push(sum);
        }
        let defs = node.layer.kind().tensors(node.input);
        for name in &layer.tensors {
            let def = (defs.iter().find(|def| def.name == *name))
                .ok_or_else(|| Error::Shape(format!("layer {index} has no tensor {name}")))?;
            let full = node.tensor_name(name);
            let values = model.tensor(&full)?;
            initializer.push(TensorProto {
                dims: def.shape.iter().map(|&d| d as i64).collect(),
                data_type: proto::FLOAT,
                name: full.clone(),
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
            inputs.push(full);
        }
        let output = format!("{}.output", node.name);
        nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: format!("{}.{}", node.name, layer.op),
            op_type: layer.op.to_string(),
            attribute: (layer.attributes.into_iter())
                .map(|(name, value)| attribute(name, value))
                .collect(),
        });
        outputs.push(output);
    }
    let Some(last) = nodes.last_mut() else {
        return Err(Error::InvalidArgument(
            "the model has no layer ONNX would compute".to_string(),
        ));
    };
    last.output = vec![OUTPUT.to_string()];
    let input_dims: Vec<usize> = match spec.input() {
        SampleShape::Flat(features) => vec![features],
        SampleShape::Image(image) => vec![image.channels, image.height, image.width],
    };
    let graph = GraphProto {
        node: nodes,
        name: "wgnorm".to_string(),
        initializer,
        input: vec![value_info(INPUT, &input_dims)],
        output: vec![value_info(OUTPUT, &[spec.classes()])],
    };
    let model = ModelProto {
        ir_version: ir_version(opset),
        producer_name: "wgnorm".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        doc_string: spec.torch_module(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        metadata_props: vec![
            entry("torch_module", spec.torch_module()),
            entry(
                "batchnorm_momentum",
                format!(
                    "PyTorch's convention: running = (1 - m)·running + m·batch with m = {}; \
                     ONNX BatchNormalization's momentum attribute is 1 - m = {}",
                    config.momentum(),
                    1.0 - config.momentum()
                ),
            ),
        ],
    };
    Ok(model.encode_to_vec())
}

fn attribute(name: &str, value: OnnxAttribute) -> AttributeProto {
    let attribute = AttributeProto {
        name: name.to_string(),
        ..AttributeProto::default()
    };
    match value {
        OnnxAttribute::Int(i) => AttributeProto {
            i,
            r#type: attribute_type::INT,
            ..attribute
        },
        OnnxAttribute::Ints(ints) => AttributeProto {
            ints,
            r#type: attribute_type::INTS,
            ..attribute
        },
        OnnxAttribute::Float(f) => AttributeProto {
            f,
            r#type: attribute_type::FLOAT,
            ..attribute
        },
    }
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_string(),
        value,
    }
}

/// A float32 tensor of shape [N, dims…], N named "N" and chosen at run time.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let batch = Dimension {
        dim_value: None,
        dim_param: Some("N".to_string()),
    };
    let fixed = dims.iter().map(|&d| Dimension {
        dim_value: Some(d as i64),
        dim_param: None,
    });
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: proto::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(batch).chain(fixed).collect(),
                }),
            }),
        }),
    }
}
