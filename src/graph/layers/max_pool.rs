//! `maxpool<K>[s<S>]`: the maximum of each window, per channel, without padding
//! (`nn.MaxPool2d`).

use std::fmt;
use std::rc::Rc;

use super::{
    Fused, LayerKind, Module, OnnxAttribute, OnnxNode, ParamGrads, Pass, TakeTensor, Value,
};
use crate::backend::Backend;
use crate::graph::layer_spec::{Image, SampleShape, image_input};
use crate::ops::Compute;
use crate::ops::batchnorm::{BatchNormConfig, Mode};
use crate::ops::spatial::Window;
use crate::{Error, Result};

/// The maximum of each window, per channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxPool2d {
    /// Its kernel and stride (no padding).
    pub window: Window,
}

impl fmt::Display for MaxPool2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "maxpool{}", self.window.kernel)?;
        if self.window.stride != self.window.kernel {
            write!(f, "s{}", self.window.stride)?;
        }
        Ok(())
    }
}

impl LayerKind for MaxPool2d {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        if self.window.padding != 0 {
            return Err(Error::InvalidArgument(
                "max pooling takes no padding".to_string(),
            ));
        }
        let image = image_input("max pooling", input)?;
        let (height, width) = self.window.output(image.height, image.width)?;
        Ok(SampleShape::Image(Image::new(
            image.channels,
            height,
            width,
        )?))
    }

    fn torch(&self, _: SampleShape, _: BatchNormConfig) -> String {
        let window = self.window;
        format!("nn.MaxPool2d({}, stride={})", window.kernel, window.stride)
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        let (k, s) = (self.window.kernel as i64, self.window.stride as i64);
        Ok(Some(OnnxNode {
            op: "MaxPool",
            attributes: vec![
                ("kernel_shape", OnnxAttribute::Ints(vec![k, k])),
                ("strides", OnnxAttribute::Ints(vec![s, s])),
            ],
            tensors: Vec::new(),
        }))
    }
}

impl MaxPool2d {
    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        _: &mut dyn TakeTensor<B>,
    ) -> Result<MaxPoolLayer> {
        Ok(MaxPoolLayer {
            input: image_input("max pooling", input)?,
            window: self.window,
        })
    }
}

/// Max pooling on a backend.
pub struct MaxPoolLayer {
    input: Image,
    window: Window,
}

/// After a training forward, where each window's maximum was, which routes dy.
pub struct MaxPoolSaved<B: Backend> {
    taps: Option<B::Buffer>,
}

impl<B: Compute> Module<B> for MaxPoolLayer {
    type Saved = MaxPoolSaved<B>;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        _: &Fused<B>,
    ) -> Result<(Value<B>, MaxPoolSaved<B>)> {
        let backend = pass.backend;
        let shape = self.input.batch(pass.rows);
        let out = self.window.output_shape(shape, shape.channels)?.numel();
        let mut y = backend.scratch_as(out, backend.dtype_of(&x))?;
        let mut taps = match pass.mode {
            Mode::Train => Some(backend.scratch(out)?),
            Mode::Eval => None,
        };
        backend.max_pool_forward(&x, shape, self.window, &mut y, taps.as_mut())?;
        Ok((Rc::new(y), MaxPoolSaved { taps }))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: MaxPoolSaved<B>,
        dy: Value<B>,
        _: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let taps = saved.taps.ok_or_else(|| {
            Error::InvalidArgument("max pooling's backward needs a training forward".into())
        })?;
        let backend = pass.backend;
        let shape = self.input.batch(pass.rows);
        let mut dx = backend.scratch(shape.numel())?;
        backend.max_pool_backward(&taps, &dy, shape, self.window, &mut dx)?;
        Ok(Some(Rc::new(dx)))
    }
}
