//! Loss and accuracy of a model on a set of images: in inference mode, and with BatchNorm
//! normalizing each batch by its own statistics (what training-mode normalization would give
//! at test time).

use crate::graph::{Compute, Layer, Sequential, StepKey};
use crate::ops::batchnorm::Mode;
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::{LossTotals, metric};
use crate::{Error, Result};

use super::inference_rows;

/// Loss and accuracy of `model` in inference mode on rows `0..rows` of `index` into `images`.
pub fn evaluate<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    rows: usize,
) -> Result<LossTotals> {
    // Any number of rows per pass gives the same results; the binding limit caps it.
    let per_pass = inference_rows(backend, &model.spec)?;
    let passes = (0..rows)
        .step_by(per_pass)
        .map(|first| (first, per_pass.min(rows - first)));
    score(backend, model, Mode::Eval, images, index, passes)
}

/// The loss totals of forward passes in `mode` over the (first row, rows) `passes` of `index`
/// into `images`, without dropout.
fn score<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    mode: Mode,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    passes: impl Iterator<Item = (usize, usize)>,
) -> Result<LossTotals> {
    let classes = model.spec.classes();
    let mut metrics = backend.filled(metric::LEN, 0.0)?;
    let key = StepKey { seed: 0, step: 0 };
    for (first, len) in passes {
        let mut x = backend.scratch(len * images.row_len)?;
        let mut labels = backend.scratch(len)?;
        backend.gather(images, index, first, &mut x, &mut labels)?;
        let (logits, _) = model.forward(backend, mode, x, len, key)?;
        backend.softmax_cross_entropy(&logits, &labels, classes, None, &mut metrics)?;
        backend.flush()?;
    }
    LossTotals::from_metrics(&backend.download(&metrics)?)
}

/// Loss and accuracy of `model` on rows `0..rows` of `index` into `images` in whole batches of
/// `batch` rows (a last, partial batch is left out), each normalized by BatchNorm with its own
/// statistics as in training, with dropout off and the running statistics left as they are.
/// Against `evaluate`, it shows what the running statistics change.
pub fn evaluate_with_batch_statistics<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    rows: usize,
    batch: usize,
) -> Result<LossTotals> {
    if !model.spec.has_batchnorm() {
        return Err(Error::InvalidArgument(
            "the model has no BatchNorm layer, so batch statistics change nothing".to_string(),
        ));
    }
    if batch < 2 || batch > rows {
        return Err(Error::InvalidArgument(format!(
            "batch statistics need batches of 2 to {rows} images, got {batch}"
        )));
    }
    // Momentum 0 keeps the running statistics as they are; p = 0 draws no dropout mask.
    let kept: Vec<_> = (model.batchnorms_mut())
        .map(|bn| (bn.batches_tracked, bn.config().momentum()))
        .collect();
    let dropout: Vec<f32> = (model.layers.iter_mut())
        .filter_map(|layer| match layer {
            Layer::Dropout(dropout) => Some(std::mem::replace(&mut dropout.p, 0.0)),
            _ => None,
        })
        .collect();
    for bn in model.batchnorms_mut() {
        bn.set_momentum(0.0)?;
    }
    let passes = (0..rows - rows % batch)
        .step_by(batch)
        .map(|first| (first, batch));
    let result = score(backend, model, Mode::Train, images, index, passes);
    for (bn, &(batches_tracked, momentum)) in model.batchnorms_mut().zip(&kept) {
        bn.batches_tracked = batches_tracked;
        bn.set_momentum(momentum)?;
    }
    let layers = model.layers.iter_mut().filter_map(|layer| match layer {
        Layer::Dropout(dropout) => Some(&mut dropout.p),
        _ => None,
    });
    for (p, kept) in layers.zip(dropout) {
        *p = kept;
    }
    result
}
