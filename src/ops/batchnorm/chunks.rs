//! x split along N so that each chunk's binding fits what one binding may hold and starts at an
//! aligned offset: how the GPU takes tensors larger than a binding.

use super::BatchNormShape;
use crate::{Dtype, Error, Result};

/// Rows of x bound to one dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChunk {
    /// First row of x in the chunk.
    pub first_row: usize,
    /// Rows in the chunk.
    pub rows: usize,
}

/// Splits x along N so that each chunk's binding stays within `max_binding` bytes and starts at
/// a multiple of `offset_alignment` bytes. Refuses, naming the limit, when not even one aligned
/// group of samples fits.
pub fn plan_row_chunks(
    shape: BatchNormShape,
    dtype: Dtype,
    max_binding: u64,
    offset_alignment: u64,
) -> Result<Vec<RowChunk>> {
    let row_bytes = (shape.c * shape.s * dtype.size()) as u64;
    let total = row_bytes * shape.n as u64;
    if total <= max_binding {
        return Ok(vec![RowChunk {
            first_row: 0,
            rows: shape.n,
        }]);
    }
    let row_step = offset_alignment / gcd(offset_alignment, row_bytes);
    let rows_per_chunk = (max_binding / row_bytes) / row_step * row_step;
    if rows_per_chunk == 0 {
        return Err(Error::Limit(format!(
            "BatchNorm input of shape (N={}, C={}, S={}) cannot be split to fit the adapter's \
             max_storage_buffer_binding_size of {max_binding} bytes: {row_step} sample(s) of \
             {row_bytes} bytes are the smallest aligned piece",
            shape.n, shape.c, shape.s
        )));
    }
    let rows_per_chunk = rows_per_chunk as usize;
    Ok((0..shape.n)
        .step_by(rows_per_chunk)
        .map(|first_row| RowChunk {
            first_row,
            rows: rows_per_chunk.min(shape.n - first_row),
        })
        .collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tensors_are_one_chunk() -> Result<()> {
        let shape = BatchNormShape {
            n: 32,
            c: 128,
            s: 1,
        };
        let chunks = plan_row_chunks(shape, Dtype::F32, 128 << 20, 256)?;
        assert_eq!(
            chunks,
            vec![RowChunk {
                first_row: 0,
                rows: 32
            }]
        );
        Ok(())
    }

    #[test]
    fn large_tensors_split_into_aligned_chunks_that_cover_every_row() -> Result<()> {
        let shape = BatchNormShape {
            n: 65537,
            c: 513,
            s: 1,
        };
        let chunks = plan_row_chunks(shape, Dtype::F32, 128 << 20, 256)?;
        assert!(chunks.len() >= 2);
        let mut next = 0;
        for chunk in &chunks {
            assert_eq!(chunk.first_row, next);
            assert_eq!((chunk.first_row * 513 * 4) % 256, 0, "offset alignment");
            assert!((chunk.rows * 513 * 4) as u64 <= 128 << 20);
            next += chunk.rows;
        }
        assert_eq!(next, 65537);
        Ok(())
    }

    #[test]
    fn a_sample_larger_than_the_binding_limit_is_refused_naming_the_limit() {
        let shape = BatchNormShape {
            n: 4,
            c: 3,
            s: 1 << 20,
        };
        let err = plan_row_chunks(shape, Dtype::F32, 1 << 20, 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
    }
}
