//! Models as ONNX files (opsets 13 to 17), for runtimes other than wgnorm: the graph PyTorch would
//! export for the same `nn.Sequential` in eval mode, on NCHW images or flat features, with a
//! dynamic batch dimension. Dropout is the identity there and is left out.

mod proto;

use prost::Message;

use crate::graph::{HostModel, LayerSpec, ModelSpec, SampleShape};
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
    let params = spec.params();
    let mut initializer = Vec::new();
    let mut tensor = |name: String, dims: Vec<usize>, values: &[f32]| {
        initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: proto::FLOAT,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    };
    let config = spec.batchnorm_config();
    let mut nodes = Vec::new();
    let mut current = INPUT.to_string();
    let (mut next_param, mut next_running) = (0, 0);
    for (index, layer) in spec.layers().iter().enumerate() {
        let mut inputs = vec![current.clone()];
        let mut weights = |count: usize, inputs: &mut Vec<String>| {
            for _ in 0..count {
                let param = &params[next_param];
                let values = &model.params[next_param];
                inputs.push(tensor(param.name.clone(), param.shape.clone(), values));
                next_param += 1;
            }
        };
        let (op, attributes) = match *layer {
            LayerSpec::Linear { .. } => {
                weights(2, &mut inputs);
                ("Gemm", vec![int("transB", 1)])
            }
            LayerSpec::Conv2d { window, .. } => {
                weights(2, &mut inputs);
                let (k, s, p) = (window.kernel, window.stride, window.padding);
                let attributes = vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ];
                ("Conv", attributes)
            }
            LayerSpec::BatchNorm => {
                weights(2, &mut inputs);
                let running = &model.running[next_running];
                next_running += 1;
                let features = running.mean.len();
                inputs.push(tensor(
                    format!("{index}.running_mean"),
                    vec![features],
                    &running.mean,
                ));
                inputs.push(tensor(
                    format!("{index}.running_var"),
                    vec![features],
                    &running.var,
                ));
                let attributes = vec![
                    float("epsilon", config.eps()),
                    float("momentum", 1.0 - config.momentum()),
                ];
                ("BatchNormalization", attributes)
            }
            LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm => {
                return Err(Error::InvalidArgument(format!(
                    "layer {index} (`{layer}`): ONNX export covers Linear, convolution, \
                     BatchNorm, ReLU, dropout and pooling layers, not LayerNorm, GroupNorm or \
                     InstanceNorm (the safetensors checkpoint loads into PyTorch)"
                )));
            }
            LayerSpec::Relu => ("Relu", Vec::new()),
            LayerSpec::Dropout { .. } => continue,
            LayerSpec::MaxPool2d { window } => {
                let (k, s) = (window.kernel, window.stride);
                let attributes = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s])];
                ("MaxPool", attributes)
            }
            LayerSpec::AvgPool => ("GlobalAveragePool", Vec::new()),
            LayerSpec::Flatten => ("Flatten", vec![int("axis", 1)]),
        };
        current = format!("{index}.output");
        nodes.push(NodeProto {
            input: inputs,
            output: vec![current.clone()],
            name: format!("{index}.{op}"),
            op_type: op.to_string(),
            attribute: attributes,
        });
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

fn int(name: &str, value: usize) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        i: value as i64,
        r#type: attribute_type::INT,
        ..AttributeProto::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: attribute_type::INTS,
        ..AttributeProto::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        f: value,
        r#type: attribute_type::FLOAT,
        ..AttributeProto::default()
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
