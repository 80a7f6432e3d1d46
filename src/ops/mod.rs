//! The ops, one folder per family: `mod.rs` holds the op trait, its shapes, its argument checks
//! and the formula; `cpu.rs` the CPU twin; `gpu.rs` the launcher of the WGSL kernels in
//! `shaders/`.
//!
//! Each trait's public methods are provided: they check every argument, the same way for every
//! backend, and then call the backend's `*_unchecked` method, which may assume them valid. So
//! both backends refuse exactly the same calls with the same messages.

pub mod activation;
pub mod batchnorm;
pub mod chunks;
pub mod data;
pub mod groupnorm;
pub mod loss;
pub mod matmul;
pub mod optimizer;
pub mod spatial;
pub mod sum_squares;

use crate::backend::Backend;
use crate::{Error, Result};

/// Everything a backend must run to train a model.
pub trait Compute:
    Backend
    + matmul::MatmulOps
    + batchnorm::BatchNormOps
    + groupnorm::GroupNormOps
    + activation::ActivationOps
    + loss::LossOps
    + optimizer::OptimizerOps
    + data::DataOps
    + spatial::SpatialOps
    + sum_squares::SumSquaresOps
{
}

impl<T> Compute for T where
    T: Backend
        + matmul::MatmulOps
        + batchnorm::BatchNormOps
        + groupnorm::GroupNormOps
        + activation::ActivationOps
        + loss::LossOps
        + optimizer::OptimizerOps
        + data::DataOps
        + spatial::SpatialOps
        + sum_squares::SumSquaresOps
{
}

/// Refuses a buffer whose length is not the one the op needs.
pub(crate) fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::Shape(format!(
            "{what} has {got} values, expected {expected}"
        )));
    }
    Ok(())
}

/// WGSL indexes arrays with u32, so no op takes a tensor of more elements, on any backend.
pub(crate) fn check_u32_indexable(what: &str, elements: usize) -> Result<()> {
    if elements > u32::MAX as usize {
        return Err(Error::Limit(format!(
            "{what} of {elements} elements exceeds the 2^32 elements a GPU kernel can index"
        )));
    }
    Ok(())
}
