//! A batch split along its samples so that each chunk's bindings fit what one binding may hold
//! and start at aligned offsets: how the GPU takes tensors larger than a binding (BatchNorm's
//! input, a convolution's patches).

use crate::{Error, Result};

/// Rows (samples) bound to one dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChunk {
    /// First row in the chunk.
    pub first_row: usize,
    /// Rows in the chunk.
    pub rows: usize,
}

/// What one row of a split batch takes in each tensor a chunk binds.
#[derive(Clone, Copy, Debug)]
pub struct RowBytes<'a> {
    /// Bytes per row of the largest tensor a chunk binds: the chunk's rows of it must fit
    /// `max_binding`.
    pub largest: u64,
    /// Bytes per row of each tensor a chunk binds as a view of a larger one: each view's
    /// offset must be a multiple of the offset alignment.
    pub viewed: &'a [u64],
}

/// Splits `rows` rows so that each chunk's tensors stay within `max_binding` bytes and each
/// viewed one starts at a multiple of `offset_alignment` bytes: one chunk where the whole batch
/// fits. Refuses, naming `what` and the limit, when not even one aligned group of rows fits.
pub fn plan_chunks(
    what: &str,
    rows: usize,
    row_bytes: RowBytes,
    max_binding: u64,
    offset_alignment: u64,
) -> Result<Vec<RowChunk>> {
    if row_bytes.largest.saturating_mul(rows as u64) <= max_binding {
        return Ok(vec![RowChunk { first_row: 0, rows }]);
    }
    let row_step = row_bytes.viewed.iter().fold(1, |step, &bytes| {
        lcm(step, offset_alignment / gcd(offset_alignment, bytes))
    });
    let rows_per_chunk = (max_binding / row_bytes.largest) / row_step * row_step;
    if rows_per_chunk == 0 {
        return Err(Error::Limit(format!(
            "{what} cannot be split to fit the adapter's max_storage_buffer_binding_size of \
             {max_binding} bytes: {row_step} sample(s) of {} bytes are the smallest aligned piece",
            row_bytes.largest
        )));
    }
    let rows_per_chunk = rows_per_chunk as usize;
    Ok((0..rows)
        .step_by(rows_per_chunk)
        .map(|first_row| RowChunk {
            first_row,
            rows: rows_per_chunk.min(rows - first_row),
        })
        .collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rows: usize, largest: u64, viewed: &[u64], max_binding: u64) -> Result<Vec<RowChunk>> {
        plan_chunks("x", rows, RowBytes { largest, viewed }, max_binding, 256)
    }

    #[test]
    fn small_batches_are_one_chunk() -> Result<()> {
        let whole = vec![RowChunk {
            first_row: 0,
            rows: 32,
        }];
        assert_eq!(plan(32, 512, &[512], 128 << 20)?, whole);
        Ok(())
    }

    #[test]
    fn large_batches_split_into_aligned_chunks_that_cover_every_row() -> Result<()> {
        // A BatchNorm input (one tensor, viewed), and a convolution: patches of 7056 values
        // made per chunk, views of the 784-value input and the 25088-value output.
        for (rows, largest, viewed) in [
            (65537, 513 * 4, vec![513 * 4]),
            (5000, 7056 * 4, vec![784 * 2, 25088 * 4, 25088 * 4, 784 * 4]),
        ] {
            let chunks = plan(rows, largest, &viewed, 128 << 20)?;
            assert!(chunks.len() >= 2);
            let mut next = 0;
            for chunk in &chunks {
                assert_eq!(chunk.first_row, next);
                for bytes in &viewed {
                    assert_eq!(chunk.first_row as u64 * bytes % 256, 0, "offset alignment");
                }
                assert!(chunk.rows as u64 * largest <= 128 << 20);
                next += chunk.rows;
            }
            assert_eq!(next, rows);
        }
        Ok(())
    }

    #[test]
    fn a_row_larger_than_the_binding_limit_is_refused_naming_the_limit() {
        let err = plan(4, 4 << 20, &[4 << 20], 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
        // 1 MiB holds a row of 2052 bytes, but not the 64 rows aligned views need.
        let err = plan(4096, 2052, &[2052, 4], 64 << 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 sample(s)"), "{err}");
    }
}
