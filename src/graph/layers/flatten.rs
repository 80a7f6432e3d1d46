//! `flatten`: an image to flat features in PyTorch's (channels, height, width) order; a
//! transpose of the channels-last values, or nothing where the orders agree.

use std::fmt;
use std::rc::Rc;

use super::{
    Fused, LayerKind, Module, OnnxAttribute, OnnxNode, ParamGrads, Pass, TakeTensor, Value,
};
use crate::graph::layer_spec::{Image, SampleShape, image_input};
use crate::ops::Compute;
use crate::ops::batchnorm::BatchNormConfig;
use crate::{Dtype, Result};

/// An image to flat features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flatten;

impl fmt::Display for Flatten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("flatten")
    }
}

impl LayerKind for Flatten {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        Ok(SampleShape::Flat(image_input("flatten", input)?.values()))
    }

    fn torch(&self, _: SampleShape, _: BatchNormConfig) -> String {
        "nn.Flatten()".to_string()
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(Some(OnnxNode {
            op: "Flatten",
            attributes: vec![("axis", OnnxAttribute::Int(1))],
            tensors: Vec::new(),
        }))
    }
}

impl Flatten {
    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        _: &mut dyn TakeTensor<B>,
    ) -> Result<FlattenLayer> {
        Ok(FlattenLayer {
            input: image_input("flatten", input)?,
        })
    }
}

/// Flatten on a backend: it saves nothing.
pub struct FlattenLayer {
    input: Image,
}

impl FlattenLayer {
    /// Whether flattening leaves the values where they are: channels-last and PyTorch's order
    /// agree for one channel or one position.
    fn is_identity(&self) -> bool {
        self.input.channels == 1 || self.input.positions() == 1
    }

    /// `x` (rows × positions × channels) transposed to rows × channels × positions, or back.
    fn transpose<B: Compute>(
        &self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        backward: bool,
        dtype: Dtype,
    ) -> Result<Value<B>> {
        if self.is_identity() {
            return Ok(x);
        }
        let (positions, channels) = (self.input.positions(), self.input.channels);
        let (from_rows, from_cols) = match backward {
            true => (channels, positions),
            false => (positions, channels),
        };
        let backend = pass.backend;
        let mut y = backend.scratch_as(backend.len_of(&x), dtype)?;
        backend.transpose(&x, pass.rows, from_rows, from_cols, &mut y)?;
        Ok(Rc::new(y))
    }
}

impl<B: Compute> Module<B> for FlattenLayer {
    type Saved = ();

    fn forward(&mut self, pass: &Pass<'_, B>, x: Value<B>, _: &Fused<B>) -> Result<(Value<B>, ())> {
        let dtype = pass.backend.dtype_of(&x);
        Ok((self.transpose(pass, x, false, dtype)?, ()))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        _: (),
        dy: Value<B>,
        _: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        Ok(Some(self.transpose(pass, dy, true, Dtype::F32)?))
    }
}
