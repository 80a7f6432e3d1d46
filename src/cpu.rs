//! The CPU backend: buffers are vectors and each op runs at once. Its kernels, the CPU twins of
//! the WGSL ones, live beside their GPU launchers in `src/ops/<op>/cpu.rs`.
//!
//! A training step allocates the same activations as the step before, so a buffer's memory goes
//! back to a pool when it is dropped and the next buffer of that length takes it: otherwise the
//! allocator hands the largest ones (a convolution's patches) back to the operating system and
//! every step faults them in again, zeroed page by page.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use crate::Result;
use crate::backend::Backend;

/// The CPU backend. Its buffers are vectors, pooled per thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// A CPU buffer: a vector of f32 whose memory returns to its thread's pool when dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuBuffer(Vec<f32>);

impl Deref for CpuBuffer {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for CpuBuffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a CpuBuffer {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut CpuBuffer {
    type Item = &'a mut f32;
    type IntoIter = std::slice::IterMut<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        let vector = std::mem::take(&mut self.0);
        if vector.capacity() > 0 {
            // A thread that is exiting has no pool left: its buffers are simply freed.
            let _ = POOL.try_with(|pool| pool.borrow_mut().give(vector));
        }
    }
}

/// The most bytes a thread's pool keeps. A model's training step needs far less; evaluation
/// passes of 1,000 images through a CNN need about this much, and the sizes used least recently
/// make room for new ones.
const POOL_BYTES: usize = 1 << 30;

/// Freed vectors by length, each length with the tick of its last use.
#[derive(Default)]
struct Pool {
    free: HashMap<usize, (u64, Vec<Vec<f32>>)>,
    bytes: usize,
    tick: u64,
}

impl Pool {
    /// A freed vector of exactly `len` values, if one is pooled.
    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        self.tick += 1;
        let (used, vectors) = self.free.get_mut(&len)?;
        *used = self.tick;
        let vector = vectors.pop()?;
        self.bytes -= bytes_of(&vector);
        Some(vector)
    }

    /// Keeps `vector` for the next buffer of its length, first dropping the lengths used least
    /// recently if the pool would grow past `POOL_BYTES`.
    fn give(&mut self, vector: Vec<f32>) {
        let (len, bytes) = (vector.len(), bytes_of(&vector));
        if bytes > POOL_BYTES {
            return;
        }
        while self.bytes + bytes > POOL_BYTES {
            let stalest = (self.free.iter())
                .filter(|&(&other, (_, vectors))| other != len && !vectors.is_empty())
                .min_by_key(|(_, (used, _))| *used)
                .map(|(&other, _)| other);
            let Some(stalest) = stalest else {
                return;
            };
            if let Some((_, vectors)) = self.free.remove(&stalest) {
                self.bytes -= vectors.iter().map(bytes_of).sum::<usize>();
            }
        }
        self.tick += 1;
        let entry = self.free.entry(len).or_default();
        entry.0 = self.tick;
        entry.1.push(vector);
        self.bytes += bytes;
    }
}

fn bytes_of(vector: &Vec<f32>) -> usize {
    vector.capacity() * size_of::<f32>()
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// A pooled vector of `len` values, holding whatever its last user left, if there is one.
fn reuse(len: usize) -> Option<Vec<f32>> {
    POOL.try_with(|pool| pool.borrow_mut().take(len))
        .ok()
        .flatten()
}

/// A buffer of `len` values, pooled or new, every value set by `fill` on a pooled one and by
/// `fresh` on a new one.
fn buffer(
    len: usize,
    fill: impl FnOnce(&mut [f32]),
    fresh: impl FnOnce() -> Vec<f32>,
) -> CpuBuffer {
    CpuBuffer(match reuse(len) {
        Some(mut vector) => {
            fill(&mut vector);
            vector
        }
        None => fresh(),
    })
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;

    fn describe(&self) -> String {
        "cpu".to_string()
    }

    fn upload(&self, data: &[f32]) -> Result<CpuBuffer> {
        Ok(buffer(
            data.len(),
            |values| values.copy_from_slice(data),
            || data.to_vec(),
        ))
    }

    fn len_of(&self, buffer: &CpuBuffer) -> usize {
        buffer.len()
    }

    fn write(&self, buffer: &mut CpuBuffer, data: &[f32]) -> Result<()> {
        crate::ops::check_len("written buffer", data.len(), buffer.len())?;
        buffer.copy_from_slice(data);
        Ok(())
    }

    fn filled(&self, len: usize, value: f32) -> Result<CpuBuffer> {
        Ok(buffer(
            len,
            |values| values.fill(value),
            || vec![value; len],
        ))
    }

    fn scratch(&self, len: usize) -> Result<CpuBuffer> {
        // A pooled vector keeps its old values: the contents of scratch are unspecified.
        Ok(buffer(len, |_| {}, || vec![0.0; len]))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn download(&self, buffer: &CpuBuffer) -> Result<Vec<f32>> {
        Ok(buffer.to_vec())
    }

    fn download_many_into(&self, buffers: &[&CpuBuffer], out: &mut [f32]) -> Result<()> {
        let total: usize = buffers.iter().map(|buffer| buffer.len()).sum();
        crate::ops::check_len("downloaded values", out.len(), total)?;
        let mut start = 0;
        for buffer in buffers {
            out[start..start + buffer.len()].copy_from_slice(buffer);
            start += buffer.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused_by_the_next_of_its_length_and_only_by_it() {
        let backend = CpuBackend;
        let first = backend.upload(&[1.0, 2.0, 3.0]).unwrap();
        let address = first.as_ptr();
        drop(first);
        let other_length = backend.scratch(2).unwrap();
        assert_ne!(other_length.as_ptr(), address);
        let same_length = backend.filled(3, 7.0).unwrap();
        assert_eq!(same_length.as_ptr(), address);
        assert_eq!(same_length.to_vec(), [7.0; 3]);
    }

    #[test]
    fn the_pool_drops_the_stalest_lengths_to_stay_under_its_bound() {
        let mut pool = Pool::default();
        let quarter = POOL_BYTES / 4 / size_of::<f32>();
        pool.give(vec![0.0; quarter]);
        pool.give(vec![0.0; quarter + 1]);
        pool.give(vec![0.0; quarter + 2]);
        assert!(pool.take(quarter).is_some());
        pool.give(vec![0.0; quarter]);
        // A fourth length does not fit beside the three: the least recently used goes.
        pool.give(vec![0.0; quarter + 3]);
        assert!(pool.bytes <= POOL_BYTES);
        assert!(pool.take(quarter + 1).is_none());
        assert!(pool.take(quarter).is_some());
        assert!(pool.take(quarter + 3).is_some());
    }
}
