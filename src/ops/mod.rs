//! Each op's forward and backward, for both backends, side by side.

pub mod activation;
pub mod batchnorm;
pub mod data;
pub mod loss;
pub mod matmul;
pub mod optimizer;

use crate::{Error, Result};

/// Refuses a buffer whose length is not the one the op needs.
pub(crate) fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::Shape(format!(
            "{what} has {got} values, expected {expected}"
        )));
    }
    Ok(())
}
