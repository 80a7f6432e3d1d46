//! wgnorm: a small GPU training framework on wgpu compute shaders, built around Batch
//! Normalization.
//!
//! - [`gpu::GpuBackend`] runs WGSL kernels on any Vulkan, Metal or DX12 adapter;
//!   [`cpu::CpuBackend`] is its CPU twin with the same algorithms in f32.
//! - [`ops::batchnorm::BatchNormOps`] is BatchNorm forward (train and eval) and backward on
//!   either backend; [`reference`] holds the float64 formulas the tests check both against.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod cpu;
pub mod data;
mod error;
pub mod gpu;
pub mod graph;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod reference;
pub mod report;
pub mod train;

pub use backend::Backend;
pub use error::{Error, Result};
