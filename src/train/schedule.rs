//! Which images each step sees: the validation cut, each epoch's shuffle, the batches.

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use super::TrainConfig;
use crate::{Error, Result};

/// Where the training images are cut: Keras' `int(n·(1 − validation_split))`.
pub fn split_point(images: usize, val_split: f64) -> usize {
    (images as f64 * (1.0 - val_split)) as usize
}

const SHUFFLE_STREAM: u64 = 0x7368_7566_666c_6500;

/// The order in which epoch `epoch` (0-based) visits the first `rows` training images: a
/// function of (seed, epoch) alone, so a resumed run shuffles as an uninterrupted one.
pub fn epoch_order(seed: u64, epoch: usize, rows: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..rows as u32).collect();
    let mut rng =
        StdRng::seed_from_u64(crate::seed::derive_seed(seed, SHUFFLE_STREAM, epoch as u64));
    order.shuffle(&mut rng);
    order
}

/// (first, rows) of each step's batch. The last partial batch is kept (Keras), or dropped with
/// `drop_last` (PyTorch's `DataLoader(drop_last=True)`).
pub fn batches(rows: usize, batch_size: usize, drop_last: bool) -> Vec<(usize, usize)> {
    (0..rows)
        .step_by(batch_size.max(1))
        .map(|first| (first, batch_size.min(rows - first)))
        .filter(|&(_, len)| !(drop_last && len < batch_size))
        .collect()
}

/// Refuses a batch size the training set cannot fill, a last batch of one row with BatchNorm
/// (its batch statistics need two values per channel), and batches that BatchNorm's virtual
/// batch does not divide.
pub(super) fn check_batches(config: &TrainConfig, train_rows: usize) -> Result<()> {
    let batch = config.batch_size;
    if batch > train_rows {
        return Err(Error::InvalidArgument(format!(
            "batch size {batch} exceeds the {train_rows} training images"
        )));
    }
    if let Some(virtual_batch) =
        (config.spec.batchnorm_config().virtual_batch()).filter(|_| config.spec.has_batchnorm())
    {
        check_ghost_batches(config, train_rows, virtual_batch)?;
    }
    if config.spec.has_batchnorm() && !config.drop_last && train_rows % batch == 1 {
        return Err(Error::InvalidArgument(format!(
            "the last batch of each epoch would hold 1 image ({train_rows} training images at \
             batch size {batch}), and BatchNorm cannot normalize a batch of one; choose another \
             --batch-size or pass --drop-last"
        )));
    }
    Ok(())
}

/// Every training batch, the last one included where it is kept, must be a whole number of
/// ghost batches, and more than one: a single ghost batch is the plain batch. Each BatchNorm
/// layer needs two values per feature in a ghost batch: a BatchNorm1d has one per sample, a
/// BatchNorm2d one per sample and position (one, on 1×1 images).
fn check_ghost_batches(
    config: &TrainConfig,
    train_rows: usize,
    virtual_batch: usize,
) -> Result<()> {
    let single = (config.spec.batchnorm_nodes().into_iter())
        .find(|layer| virtual_batch * layer.positions < 2);
    if let Some(layer) = single {
        return Err(Error::InvalidArgument(format!(
            "--bn-virtual-batch {virtual_batch} leaves the BatchNorm at layer {} one value per \
             feature in each ghost batch (it has one per sample), and its training statistics \
             need at least 2: choose K of 2 or more",
            layer.name
        )));
    }
    let batch = config.batch_size;
    if batch == virtual_batch {
        return Err(Error::InvalidArgument(format!(
            "--bn-virtual-batch {virtual_batch} has no effect at --batch-size {batch}: each batch \
             would be one ghost batch (choose K dividing the batch size, or drop the flag)"
        )));
    }
    if !batch.is_multiple_of(virtual_batch) {
        return Err(Error::InvalidArgument(format!(
            "--batch-size {batch} is not a multiple of --bn-virtual-batch {virtual_batch}"
        )));
    }
    let last = train_rows % batch;
    if !config.drop_last && last != 0 && !last.is_multiple_of(virtual_batch) {
        return Err(Error::InvalidArgument(format!(
            "the last batch of each epoch would hold {last} images ({train_rows} training images \
             at batch size {batch}), not a multiple of --bn-virtual-batch {virtual_batch}; pass \
             --drop-last or choose K dividing {last}"
        )));
    }
    Ok(())
}
