//! What makes a model on one rank a replica of the others': the same start, and the same
//! gradients at every step.

use super::Collective;
use crate::backend::Backend;
use crate::graph::{Compute, Sequential};
use crate::optim::Optimizer;
use crate::{Error, Result};

/// Rank 0's parameters, running statistics, BatchNorm counters and optimizer state (and its
/// step count) onto every rank, as PyTorch's DistributedDataParallel does at start.
pub fn broadcast_state<B: Compute>(
    backend: &B,
    group: &dyn Collective,
    model: &mut Sequential<B>,
    optimizer: &mut Optimizer<B>,
) -> Result<()> {
    broadcast_buffers(backend, group, model.tensors_mut()?)?;
    broadcast_buffers(
        backend,
        group,
        optimizer.state.iter_mut().flatten().collect(),
    )?;
    let mut counters: Vec<u64> = std::iter::once(optimizer.steps)
        .chain(model.batchnorms_mut().map(|bn| bn.batches_tracked))
        .collect();
    group.broadcast_u64(&mut counters, 0)?;
    optimizer.steps = counters[0];
    for (bn, &tracked) in model.batchnorms_mut().zip(&counters[1..]) {
        bn.batches_tracked = tracked;
    }
    Ok(())
}

/// Rank 0's running statistics onto every rank: where each rank normalizes by its own slice,
/// each updates its own, and the model keeps rank 0's, as PyTorch's DistributedDataParallel
/// does (it broadcasts rank 0's buffers before every forward).
pub fn broadcast_running<B: Compute>(
    backend: &B,
    group: &dyn Collective,
    model: &mut Sequential<B>,
) -> Result<()> {
    broadcast_buffers(backend, group, model.running_mut()?)
}

/// Refuses to go on where the replicas no longer hold the same model: every rank hashes its
/// tensors (parameters and running statistics, bit for bit) and every hash must be rank 0's.
/// Ranks on devices that round differently (a CPU beside a GPU, two kinds of GPU) would drift
/// apart; this says so instead of training on with different models.
pub fn check_replicas_agree<B: Compute>(
    backend: &B,
    group: &dyn Collective,
    model: &mut Sequential<B>,
) -> Result<()> {
    let tensors = model.tensors_mut()?;
    let shared: Vec<&B::Buffer> = tensors.iter().map(|buffer| &**buffer).collect();
    let values = backend.download_many(&shared)?;
    let hash =
        super::fnv1a((values.iter().flatten()).flat_map(|value| value.to_bits().to_le_bytes()));
    let hashes = group.all_gather_u64(&[hash])?;
    match hashes.iter().position(|&other| other != hashes[0]) {
        None => Ok(()),
        Some(rank) => Err(Error::Distributed(format!(
            "rank {rank}'s model differs from rank 0's: the replicas drifted apart (their \
             devices, or their MPI library's reductions, round differently); train on devices \
             of one kind"
        ))),
    }
}

/// Rank 0's values of `buffers` into every rank's, in one broadcast.
pub(crate) fn broadcast_buffers<B: Backend>(
    backend: &B,
    group: &dyn Collective,
    buffers: Vec<&mut B::Buffer>,
) -> Result<()> {
    let mut flat = {
        let shared: Vec<&B::Buffer> = buffers.iter().map(|buffer| &**buffer).collect();
        backend.download_many(&shared)?.concat()
    };
    group.broadcast(&mut flat, 0)?;
    write_back(backend, buffers, &flat)
}

/// Each gradient summed over the group, in place, in one reduction over all of them. Each
/// rank's gradients are its share of the gradient of the global batch's mean loss
/// (`LossOps::softmax_cross_entropy_part`), so their sum is that gradient, the same on every
/// rank; with slices of equal size this is PyTorch's average of the ranks' gradients.
pub fn all_reduce_gradients<B: Backend>(
    backend: &B,
    group: &dyn Collective,
    grads: &mut [B::Buffer],
) -> Result<()> {
    let total = grads.iter().map(|grad| backend.len_of(grad)).sum();
    FLAT_GRADIENTS.with_borrow_mut(|flat| {
        flat.resize(total, 0.0);
        backend.download_many_into(&grads.iter().collect::<Vec<_>>(), flat)?;
        group.all_reduce_sum(flat)?;
        write_back(backend, grads.iter_mut().collect(), flat)
    })
}

thread_local! {
    /// The flat gradients of `all_reduce_gradients`, kept from step to step (as long as the
    /// rank's thread lives, one f32 per parameter): megabytes allocated afresh at every step
    /// cost fresh pages at every step (for `cnn-bn`'s 1.7 MB, 2 ms an all-reduce instead of
    /// 0.2 ms between two processes here).
    static FLAT_GRADIENTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `flat` into `buffers`, one after another.
fn write_back<B: Backend>(backend: &B, buffers: Vec<&mut B::Buffer>, flat: &[f32]) -> Result<()> {
    let mut start = 0;
    for buffer in buffers {
        let len = backend.len_of(buffer);
        backend.write(buffer, &flat[start..start + len])?;
        start += len;
    }
    Ok(())
}
