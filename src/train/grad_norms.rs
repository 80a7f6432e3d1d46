//! Gradient norms during training (`TrainConfig::log_grad_norms`): every N steps, the L2 norm of
//! each parameter's gradient and of the gradient reaching the input of each Linear and
//! convolution layer where a parameter lies before it. Their squares are summed on the device
//! into one buffer per epoch, which is read back once, at the end of the epoch: logging adds no
//! readback to a step.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::graph::{Compute, ModelSpec, Sequential, Tape};
use crate::{Error, Result};

/// What each logged step records, in order: each parameter's gradient (`ModelSpec::params`
/// order), then the gradient reaching the input of each Linear and convolution layer where the
/// backward pass computes it (not before the first layer with parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct GradNormLayout {
    names: Vec<String>,
    /// Per layer, where the gradient reaching its input goes, if it is recorded.
    input_slots: Vec<Option<usize>>,
}

impl GradNormLayout {
    /// The layout for models of `spec`.
    pub fn of(spec: &ModelSpec) -> Self {
        let mut names: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        let input_slots = (spec.nodes().iter().enumerate())
            .map(|(index, node)| {
                let observed = node.layer.kind().is_weighted() && spec.computes_input_grad(index);
                observed.then(|| {
                    names.push(node.tensor_name("input"));
                    names.len() - 1
                })
            })
            .collect();
        Self { names, input_slots }
    }

    /// Each recorded norm's name: `3.weight`, `3.bias`, ... then `3.input` for the gradient
    /// reaching layer 3's input.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Norms per logged step.
    pub fn width(&self) -> usize {
        self.names.len()
    }
}

/// The gradient norms of one logged step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradNormRecord {
    /// The optimizer step (0-based over the run) whose gradients they are.
    pub step: u64,
    /// One L2 norm per `GradNormLayout::names` entry.
    pub norms: Vec<f64>,
}

/// One epoch's logged steps on the device, filled by `train_on_batch`.
pub struct GradNormLog<B: Backend> {
    every: u64,
    layout: GradNormLayout,
    squares: B::Buffer,
    steps: Vec<u64>,
}

impl<B: Compute> GradNormLog<B> {
    /// Room for the logged steps among the `steps` steps from `first_step` on.
    pub(super) fn new(
        backend: &B,
        spec: &ModelSpec,
        every: u64,
        first_step: u64,
        steps: usize,
    ) -> Result<Self> {
        let layout = GradNormLayout::of(spec);
        let logged = (first_step..first_step + steps as u64)
            .filter(|step| step.is_multiple_of(every))
            .count();
        let squares = backend.filled((logged * layout.width()).max(1), 0.0)?;
        Ok(Self {
            every,
            layout,
            squares,
            steps: Vec::with_capacity(logged),
        })
    }

    /// `model`'s backward pass for optimizer step `step`, recording its gradients' squared
    /// norms when the step is one to log.
    pub(super) fn backward(
        &mut self,
        backend: &B,
        model: &Sequential<B>,
        step: u64,
        tape: Tape<B>,
        dlogits: B::Buffer,
    ) -> Result<Vec<B::Buffer>> {
        if !step.is_multiple_of(self.every) {
            return model.backward(backend, tape, dlogits);
        }
        let first = self.steps.len() * self.layout.width();
        let (layout, squares) = (&self.layout, &mut self.squares);
        let grads = model.backward_observed(backend, tape, dlogits, &mut |index, dx| {
            let slot = layout.input_slots[index]
                .ok_or_else(|| Error::Shape(format!("layer {index} has no gradient slot")))?;
            backend.sum_squares(dx, squares, first + slot)
        })?;
        for (slot, grad) in grads.iter().enumerate() {
            backend.sum_squares(grad, squares, first + slot)?;
        }
        self.steps.push(step);
        Ok(grads)
    }

    /// The logged steps' norms, read back in one download.
    pub(super) fn read(self, backend: &B) -> Result<Vec<GradNormRecord>> {
        let squares = backend.download(&self.squares)?;
        let width = self.layout.width();
        Ok((self.steps.iter().zip(squares.chunks(width)))
            .map(|(&step, squares)| GradNormRecord {
                step,
                norms: squares.iter().map(|&s| f64::from(s).sqrt()).collect(),
            })
            .collect())
    }
}
