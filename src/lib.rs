//! wgnorm: a small GPU training framework on wgpu compute shaders, built around Batch
//! Normalization.
//!
//! - [`gpu::GpuBackend`] runs WGSL kernels on any Vulkan, Metal or DX12 adapter, on a device of
//!   its own or on one the host program already owns; [`cpu::CpuBackend`] is its CPU twin with
//!   the same algorithms in f32. Code written against [`graph::Compute`] runs on either.
//! - [`ops::batchnorm::BatchNormOps`] is BatchNorm forward (train and eval) and backward, and
//!   [`ops::groupnorm::GroupNormOps`] LayerNorm, GroupNorm and InstanceNorm on the same kernels;
//!   [`model::Classifier`] trains MLPs and convolutional nets; [`mod@reference`] holds the
//!   float64 formulas the tests check both backends against.
//! - Every fallible call returns [`Result`] with the one [`Error`] enum: bad arguments are errors
//!   that name the argument, never panics.
//!
//! # Entry points
//!
//! **A standalone GPU context**, falling back to the CPU where there is no adapter (the same
//! generic code serves both):
//!
//! ```
//! use wgnorm::Backend;
//! use wgnorm::cpu::CpuBackend;
//! use wgnorm::gpu::{AdapterRequest, GpuBackend};
//! use wgnorm::ops::batchnorm::{Affine, BatchNormConfig, BatchNormOps, BatchNormShape, Mode, RunningStats};
//!
//! fn normalize<B: BatchNormOps>(backend: &B) -> wgnorm::Result<Vec<f32>> {
//!     let shape = BatchNormShape::new(4, 2, 1);
//!     let x = backend.upload(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0])?;
//!     let affine = Affine { gamma: backend.filled(2, 1.0)?, beta: backend.filled(2, 0.0)? };
//!     let mut running = RunningStats { mean: backend.filled(2, 0.0)?, var: backend.filled(2, 1.0)? };
//!     let out = backend.batchnorm_forward_new(
//!         Mode::Train, &x, shape, &affine, &mut running, BatchNormConfig::default())?;
//!     backend.download(&out.y)
//! }
//!
//! # fn main() -> wgnorm::Result<()> {
//! let y = match GpuBackend::new(&AdapterRequest::default()) {
//!     Ok(gpu) => normalize(&gpu)?,
//!     Err(_) => normalize(&CpuBackend)?,
//! };
//! // Each channel now has mean 0 and variance 1 (up to eps).
//! assert!((y[0] + y[2] + y[4] + y[6]).abs() < 1e-5);
//! assert!((y[1] - y[0]).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```
//!
//! **On the host's own device**: [`gpu::GpuBackend::from_device`] wraps a `wgpu::Device` and
//! `wgpu::Queue` the host created, and [`gpu::GpuBackend::record_batchnorm_forward`] /
//! [`record_batchnorm_backward`](gpu::GpuBackend::record_batchnorm_backward) record into the
//! host's `wgpu::CommandEncoder` on the host's buffers; the host submits. `examples/embed_bn.rs`
//! is the whole program:
//!
//! ```
//! use wgnorm::Dtype;
//! use wgnorm::gpu::{AdapterRequest, GpuBackend};
//! use wgnorm::ops::batchnorm::{BatchNormConfig, BatchNormShape, HostBatchNormForward, Mode};
//! use wgpu::util::DeviceExt;
//!
//! # fn main() -> wgnorm::Result<()> {
//! # // A device "the host owns": here borrowed from a standalone context; a host makes its own.
//! # let Ok(standalone) = GpuBackend::new(&AdapterRequest::default()) else { return Ok(()) };
//! # let (device, queue) = (standalone.device().clone(), standalone.queue().clone());
//! let buffer = |values: &[f32]| {
//!     device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
//!         label: None,
//!         contents: bytemuck::cast_slice(values),
//!         usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
//!     })
//! };
//! let shape = BatchNormShape::new(4, 2, 1);
//! let (x, y) = (buffer(&[1., 10., 2., 20., 3., 30., 4., 40.]), buffer(&[0.0; 8]));
//! let (gamma, beta) = (buffer(&[1.0; 2]), buffer(&[0.0; 2]));
//! let (mean, var, stats) = (buffer(&[0.0; 2]), buffer(&[1.0; 2]), buffer(&[0.0; 10]));
//!
//! let wgnorm = GpuBackend::from_device(device.clone(), queue.clone());
//! let mut encoder = device.create_command_encoder(&Default::default());
//! let buffers = HostBatchNormForward {
//!     activations: Dtype::F32,
//!     x: &x, gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var,
//!     y: &y, stats: &stats,
//! };
//! wgnorm.record_batchnorm_forward(&mut encoder, Mode::Train, shape, BatchNormConfig::default(), &buffers)?;
//! queue.submit([encoder.finish()]); // nothing ran before this
//!
//! use wgnorm::Backend;
//! let normalized = wgnorm.download(&wgnorm.wrap_buffer("y", &y, 8, Dtype::F32)?)?;
//! assert!((normalized[0] + normalized[2] + normalized[4] + normalized[6]).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```
//!
//! **A model**: [`model::Classifier`] builds an MLP from a [`graph::ModelSpec`], trains it on
//! slices or device buffers with an [`optim::OptimizerConfig`], predicts, and saves and loads
//! safetensors files that PyTorch reads (its module docs have a runnable example, and
//! `examples/train_custom.rs` trains 784-256-BN-128-BN-10 on MNIST).
//!
//! **Data**: [`data::mnist::load`] reads the IDX files; `data::download::ensure` (feature
//! `download`) fetches them once, verifying SHA-256.
//!
//! # Features
//!
//! The default features build the `wgnorm` command line: `cli` (clap, indicatif, ctrlc, .npy
//! files), `plot` (PNG curves) and `download` (ureq with rustls, sha2). A program that embeds
//! wgnorm needs none of them: `wgnorm = { version = "0.1", default-features = false }`.
//!
//! wgnorm re-exports the [`wgpu`] it is built on. A host that shares its device with wgnorm
//! ([`gpu::GpuBackend::from_device`]) must use that same major version of wgpu, most simply
//! through `wgnorm::wgpu`.

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod distributed;
mod error;
pub mod gpu;
pub mod graph;
#[doc(hidden)]
pub mod host_memory;
pub mod model;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod reference;
pub mod seed;
pub mod train;

pub use backend::{Backend, Dtype};
pub use error::{Error, Result};
pub use wgpu;
