//! `avgpool`: the mean of each channel over the whole image, giving a 1×1 image
//! (`nn.AdaptiveAvgPool2d(1)`).

use std::fmt;
use std::rc::Rc;

use super::{Fused, LayerKind, Module, OnnxNode, ParamGrads, Pass, TakeTensor, Value};
use crate::Result;
use crate::graph::layer_spec::{Image, SampleShape, image_input};
use crate::ops::Compute;
use crate::ops::batchnorm::BatchNormConfig;

/// Global average pooling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvgPool;

impl fmt::Display for AvgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("avgpool")
    }
}

impl LayerKind for AvgPool {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        Ok(SampleShape::Image(Image {
            height: 1,
            width: 1,
            ..image_input("average pooling", input)?
        }))
    }

    fn torch(&self, _: SampleShape, _: BatchNormConfig) -> String {
        "nn.AdaptiveAvgPool2d(1)".to_string()
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(Some(OnnxNode {
            op: "GlobalAveragePool",
            attributes: Vec::new(),
            tensors: Vec::new(),
        }))
    }
}

impl AvgPool {
    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        _: &mut dyn TakeTensor<B>,
    ) -> Result<AvgPoolLayer> {
        Ok(AvgPoolLayer {
            input: image_input("average pooling", input)?,
        })
    }
}

/// Global average pooling on a backend: it saves nothing.
pub struct AvgPoolLayer {
    input: Image,
}

impl<B: Compute> Module<B> for AvgPoolLayer {
    type Saved = ();

    fn forward(&mut self, pass: &Pass<'_, B>, x: Value<B>, _: &Fused<B>) -> Result<(Value<B>, ())> {
        let backend = pass.backend;
        let mut y = backend.scratch_as(pass.rows * self.input.channels, backend.dtype_of(&x))?;
        backend.avg_pool_forward(&x, self.input.batch(pass.rows), &mut y)?;
        Ok((Rc::new(y), ()))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        _: (),
        dy: Value<B>,
        _: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let shape = self.input.batch(pass.rows);
        let mut dx = pass.backend.scratch(shape.numel())?;
        pass.backend.avg_pool_backward(&dy, shape, &mut dx)?;
        Ok(Some(Rc::new(dx)))
    }
}
