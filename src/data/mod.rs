//! Reading and writing the data wgnorm works on.

pub mod download;
pub mod mnist;
pub mod npy;
