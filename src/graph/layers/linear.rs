//! `fc<N>`: y = x·Wᵀ + b on flat features (`nn.Linear`).

use std::fmt;
use std::rc::Rc;

use super::{
    Fused, LayerKind, Module, OnnxAttribute, OnnxNode, ParamGrads, Pass, Start, TakeTensor,
    TensorDef, Value,
};
use crate::backend::Backend;
use crate::graph::layer_spec::SampleShape;
use crate::ops::Compute;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::matmul::{MatrixLayout, Store};
use crate::{Error, Result};

/// A fully connected layer on flat features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    /// Output features.
    pub outputs: usize,
}

impl fmt::Display for Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fc{}", self.outputs)
    }
}

impl LayerKind for Linear {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        match input {
            SampleShape::Flat(_) => Ok(SampleShape::Flat(self.outputs)),
            SampleShape::Image(_) => Err(Error::Shape(format!(
                "a Linear layer needs flat features, but receives {}: put flatten before it",
                input.describe()
            ))),
        }
    }

    fn tensors(&self, input: SampleShape) -> Vec<TensorDef> {
        weight_and_bias(self.outputs, input.len(), &[input.len()], 1)
    }

    fn torch(&self, input: SampleShape, _: BatchNormConfig) -> String {
        format!("nn.Linear({}, {})", input.len(), self.outputs)
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(Some(OnnxNode {
            op: "Gemm",
            attributes: vec![("transB", OnnxAttribute::Int(1))],
            tensors: vec!["weight", "bias"],
        }))
    }

    fn is_weighted(&self) -> bool {
        true
    }
}

/// The weight ([outputs, inputs…] as PyTorch shapes it) and bias of a layer whose outputs each
/// see `fan_in` inputs through `taps` kernel taps: the Linear's and the convolution's.
pub(super) fn weight_and_bias(
    outputs: usize,
    fan_in: usize,
    input_dims: &[usize],
    taps: usize,
) -> Vec<TensorDef> {
    let shape = std::iter::once(outputs).chain(input_dims.iter().copied());
    vec![
        TensorDef::param(
            "weight",
            shape.collect(),
            Start::Weight {
                fan_in,
                fan_out: outputs.saturating_mul(taps),
            },
        ),
        TensorDef::param("bias", vec![outputs], Start::Bias { fan_in }),
    ]
}

impl Linear {
    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        tensors: &mut dyn TakeTensor<B>,
    ) -> Result<LinearLayer<B>> {
        LinearLayer::take(tensors, input.len(), self.outputs)
    }
}

/// out = x·Wᵀ + b on a backend; a convolution runs one over its patches.
pub struct LinearLayer<B: Backend> {
    /// [outputs, inputs], row-major as PyTorch stores it.
    pub weight: B::Buffer,
    /// One value per output.
    pub bias: B::Buffer,
    pub(super) inputs: usize,
    pub(super) outputs: usize,
}

/// The input, for dW.
pub struct LinearSaved<B: Backend> {
    input: Value<B>,
}

impl<B: Compute> LinearLayer<B> {
    pub(super) fn take(
        tensors: &mut dyn TakeTensor<B>,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: tensors.take("weight")?,
            bias: tensors.take("bias")?,
            inputs,
            outputs,
        })
    }

    /// y = x·Wᵀ + b into `y`.
    pub(super) fn forward_into(
        &self,
        backend: &B,
        x: &B::Buffer,
        rows: usize,
        y: &mut B::Buffer,
    ) -> Result<()> {
        backend.matmul(
            x,
            MatrixLayout::row_major(rows, self.inputs),
            &self.weight,
            MatrixLayout::row_major(self.outputs, self.inputs).transposed(),
            Some(&self.bias),
            y,
        )
    }

    /// dW = dyᵀ·x and db = the column sums of dy, in one pass, into the slots (or added to
    /// them).
    pub(super) fn weight_grads(
        &self,
        backend: &B,
        x: &B::Buffer,
        dy: &B::Buffer,
        rows: usize,
        (weight, bias): (&mut B::Buffer, &mut B::Buffer),
        store: Store,
    ) -> Result<()> {
        backend.matmul_and_row_sums(
            dy,
            MatrixLayout::row_major(rows, self.outputs).transposed(),
            x,
            MatrixLayout::row_major(rows, self.inputs),
            weight,
            bias,
            store,
        )
    }

    /// dx = dy·W.
    pub(super) fn input_grad(&self, backend: &B, dy: &B::Buffer, rows: usize) -> Result<B::Buffer> {
        let mut dx = backend.scratch(rows * self.inputs)?;
        backend.matmul(
            dy,
            MatrixLayout::row_major(rows, self.outputs),
            &self.weight,
            MatrixLayout::row_major(self.outputs, self.inputs),
            None,
            &mut dx,
        )?;
        Ok(dx)
    }

    pub(super) fn weight_and_bias(&self) -> Vec<(&'static str, &B::Buffer)> {
        vec![("weight", &self.weight), ("bias", &self.bias)]
    }

    pub(super) fn weight_and_bias_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        vec![("weight", &mut self.weight), ("bias", &mut self.bias)]
    }
}

impl<B: Compute> Module<B> for LinearLayer<B> {
    type Saved = LinearSaved<B>;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        _: &Fused<B>,
    ) -> Result<(Value<B>, LinearSaved<B>)> {
        let mut y = pass
            .backend
            .scratch_as(pass.rows * self.outputs, pass.output)?;
        self.forward_into(pass.backend, &x, pass.rows, &mut y)?;
        Ok((Rc::new(y), LinearSaved { input: x }))
    }

    /// dW = dyᵀ·x and db = the column sums of dy (one pass), and dx = dy·W where wanted.
    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: LinearSaved<B>,
        dy: Value<B>,
        grads: &mut ParamGrads<B>,
        wants_dx: bool,
    ) -> Result<Option<Value<B>>> {
        let (mut weight, mut bias) = (grads.take("weight")?, grads.take("bias")?);
        let slots = (&mut weight, &mut bias);
        self.weight_grads(
            pass.backend,
            &saved.input,
            &dy,
            pass.rows,
            slots,
            Store::Replace,
        )?;
        grads.put("weight", weight);
        grads.put("bias", bias);
        match wants_dx {
            true => Ok(Some(Rc::new(self.input_grad(
                pass.backend,
                &dy,
                pass.rows,
            )?))),
            false => Ok(None),
        }
    }

    fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
        self.weight_and_bias()
    }

    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        self.weight_and_bias_mut()
    }
}
