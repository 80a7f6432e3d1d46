//! The view BatchNorm takes of x: (N, C, S), and its ghost batches.

use super::stat;
use crate::{Error, Result};

/// x viewed as (N, C, S): N samples, C channels, S = product of the spatial dims (1 for (N, C)),
/// with training statistics over each of `ghost_batches` = G equal runs of consecutive samples
/// (ghost batches: x viewed as (G, N/G, C, S), one set of statistics per (g, c)); G = 1 for
/// plain BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    /// Samples.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Values per channel per sample (the product of the spatial dims).
    pub s: usize,
    /// G, the number of runs of N/G consecutive samples that each get their own training
    /// statistics. It must divide N, in either mode, and the statistics buffer holds G blocks
    /// of `stat` planes (`stats_len`); evaluation mode normalizes the whole batch with the
    /// running statistics and writes the first block only.
    pub ghost_batches: usize,
}

impl BatchNormShape {
    /// The BatchNorm view of a tensor shape: dim 0 is the batch, dim 1 the channels, the rest
    /// spatial. At least two dims, as in PyTorch.
    pub fn from_dims(dims: &[usize]) -> Result<Self> {
        if dims.len() < 2 {
            return Err(Error::Shape(format!(
                "BatchNorm needs x of shape (N, C) or (N, C, ...), got {dims:?}"
            )));
        }
        let shape = Self::new(dims[0], dims[1], dims[2..].iter().product());
        if shape.numel() == 0 {
            return Err(Error::Shape(format!(
                "BatchNorm needs a non-empty x, got {dims:?}"
            )));
        }
        Ok(shape)
    }

    /// N samples of C channels with S values each, one set of statistics per channel.
    pub const fn new(n: usize, c: usize, s: usize) -> Self {
        Self {
            n,
            c,
            s,
            ghost_batches: 1,
        }
    }

    /// The same x with training statistics over `ghost_batches` runs of consecutive samples.
    pub fn with_ghost_batches(self, ghost_batches: usize) -> Self {
        Self {
            ghost_batches,
            ..self
        }
    }

    /// Samples per ghost batch, N/G.
    pub fn ghost_rows(&self) -> usize {
        self.n / self.ghost_batches
    }

    /// Number of elements of x.
    pub fn numel(&self) -> usize {
        self.n * self.c * self.s
    }

    /// Values each training statistic is taken over, m = (N/G)·S: N·S without ghost batches.
    pub fn per_channel(&self) -> usize {
        self.ghost_rows() * self.s
    }

    /// Floats in the statistics buffer: the `stat` planes of each ghost batch, one after
    /// another.
    pub fn stats_len(&self) -> usize {
        stat::PLANES * self.c * self.ghost_batches
    }

    /// The view of one ghost batch (also the whole x where there is one).
    pub fn ghost(&self) -> Self {
        Self::new(self.ghost_rows(), self.c, self.s)
    }
}
