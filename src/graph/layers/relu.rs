//! `relu`: y = max(x, 0), with the dropout after it in the same pass where the fusion plan
//! puts it there. A ReLU with two inputs (a residual block's join) adds them in its pass:
//! y = max(x + s, 0), and its backward hands the same dx to both.

use std::fmt;
use std::rc::Rc;

use super::{Fused, LayerKind, Module, OnnxNode, ParamGrads, Pass, TakeTensor, Value};
use crate::Result;
use crate::backend::Backend;
use crate::graph::layer_spec::SampleShape;
use crate::ops::Compute;
use crate::ops::activation::{Activation, DropoutMask};
use crate::ops::batchnorm::BatchNormConfig;

/// max(x, 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Relu;

impl fmt::Display for Relu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("relu")
    }
}

impl LayerKind for Relu {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        Ok(input)
    }

    fn torch(&self, _: SampleShape, _: BatchNormConfig) -> String {
        "nn.ReLU()".to_string()
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(Some(OnnxNode {
            op: "Relu",
            attributes: Vec::new(),
            tensors: Vec::new(),
        }))
    }
}

impl Relu {
    pub(super) fn build<B: Compute>(
        &self,
        _: SampleShape,
        _: BatchNormConfig,
        _: &mut dyn TakeTensor<B>,
    ) -> Result<ReluLayer> {
        Ok(ReluLayer)
    }
}

/// A ReLU on a backend.
pub struct ReluLayer;

/// The input (and the addend), whose sum's sign gates dy, and the dropout run in the same
/// pass, if any.
pub struct ReluSaved<B: Backend> {
    input: Value<B>,
    addend: Option<Value<B>>,
    dropout: Option<DropoutMask>,
}

impl<B: Compute> Module<B> for ReluLayer {
    type Saved = ReluSaved<B>;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        fused: &Fused<B>,
    ) -> Result<(Value<B>, ReluSaved<B>)> {
        let backend = pass.backend;
        let activation = Activation {
            relu: true,
            dropout: fused.dropout,
        };
        let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
        match &fused.addend {
            Some(addend) => backend.activation_forward_sum(activation, &x, addend, &mut y)?,
            None => backend.activation_forward(activation, &x, &mut y)?,
        }
        let saved = ReluSaved {
            input: x,
            addend: fused.addend.clone(),
            dropout: fused.dropout,
        };
        Ok((Rc::new(y), saved))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: ReluSaved<B>,
        dy: Value<B>,
        _: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let backend = pass.backend;
        let mut dx = backend.scratch(backend.len_of(&dy))?;
        let activation = Activation {
            relu: true,
            dropout: saved.dropout,
        };
        match &saved.addend {
            Some(addend) => backend.activation_backward_sum(
                activation,
                Some(&saved.input),
                Some(addend),
                &dy,
                &mut dx,
            )?,
            None => backend.activation_backward(activation, Some(&saved.input), &dy, &mut dx)?,
        }
        Ok(Some(Rc::new(dx)))
    }
}
