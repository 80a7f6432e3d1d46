//! `ln`, `gn<G>`, `in`: LayerNorm, GroupNorm and InstanceNorm over channels-last activations,
//! statistics per sample and group of neighbouring channels, the same in training and
//! evaluation, with a scale and shift per feature (channel) and no running statistics.

use std::fmt;
use std::rc::Rc;

use super::batchnorm::features_and_positions;
use super::{
    Fused, LayerKind, Module, OnnxNode, ParamGrads, Pass, Start, TakeTensor, TensorDef, Value,
};
use crate::backend::Backend;
use crate::graph::layer_spec::{SampleShape, image_input};
use crate::ops::Compute;
use crate::ops::batchnorm::{Affine, BatchNormConfig, BatchNormForward, BatchNormGrads};
use crate::ops::groupnorm::{GROUPNORM_EPS, GroupNormShape, check_shape};
use crate::{Error, Result};

/// How a normalization groups the channels of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Groups {
    /// One group of all the sample's values: LayerNorm.
    All,
    /// This many groups of neighbouring channels: GroupNorm.
    Count(usize),
    /// One group per channel, over its positions: InstanceNorm (images only).
    PerChannel,
}

/// LayerNorm, GroupNorm or InstanceNorm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// How the channels are grouped.
    pub groups: Groups,
}

impl GroupNorm {
    /// LayerNorm.
    pub const LAYER: GroupNorm = GroupNorm {
        groups: Groups::All,
    };
    /// InstanceNorm.
    pub const INSTANCE: GroupNorm = GroupNorm {
        groups: Groups::PerChannel,
    };

    /// GroupNorm with `groups` groups.
    pub const fn groups(groups: usize) -> Self {
        GroupNorm {
            groups: Groups::Count(groups),
        }
    }

    /// The GroupNorm shape of `samples` samples of `input`.
    pub fn shape(&self, samples: usize, input: SampleShape) -> GroupNormShape {
        let (channels, positions) = features_and_positions(input);
        let groups = match self.groups {
            Groups::All => 1,
            Groups::Count(groups) => groups,
            Groups::PerChannel => channels,
        };
        GroupNormShape::new(samples, positions, channels, groups)
    }

    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        _: BatchNormConfig,
        tensors: &mut dyn TakeTensor<B>,
    ) -> Result<GroupNormLayer<B>> {
        Ok(GroupNormLayer {
            affine: Affine {
                gamma: tensors.take("weight")?,
                beta: tensors.take("bias")?,
            },
            sample: self.shape(1, input),
        })
    }
}

impl fmt::Display for GroupNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.groups {
            Groups::All => f.write_str("ln"),
            Groups::Count(groups) => write!(f, "gn{groups}"),
            Groups::PerChannel => f.write_str("in"),
        }
    }
}

impl LayerKind for GroupNorm {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        if self.groups == Groups::PerChannel {
            image_input("InstanceNorm", input)?;
        }
        check_shape(self.shape(1, input))?;
        Ok(input)
    }

    fn tensors(&self, input: SampleShape) -> Vec<TensorDef> {
        let (features, _) = features_and_positions(input);
        vec![
            TensorDef::param("weight", vec![features], Start::Ones),
            TensorDef::param("bias", vec![features], Start::Zeros),
        ]
    }

    fn torch(&self, input: SampleShape, _: BatchNormConfig) -> String {
        let (features, _) = features_and_positions(input);
        match (self.groups, input) {
            (Groups::All, SampleShape::Flat(_)) => format!("nn.LayerNorm({features})"),
            (Groups::All, SampleShape::Image(_)) => format!("nn.GroupNorm(1, {features})"),
            (Groups::Count(groups), _) => format!("nn.GroupNorm({groups}, {features})"),
            (Groups::PerChannel, _) => format!("nn.InstanceNorm2d({features}, affine=True)"),
        }
    }

    fn onnx(&self, _: SampleShape, _: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Err(Error::InvalidArgument(
            "ONNX export covers Linear, convolution, BatchNorm, ReLU, dropout and pooling \
             layers and residual blocks, not LayerNorm, GroupNorm or InstanceNorm (the \
             safetensors checkpoint loads into PyTorch)"
                .to_string(),
        ))
    }
}

/// LayerNorm, GroupNorm or InstanceNorm on a backend.
pub struct GroupNormLayer<B: Backend> {
    /// Its γ and β, one per feature (channel).
    pub affine: Affine<B>,
    /// The layout of one sample, `samples` = 1.
    sample: GroupNormShape,
}

/// The input and the statistics it was normalized with.
pub struct GroupNormSaved<B: Backend> {
    input: Value<B>,
    stats: B::Buffer,
}

impl<B: Compute> GroupNormLayer<B> {
    fn shape(&self, rows: usize) -> GroupNormShape {
        GroupNormShape {
            samples: rows,
            ..self.sample
        }
    }
}

impl<B: Compute> Module<B> for GroupNormLayer<B> {
    type Saved = GroupNormSaved<B>;

    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        _: &Fused<B>,
    ) -> Result<(Value<B>, GroupNormSaved<B>)> {
        let backend = pass.backend;
        let shape = self.shape(pass.rows);
        let mut out = BatchNormForward {
            y: backend.scratch_as(shape.numel(), backend.dtype_of(&x))?,
            stats: backend.scratch(shape.stats_len())?,
        };
        backend.groupnorm_forward(&x, shape, &self.affine, GROUPNORM_EPS, &mut out)?;
        let saved = GroupNormSaved {
            input: x,
            stats: out.stats,
        };
        Ok((Rc::new(out.y), saved))
    }

    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: GroupNormSaved<B>,
        dy: Value<B>,
        grads: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let backend = pass.backend;
        let shape = self.shape(pass.rows);
        let mut out = BatchNormGrads {
            dx: backend.scratch(shape.numel())?,
            dgamma: grads.take("weight")?,
            dbeta: grads.take("bias")?,
        };
        let (x, gamma, stats) = (&*saved.input, &self.affine.gamma, &saved.stats);
        backend.groupnorm_backward(x, &dy, shape, gamma, stats, &mut out)?;
        grads.put("weight", out.dgamma);
        grads.put("bias", out.dbeta);
        Ok(Some(Rc::new(out.dx)))
    }

    fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
        vec![("weight", &self.affine.gamma), ("bias", &self.affine.beta)]
    }

    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        vec![
            ("weight", &mut self.affine.gamma),
            ("bias", &mut self.affine.beta),
        ]
    }
}
