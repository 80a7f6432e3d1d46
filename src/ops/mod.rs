//! Each op's forward and backward, for both backends, side by side.

pub mod batchnorm;
pub mod matmul;
