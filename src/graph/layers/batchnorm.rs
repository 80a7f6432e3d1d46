//! `bn`: BatchNorm1d on flat features, BatchNorm2d (per channel over every position) on images.
//! A ReLU right after it, and a dropout after that, run in its pass (the fusion plan says when).

use std::fmt;
use std::rc::Rc;

use super::{
    Fused, LayerKind, Module, OnnxAttribute, OnnxNode, ParamGrads, Pass, Start, TakeTensor,
    TensorDef, Value,
};
use crate::backend::Backend;
use crate::distributed::{Collective, sync_bn};
use crate::graph::layer_spec::SampleShape;
use crate::ops::Compute;
use crate::ops::activation::Activation;
use crate::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormShape, BatchSums, Mode,
    RunningStats,
};
use crate::{Error, Result};

/// BatchNorm over the features, or over each channel's positions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm;

impl fmt::Display for BatchNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bn")
    }
}

/// Features (channels) a normalization scales and shifts, and the values each has per sample.
pub(crate) fn features_and_positions(input: SampleShape) -> (usize, usize) {
    match input {
        SampleShape::Flat(features) => (features, 1),
        SampleShape::Image(image) => (image.channels, image.positions()),
    }
}

impl BatchNorm {
    /// PyTorch's name of the module on `input`: BatchNorm1d on features, BatchNorm2d on images
    /// (whatever their size).
    pub fn torch_name(input: SampleShape) -> &'static str {
        match input {
            SampleShape::Flat(_) => "BatchNorm1d",
            SampleShape::Image(_) => "BatchNorm2d",
        }
    }

    pub(super) fn build<B: Compute>(
        &self,
        input: SampleShape,
        config: BatchNormConfig,
        tensors: &mut dyn TakeTensor<B>,
    ) -> Result<BatchNormLayer<B>> {
        let (features, positions) = features_and_positions(input);
        Ok(BatchNormLayer {
            affine: Affine {
                gamma: tensors.take("weight")?,
                beta: tensors.take("bias")?,
            },
            running: RunningStats {
                mean: tensors.take("running_mean")?,
                var: tensors.take("running_var")?,
            },
            batches_tracked: 0,
            features,
            positions,
            config,
        })
    }
}

impl LayerKind for BatchNorm {
    fn output(&self, input: SampleShape) -> Result<SampleShape> {
        Ok(input)
    }

    fn tensors(&self, input: SampleShape) -> Vec<TensorDef> {
        let (features, _) = features_and_positions(input);
        vec![
            TensorDef::param("weight", vec![features], Start::Ones),
            TensorDef::param("bias", vec![features], Start::Zeros),
            TensorDef::running("running_mean", vec![features], Start::Zeros),
            TensorDef::running("running_var", vec![features], Start::Ones),
        ]
    }

    fn torch(&self, input: SampleShape, config: BatchNormConfig) -> String {
        let (features, _) = features_and_positions(input);
        let name = Self::torch_name(input);
        let default = BatchNormConfig::default();
        if (config.eps(), config.momentum()) == (default.eps(), default.momentum()) {
            format!("nn.{name}({features})")
        } else {
            format!(
                "nn.{name}({features}, eps={}, momentum={})",
                config.eps(),
                config.momentum()
            )
        }
    }

    /// ONNX's momentum is 1 − PyTorch's.
    fn onnx(&self, _: SampleShape, config: BatchNormConfig) -> Result<Option<OnnxNode>> {
        Ok(Some(OnnxNode {
            op: "BatchNormalization",
            attributes: vec![
                ("epsilon", OnnxAttribute::Float(config.eps())),
                ("momentum", OnnxAttribute::Float(1.0 - config.momentum())),
            ],
            tensors: vec!["weight", "bias", "running_mean", "running_var"],
        }))
    }
}

/// Inference-mode BatchNorm folded into the weight and bias of the Linear or convolution before
/// it, in f64: with σ = √(running_var + eps), each output's weights w' = w·γ/σ and bias
/// b' = (b − μ)·γ/σ + β.
pub(crate) fn fold_into(
    (weight, bias): (&mut [f32], &mut [f32]),
    (gamma, beta): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    eps: f64,
) {
    let per_output = weight.len() / bias.len().max(1);
    for (output, (row, b)) in weight.chunks_mut(per_output).zip(bias).enumerate() {
        let sigma = (f64::from(var[output]) + eps).sqrt();
        let scale = f64::from(gamma[output]) / sigma;
        for w in row {
            *w = (f64::from(*w) * scale) as f32;
        }
        *b = ((f64::from(*b) - f64::from(mean[output])) * scale + f64::from(beta[output])) as f32;
    }
}

/// BatchNorm on a backend: over the features of (rows, features) activations, or over each
/// channel of channels-last images (every position of every image is a row).
pub struct BatchNormLayer<B: Backend> {
    /// Its γ and β.
    pub affine: Affine<B>,
    /// Running mean and variance.
    pub running: RunningStats<B>,
    /// Training forwards so far (`num_batches_tracked` in PyTorch).
    pub batches_tracked: u64,
    features: usize,
    /// Rows each sample contributes: height·width for BatchNorm2d, else 1.
    positions: usize,
    config: BatchNormConfig,
}

/// The input, the batch statistics it was normalized with (and over how many values, where
/// they were the group's), and where a ReLU (and dropout) ran in the same pass, that activation
/// and its output.
pub struct BatchNormSaved<B: Backend> {
    pub(crate) input: Value<B>,
    stats: B::Buffer,
    /// With synchronized statistics: the values per channel over the whole group's batch.
    synchronized: Option<u64>,
    activated: Option<(Activation, Value<B>)>,
}

impl<B: Compute> BatchNormLayer<B> {
    /// eps, momentum and running-variance convention.
    pub fn config(&self) -> BatchNormConfig {
        self.config
    }

    /// Sets the weight of each new batch in the running statistics (the other settings stay).
    pub fn set_momentum(&mut self, momentum: f32) -> Result<()> {
        self.config = self.config.with_momentum(momentum)?;
        Ok(())
    }

    /// The BatchNorm view of a batch of `rows` samples: in training, with the ghost batches
    /// of the virtual batch, if set (a ghost batch of samples is a run of consecutive rows of
    /// their positions).
    fn shape(&self, mode: Mode, rows: usize) -> Result<BatchNormShape> {
        let shape = BatchNormShape::new(rows * self.positions, self.features, 1);
        Ok(match mode {
            Mode::Train => shape.with_ghost_batches(self.config.ghost_batches(rows)?),
            Mode::Eval => shape,
        })
    }
}

impl<B: Compute> BatchNormLayer<B> {
    /// A training forward normalized by the statistics of the whole group's batch
    /// (`distributed::sync_bn`), which also update the running statistics; returns the values
    /// per channel of that batch.
    fn forward_synchronized(
        &mut self,
        backend: &B,
        group: &dyn Collective,
        x: &B::Buffer,
        shape: BatchNormShape,
        activation: Option<Activation>,
        out: &mut BatchNormForward<B>,
    ) -> Result<u64> {
        let (affine, running, config) = (&self.affine, &mut self.running, self.config);
        backend.batchnorm_partial_statistics(x, shape, affine, running, config, out)?;
        let mut own = backend.download_many(&[&out.stats, &running.mean, &running.var])?;
        let (mut running_var, mut running_mean) = (own.pop(), own.pop());
        let count = shape.per_channel() as u64;
        let (stats, total) =
            sync_bn::merge_statistics(group, &own[0], count, shape.c, config.eps())?;
        let (Some(mean), Some(var)) = (running_mean.as_mut(), running_var.as_mut()) else {
            return Err(Error::Shape(
                "the running statistics were not read back".to_string(),
            ));
        };
        sync_bn::update_running(&stats, total, config, mean, var)?;
        backend.write(&mut out.stats, &stats)?;
        backend.write(&mut running.mean, mean)?;
        backend.write(&mut running.var, var)?;
        backend.batchnorm_apply(x, shape, affine, &out.stats, activation, &mut out.y)?;
        Ok(total)
    }
}

impl<B: Compute> Module<B> for BatchNormLayer<B> {
    type Saved = BatchNormSaved<B>;

    /// The normalized x, or with a fused ReLU (and dropout) the activated one.
    fn forward(
        &mut self,
        pass: &Pass<'_, B>,
        x: Value<B>,
        fused: &Fused<B>,
    ) -> Result<(Value<B>, BatchNormSaved<B>)> {
        let (backend, mode) = (pass.backend, pass.mode);
        let shape = self.shape(mode, pass.rows)?;
        let mut out = BatchNormForward {
            y: backend.scratch_as(shape.numel(), backend.dtype_of(&x))?,
            stats: backend.scratch(shape.stats_len())?,
        };
        let (affine, running, config) = (&self.affine, &mut self.running, self.config);
        let activation = fused.relu.then_some(Activation {
            relu: true,
            dropout: fused.dropout,
        });
        let mut synchronized = None;
        match (activation, pass.group.filter(|_| mode == Mode::Train)) {
            (_, Some(group)) => {
                synchronized = Some(
                    self.forward_synchronized(backend, group, &x, shape, activation, &mut out)?,
                );
            }
            (Some(activation), None) => backend.batchnorm_activation_forward(
                mode, &x, shape, affine, running, config, activation, &mut out,
            )?,
            (None, None) => {
                backend.batchnorm_forward(mode, &x, shape, affine, running, config, &mut out)?
            }
        }
        if mode == Mode::Train {
            self.batches_tracked += 1;
        }
        let y = Rc::new(out.y);
        let saved = BatchNormSaved {
            input: x,
            stats: out.stats,
            synchronized,
            // Only a training pass has a backward to keep the output for.
            activated: (activation.filter(|_| mode == Mode::Train))
                .map(|activation| (activation, y.clone())),
        };
        Ok((y, saved))
    }

    /// With a fused activation, `dy` is the gradient of its output.
    fn backward(
        &self,
        pass: &Pass<'_, B>,
        saved: BatchNormSaved<B>,
        dy: Value<B>,
        grads: &mut ParamGrads<B>,
        _: bool,
    ) -> Result<Option<Value<B>>> {
        let backend = pass.backend;
        let shape = self.shape(Mode::Train, pass.rows)?;
        let mut out = BatchNormGrads {
            dx: backend.scratch(shape.numel())?,
            dgamma: grads.take("weight")?,
            dbeta: grads.take("bias")?,
        };
        let (x, gamma, stats) = (&*saved.input, &self.affine.gamma, &saved.stats);
        let activated = (saved.activated.as_ref()).map(|(activation, y)| (&**y, *activation));
        match (activated, saved.synchronized.and(pass.group)) {
            (_, Some(_)) => backend
                .batchnorm_parameter_grads(x, activated, &dy, shape, gamma, stats, &mut out)?,
            (None, None) => backend.batchnorm_backward(x, &dy, shape, gamma, stats, &mut out)?,
            (Some((y, activation)), None) => backend.batchnorm_activation_backward(
                x, y, activation, &dy, shape, gamma, stats, &mut out,
            )?,
        }
        if let (Some(count), Some(group)) = (saved.synchronized, pass.group) {
            // dγ and dβ stay this rank's own, to be summed once with every other gradient; dx
            // needs the group's.
            let own = backend.download_many(&[&out.dbeta, &out.dgamma])?;
            let (dbeta, dgamma) = sync_bn::sum_gradients(group, &own[0], &own[1])?;
            let sums = BatchSums {
                dbeta: &dbeta,
                dgamma: &dgamma,
                count,
            };
            let (dy, dx) = (&*dy, &mut out.dx);
            backend.batchnorm_backward_input(x, activated, dy, shape, (gamma, stats), sums, dx)?;
        }
        grads.put("weight", out.dgamma);
        grads.put("bias", out.dbeta);
        Ok(Some(Rc::new(out.dx)))
    }

    fn tensors(&self) -> Vec<(&'static str, &B::Buffer)> {
        vec![
            ("weight", &self.affine.gamma),
            ("bias", &self.affine.beta),
            ("running_mean", &self.running.mean),
            ("running_var", &self.running.var),
        ]
    }

    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buffer)> {
        vec![
            ("weight", &mut self.affine.gamma),
            ("bias", &mut self.affine.beta),
            ("running_mean", &mut self.running.mean),
            ("running_var", &mut self.running.var),
        ]
    }
}
