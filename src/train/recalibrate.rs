//! PreciseBN: a model's BatchNorm running statistics recomputed from training batches, for
//! when they lag the weights (a short run, a low momentum, a changed batch size, averaged
//! weights).

use crate::graph::{Compute, Sequential, StepKey};
use crate::ops::batchnorm::Mode;
use crate::ops::data::DeviceImages;
use crate::{Error, Result};

/// How many training batches recalibration averages over, and which.
#[derive(Clone, Copy, Debug)]
pub struct Recalibration {
    /// Training-mode forward passes whose batch statistics are averaged.
    pub batches: usize,
    /// Rows per pass.
    pub batch_size: usize,
    /// Shuffles the training rows (and draws the dropout masks of the passes).
    pub seed: u64,
}

impl Recalibration {
    /// Refuses a setting that would average nothing, or more rows than `rows` offers.
    pub fn check(&self, rows: usize) -> Result<()> {
        if self.batches == 0 {
            return Err(Error::InvalidArgument(
                "--batches must be at least 1".to_string(),
            ));
        }
        if self.batch_size < 2 {
            return Err(Error::InvalidArgument(format!(
                "--batch-size must be at least 2 for batch statistics, got {}",
                self.batch_size
            )));
        }
        let most = rows / self.batch_size;
        if self.batches > most {
            return Err(Error::InvalidArgument(format!(
                "--batches {} at --batch-size {} needs {} training images, the split has {rows} \
                 (at most {most} batches)",
                self.batches,
                self.batch_size,
                self.batches * self.batch_size
            )));
        }
        Ok(())
    }
}

/// Replaces every BatchNorm's running mean and variance in `model` by the equal-weight average
/// of its batch statistics over `plan.batches` training-mode passes over the first `rows`
/// rows of `images` in a shuffled order: pass k (from 1) enters with momentum 1/k. The weights,
/// each layer's momentum and its count of training batches stay as they were.
pub fn recalibrate<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    rows: usize,
    plan: Recalibration,
) -> Result<()> {
    if !model.spec.has_batchnorm() {
        return Err(Error::InvalidArgument(
            "the model has no BatchNorm layer: there are no running statistics to recalibrate"
                .to_string(),
        ));
    }
    plan.check(rows)?;
    if let Some(virtual_batch) = model.spec.batchnorm_config().virtual_batch()
        && !plan.batch_size.is_multiple_of(virtual_batch)
    {
        return Err(Error::InvalidArgument(format!(
            "--batch-size {} is not a multiple of the model's BatchNorm virtual batch of \
             {virtual_batch} (its training statistics are over ghost batches of that size)",
            plan.batch_size
        )));
    }
    let kept: Vec<_> = (model.batchnorms_mut())
        .map(|bn| (bn.batches_tracked, bn.config().momentum()))
        .collect();
    // Fresh statistics, so that nothing of the old ones (NaN included) survives the first pass.
    for bn in model.batchnorms_mut() {
        let features = backend.len_of(&bn.running.mean);
        bn.running.mean = backend.filled(features, 0.0)?;
        bn.running.var = backend.filled(features, 1.0)?;
    }
    let order = super::epoch_order(plan.seed, 0, rows);
    let index = backend.upload_indices(&order)?;
    let inputs = model.spec.inputs();
    for pass in 0..plan.batches {
        for bn in model.batchnorms_mut() {
            bn.set_momentum(1.0 / (pass + 1) as f32)?;
        }
        let mut x = backend.scratch(plan.batch_size * inputs)?;
        let mut labels = backend.scratch(plan.batch_size)?;
        backend.gather(images, &index, pass * plan.batch_size, &mut x, &mut labels)?;
        let key = StepKey {
            seed: plan.seed,
            step: pass as u64,
        };
        model.forward(backend, Mode::Train, x, plan.batch_size, key)?;
    }
    for (bn, (batches_tracked, momentum)) in model.batchnorms_mut().zip(kept) {
        bn.batches_tracked = batches_tracked;
        bn.set_momentum(momentum)?;
    }
    Ok(())
}
