//! `dropout<P>`: inverted dropout in training, the identity in evaluation. Its mask is a pure
//! function of (seed, layer, step, element), so the backward recomputes it.

use std::fmt;
use std::rc::Rc;

use super::{Fused, LayerKind, Module, OnnxNode, ParamGrads, Pass, TakeTensor, Value};
use crate::graph::layer_spec::SampleShape;
use crate::ops::Compute;
use crate::ops::activation::DropoutMask;
use crate::ops::batchnorm::BatchNormConfig;
use crate::{Error, Result};

/// Inverted dropout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of dropping each value, in [0, 1).
    pub p: f32,
}

impl fmt::Display for Dropout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dropout{}", self.p)
    }
}

impl LayerKind for Dropout {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::InvalidArgument(format!(
                "dropout must be in [0, 1), got {}",
                self.p
            )));
        }
        Ok(input)
    }

    fn torch(&self, _: SampleShape, _: BatchNormConfig) -> String {
        format!("nn.Dropout({})", self.p)
    }

    /// Inference computes nothing for it.
    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(None)
    }
}

impl Dropout {
    pub(super) fn build<B: Compute>(
        &self,
        _: SampleShape,
        _: BatchNormConfig,
        _: &mut dyn TakeTensor<B>,
    ) -> Result<DropoutLayer> {
        Ok(DropoutLayer { p: self.p })
    }
}

/// Dropout on a backend.
pub struct DropoutLayer {
    /// Probability of dropping each value.
    pub p: f32,
}

/// The mask's key (the mask itself is recomputed); `None` where dropout was the identity.
pub struct DropoutSaved {
    mask: Option<DropoutMask>,
}

impl<B: Compute> Module<B> for DropoutLayer {
    type Saved = DropoutSaved;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        fused: &Fused<B>,
    ) -> Result<(Value<B>, DropoutSaved)> {
        let Some(mask) = fused.dropout else {
            return Ok((x, DropoutSaved { mask: None }));
        };
        let backend = pass.backend;
        let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
        backend.dropout_forward(&mask, &x, &mut y)?;
        Ok((Rc::new(y), DropoutSaved { mask: Some(mask) }))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: DropoutSaved,
        dy: Value<B>,
        _: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let Some(mask) = saved.mask else {
            return Ok(Some(dy));
        };
        let backend = pass.backend;
        let mut dx = backend.scratch(backend.len_of(&dy))?;
        backend.dropout_backward(&mask, &dy, &mut dx)?;
        Ok(Some(Rc::new(dx)))
    }
}
