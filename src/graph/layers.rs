//! Each layer's forward and backward side by side, with what the forward saves for the backward
//! in a named struct.

use super::Compute;
use crate::backend::Backend;
use crate::ops::activation::{Activation, DropoutMask};
use crate::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormShape, Mode, RunningStats,
};
use crate::ops::groupnorm::{GROUPNORM_EPS, GroupNormShape};
use crate::ops::matmul::{MatrixLayout, Store};
use crate::{Dtype, Error, Result};

/// out = x·Wᵀ + b.
pub struct Linear<B: Backend> {
    /// [outputs, inputs], row-major as PyTorch stores it.
    pub weight: B::Buffer,
    /// One value per output.
    pub bias: B::Buffer,
    pub(super) inputs: usize,
    pub(super) outputs: usize,
}

/// The input, for dW.
pub struct LinearSaved<B: Backend> {
    pub(super) input: B::Buffer,
}

/// The gradients of a Linear or convolution layer's parameters.
pub struct LinearGrads<B: Backend> {
    /// dL/dW, [outputs, inputs].
    pub weight: B::Buffer,
    /// dL/db.
    pub bias: B::Buffer,
}

impl<B: Compute> Linear<B> {
    /// y = x·Wᵀ + b, stored as `output`.
    pub(super) fn forward(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
        output: Dtype,
    ) -> Result<(B::Buffer, LinearSaved<B>)> {
        let mut y = backend.scratch_as(rows * self.outputs, output)?;
        self.forward_into(backend, &x, rows, &mut y)?;
        Ok((y, LinearSaved { input: x }))
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

    /// dW = dyᵀ·x and db = the column sums of dy (one pass) into `grads`, and dx = dy·W
    /// unless the input is the data; hands back the saved input (the layer before may need its
    /// own output).
    pub(super) fn backward(
        &self,
        backend: &B,
        saved: LinearSaved<B>,
        dy: &B::Buffer,
        rows: usize,
        grads: &mut LinearGrads<B>,
        want_dx: bool,
    ) -> Result<(Option<B::Buffer>, B::Buffer)> {
        self.weight_grads(backend, &saved.input, dy, rows, grads, Store::Replace)?;
        let dx = match want_dx {
            true => Some(self.input_grad(backend, dy, rows)?),
            false => None,
        };
        Ok((dx, saved.input))
    }

    /// dW = dyᵀ·x and db = the column sums of dy, in one pass, into `grads` (or added to them).
    pub(super) fn weight_grads(
        &self,
        backend: &B,
        x: &B::Buffer,
        dy: &B::Buffer,
        rows: usize,
        grads: &mut LinearGrads<B>,
        store: Store,
    ) -> Result<()> {
        backend.matmul_and_row_sums(
            dy,
            MatrixLayout::row_major(rows, self.outputs).transposed(),
            x,
            MatrixLayout::row_major(rows, self.inputs),
            &mut grads.weight,
            &mut grads.bias,
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
}

/// BatchNorm over the features of (rows, features) activations, or over each channel of
/// channels-last images (BatchNorm2d: every position of every image is a row).
pub struct BatchNorm<B: Backend> {
    /// Its γ and β.
    pub affine: Affine<B>,
    /// Running mean and variance.
    pub running: RunningStats<B>,
    /// Training forwards so far (`num_batches_tracked` in PyTorch).
    pub batches_tracked: u64,
    pub(super) features: usize,
    /// Rows each sample contributes: height·width for BatchNorm2d, else 1.
    pub(super) positions: usize,
    pub(super) config: BatchNormConfig,
}

/// The input, the batch statistics it was normalized with, and the ReLU (and dropout) run in
/// the same pass, if any.
pub struct BatchNormSaved<B: Backend> {
    input: B::Buffer,
    stats: B::Buffer,
    activation: Option<Activation>,
}

impl<B: Backend> BatchNormSaved<B> {
    /// The BatchNorm's input.
    pub(super) fn input(&self) -> &B::Buffer {
        &self.input
    }

    /// The activation that ran in the BatchNorm's pass.
    pub(super) fn activation(&self) -> Option<Activation> {
        self.activation
    }
}

impl<B: Compute> BatchNorm<B> {
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

    /// The normalized x, or with `activation` (a ReLU, then dropout) the activated one.
    pub(super) fn forward(
        &mut self,
        backend: &B,
        mode: Mode,
        x: B::Buffer,
        rows: usize,
        activation: Option<Activation>,
    ) -> Result<(B::Buffer, BatchNormSaved<B>)> {
        let shape = self.shape(mode, rows)?;
        let mut out = BatchNormForward {
            y: backend.scratch_as(shape.numel(), backend.dtype_of(&x))?,
            stats: backend.scratch(shape.stats_len())?,
        };
        let (affine, running, config) = (&self.affine, &mut self.running, self.config);
        match activation {
            Some(activation) => backend.batchnorm_activation_forward(
                mode, &x, shape, affine, running, config, activation, &mut out,
            )?,
            None => {
                backend.batchnorm_forward(mode, &x, shape, affine, running, config, &mut out)?
            }
        }
        if mode == Mode::Train {
            self.batches_tracked += 1;
        }
        let saved = BatchNormSaved {
            input: x,
            stats: out.stats,
            activation,
        };
        Ok((out.y, saved))
    }

    /// With an activation in the forward's pass, `dy` is the gradient of its output, and
    /// `activated` that output.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        backend: &B,
        saved: BatchNormSaved<B>,
        activated: Option<&B::Buffer>,
        dy: &B::Buffer,
        rows: usize,
        dgamma: B::Buffer,
        dbeta: B::Buffer,
    ) -> Result<BatchNormGrads<B>> {
        let shape = self.shape(Mode::Train, rows)?;
        let mut grads = BatchNormGrads {
            dx: backend.scratch(shape.numel())?,
            dgamma,
            dbeta,
        };
        let (x, gamma, stats) = (&saved.input, &self.affine.gamma, &saved.stats);
        match (saved.activation, activated) {
            (None, _) => backend.batchnorm_backward(x, dy, shape, gamma, stats, &mut grads)?,
            (Some(activation), Some(out)) => backend.batchnorm_activation_backward(
                x, out, activation, dy, shape, gamma, stats, &mut grads,
            )?,
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "the BatchNorm backward pass needs the output of the activation run in its \
                     forward pass"
                        .to_string(),
                ));
            }
        }
        Ok(grads)
    }
}

/// LayerNorm, GroupNorm or InstanceNorm over channels-last activations: statistics per sample
/// (and group), the same in training and evaluation, so it takes no mode and keeps no running
/// statistics.
pub struct GroupNorm<B: Backend> {
    /// Its γ and β, one per feature (channel).
    pub affine: Affine<B>,
    /// The layout of one sample, `samples` = 1.
    pub(super) sample: GroupNormShape,
}

/// The input and the statistics it was normalized with.
pub struct GroupNormSaved<B: Backend> {
    input: B::Buffer,
    stats: B::Buffer,
}

impl<B: Compute> GroupNorm<B> {
    fn shape(&self, rows: usize) -> GroupNormShape {
        GroupNormShape {
            samples: rows,
            ..self.sample
        }
    }

    pub(super) fn forward(
        &self,
        backend: &B,
        x: B::Buffer,
        rows: usize,
    ) -> Result<(B::Buffer, GroupNormSaved<B>)> {
        let shape = self.shape(rows);
        let mut out = BatchNormForward {
            y: backend.scratch_as(shape.numel(), backend.dtype_of(&x))?,
            stats: backend.scratch(shape.stats_len())?,
        };
        backend.groupnorm_forward(&x, shape, &self.affine, GROUPNORM_EPS, &mut out)?;
        let saved = GroupNormSaved {
            input: x,
            stats: out.stats,
        };
        Ok((out.y, saved))
    }

    pub(super) fn backward(
        &self,
        backend: &B,
        saved: GroupNormSaved<B>,
        dy: &B::Buffer,
        rows: usize,
        dgamma: B::Buffer,
        dbeta: B::Buffer,
    ) -> Result<BatchNormGrads<B>> {
        let shape = self.shape(rows);
        let mut grads = BatchNormGrads {
            dx: backend.scratch(shape.numel())?,
            dgamma,
            dbeta,
        };
        let (x, gamma, stats) = (&saved.input, &self.affine.gamma, &saved.stats);
        backend.groupnorm_backward(x, dy, shape, gamma, stats, &mut grads)?;
        Ok(grads)
    }
}

/// The input, whose sign gates dy, and the dropout run in the same pass, if any.
pub struct ReluSaved<B: Backend> {
    input: B::Buffer,
    dropout: Option<DropoutMask>,
}

/// ReLU, followed in the same pass by `dropout` when a dropout layer comes next in training.
pub(super) fn relu_forward<B: Compute>(
    backend: &B,
    x: B::Buffer,
    dropout: Option<DropoutMask>,
) -> Result<(B::Buffer, ReluSaved<B>)> {
    let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
    backend.activation_forward(
        Activation {
            relu: true,
            dropout,
        },
        &x,
        &mut y,
    )?;
    Ok((y, ReluSaved { input: x, dropout }))
}

pub(super) fn relu_backward<B: Compute>(
    backend: &B,
    saved: ReluSaved<B>,
    dy: &B::Buffer,
) -> Result<B::Buffer> {
    let mut dx = backend.scratch(backend.len_of(dy))?;
    let activation = Activation {
        relu: true,
        dropout: saved.dropout,
    };
    backend.activation_backward(activation, Some(&saved.input), dy, &mut dx)?;
    Ok(dx)
}

/// The mask's key (the mask itself is recomputed); `None` where dropout was the identity.
pub struct DropoutSaved {
    mask: Option<DropoutMask>,
}

impl DropoutSaved {
    /// Whether the dropout passed its input on unchanged (eval mode, or p = 0).
    pub(super) fn is_identity(&self) -> bool {
        self.mask.is_none()
    }
}

pub(super) fn dropout_forward<B: Compute>(
    backend: &B,
    mask: Option<DropoutMask>,
    x: B::Buffer,
) -> Result<(B::Buffer, DropoutSaved)> {
    let Some(mask) = mask else {
        return Ok((x, DropoutSaved { mask: None }));
    };
    let mut y = backend.scratch_as(backend.len_of(&x), backend.dtype_of(&x))?;
    backend.dropout_forward(&mask, &x, &mut y)?;
    Ok((y, DropoutSaved { mask: Some(mask) }))
}

pub(super) fn dropout_backward<B: Compute>(
    backend: &B,
    saved: DropoutSaved,
    dy: B::Buffer,
) -> Result<B::Buffer> {
    let Some(mask) = saved.mask else {
        return Ok(dy);
    };
    let mut dx = backend.scratch(backend.len_of(&dy))?;
    backend.dropout_backward(&mask, &dy, &mut dx)?;
    Ok(dx)
}
