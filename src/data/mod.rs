//! Reading and writing the data wgnorm works on.

pub mod npy;
