//! Loss and accuracy of a model on a set of images: in inference mode, and with BatchNorm
//! normalizing each batch by its own statistics (what training-mode normalization would give
//! at test time).

use crate::graph::{Compute, Layer, ModelSpec, Sequential};
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::LossTotals;
use crate::{Error, Result};

use super::passes::{Passes, Rows};

/// Loss and accuracy of `model` in inference mode on rows `0..rows` of `index` into `images`.
pub fn evaluate<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    rows: usize,
) -> Result<LossTotals> {
    let source = Rows::Indexed { images, index };
    Passes::inference(backend, &model.spec, source, rows)?.score(backend, model)
}

/// What `evaluate_with_batch_statistics` at `batch` normalizes each BatchNorm's input over, in
/// words: "batches of 32", or, where the model was trained with ghost batches of K, "ghost
/// batches of 8 (in batches of 32)", as training normalized them.
pub fn batch_statistics_over(spec: &ModelSpec, batch: usize) -> String {
    match spec.batchnorm_config().virtual_batch() {
        Some(ghost) => format!("ghost batches of {ghost} (in batches of {batch})"),
        None => format!("batches of {batch}"),
    }
}

/// Loss and accuracy of `model` on rows `0..rows` of `index` into `images` in whole batches of
/// `batch` rows (a last, partial batch is left out), each normalized by BatchNorm with its own
/// statistics as in training, with dropout off and the running statistics left as they are.
/// A model trained with ghost batches of K (`BatchNormConfig::virtual_batch`) is normalized as
/// training normalized it: over each ghost batch of K rows of a batch, which K must divide.
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
    if let Some(ghost) = model.spec.batchnorm_config().virtual_batch()
        && !batch.is_multiple_of(ghost)
    {
        return Err(Error::InvalidArgument(format!(
            "batch statistics over batches of {batch} images: the model's BatchNorm was trained \
             on ghost batches of {ghost}, which must divide the batch"
        )));
    }
    let passes = Passes::batches(Rows::Indexed { images, index }, rows, batch, 0)?;
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
    let result = passes.score(backend, model);
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
