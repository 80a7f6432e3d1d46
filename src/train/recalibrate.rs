//! PreciseBN: a model's BatchNorm running statistics recomputed from training batches, for
//! when they lag the weights (a short run, a low momentum, a changed batch size, averaged
//! weights).

use crate::graph::{Compute, Sequential};
use crate::ops::data::DeviceImages;
use crate::{Error, Result};

use super::passes::{Passes, Rows};

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
/// rows of `images` in a shuffled order: pass k (from 1) enters with momentum 1/k, and each
/// pass is submitted before the next, so device memory stays that of one pass. The weights,
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
    let source = Rows::Indexed {
        images,
        index: &index,
    };
    let covered = plan.batches * plan.batch_size;
    let passes = Passes::batches(source, covered, plan.batch_size, plan.seed)?;
    // The first pass enters with momentum 1, replacing the fresh statistics; after pass k
    // (from 0), the next enters with 1/(k + 2), its equal share of the average.
    set_momentum(model, 1.0)?;
    passes.run(backend, model, |model, pass| {
        set_momentum(model, 1.0 / (pass.number + 2) as f32)
    })?;
    for (bn, (batches_tracked, momentum)) in model.batchnorms_mut().zip(kept) {
        bn.batches_tracked = batches_tracked;
        bn.set_momentum(momentum)?;
    }
    Ok(())
}

/// Sets every BatchNorm's momentum in `model`.
fn set_momentum<B: Compute>(model: &mut Sequential<B>, momentum: f32) -> Result<()> {
    model
        .batchnorms_mut()
        .try_for_each(|bn| bn.set_momentum(momentum))
}
