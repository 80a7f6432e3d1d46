//! Pooled device buffers.
//!
//! A dropped buffer is not reused at once: work recorded but not yet submitted may still read
//! it, and `Queue::write_buffer` runs before that work at the next submit. So released buffers
//! wait in quarantine and become reusable when the next submission is made.
//!
//! A request takes the free buffer that sorts first (wgpu orders buffers by their ids), not the
//! last one freed: a training step then gets the same buffers for the same roles step after
//! step, so the bind groups that bind them can be kept (`bindings.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{Dtype, Error, Result};

type PoolKey = (u64, wgpu::BufferUsages);

pub(crate) struct BufferPool {
    device: wgpu::Device,
    /// Free buffers per size and usage, in wgpu's order.
    free: Mutex<HashMap<PoolKey, BTreeSet<wgpu::Buffer>>>,
    quarantine: Mutex<Vec<wgpu::Buffer>>,
    max_buffer_size: u64,
    /// Buffers created so far. The pool destroys none, so in a steady state this stops growing.
    created: std::sync::atomic::AtomicUsize,
}

/// Buffers are allocated in multiples of this many bytes so that nearby sizes share a pool.
const SIZE_GRANULE: u64 = 256;

/// The size a buffer of `bytes` bytes is allocated at.
fn granular(bytes: u64) -> u64 {
    bytes.max(4).div_ceil(SIZE_GRANULE) * SIZE_GRANULE
}

impl BufferPool {
    pub(crate) fn new(device: wgpu::Device, max_buffer_size: u64) -> Self {
        Self {
            device,
            free: Mutex::default(),
            quarantine: Mutex::default(),
            max_buffer_size,
            created: Default::default(),
        }
    }

    /// A buffer of at least `bytes` bytes with exactly `usage`.
    pub(crate) fn acquire(&self, bytes: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let size = granular(bytes);
        let reused = lock(&self.free)
            .get_mut(&(size, usage))
            .and_then(|free| free.pop_first());
        match reused {
            Some(buffer) => Ok(buffer),
            None => self.create(bytes, usage),
        }
    }

    /// A new buffer of `bytes` bytes (a multiple of 4), refusing what the adapter cannot hold.
    pub(crate) fn create(&self, bytes: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let size = granular(bytes);
        if size > self.max_buffer_size {
            return Err(Error::Limit(format!(
                "a buffer of {bytes} bytes exceeds the adapter's max_buffer_size of {} bytes",
                self.max_buffer_size
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgnorm"),
            size,
            usage,
            mapped_at_creation: false,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "could not allocate {size} bytes: {error}"
            )));
        }
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(buffer)
    }

    pub(crate) fn release(&self, buffer: wgpu::Buffer) {
        lock(&self.quarantine).push(buffer);
    }

    /// Takes the buffers released so far. Called with the pending encoder locked and taken, so
    /// every command that used them is in that encoder or an earlier submission.
    pub(crate) fn take_released(&self) -> Vec<wgpu::Buffer> {
        lock(&self.quarantine).drain(..).collect()
    }

    /// Makes buffers reusable once the submission that last used them has been made.
    pub(crate) fn reuse(&self, released: Vec<wgpu::Buffer>) {
        let mut free = lock(&self.free);
        for buffer in released {
            free.entry((buffer.size(), buffer.usage()))
                .or_default()
                .insert(buffer);
        }
    }

    /// Buffers created so far.
    pub(crate) fn created_count(&self) -> usize {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Buffers alive in the pool (free or quarantined), for leak checks.
    pub(crate) fn pooled_count(&self) -> usize {
        lock(&self.free).values().map(BTreeSet::len).sum::<usize>() + lock(&self.quarantine).len()
    }
}

/// Locks ignoring poisoning: the pool's lists stay consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pooled allocation, returned to its pool when the last tensor viewing it is dropped.
struct Lease {
    raw: wgpu::Buffer,
    pool: Option<Arc<BufferPool>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.release(self.raw.clone());
        }
    }
}

/// A run of values on the GPU, stored as f32 or f16 (`dtype`), at `offset` values into its
/// wgpu buffer (non-zero for the tensors of an arena, `GpuBackend::scratch_arena`). A pooled
/// buffer returns to its pool when the last tensor on it is dropped; an unpooled one (a host's
/// buffer, or a temporary recorded into a host's encoder) is left to wgpu, which keeps it alive
/// while recorded work still uses it.
pub struct GpuBuffer {
    raw: wgpu::Buffer,
    offset: usize,
    len: usize,
    dtype: Dtype,
    lease: Option<Arc<Lease>>,
}

impl GpuBuffer {
    pub(crate) fn new(raw: wgpu::Buffer, len: usize, dtype: Dtype, pool: Arc<BufferPool>) -> Self {
        Self {
            lease: Some(Arc::new(Lease {
                raw: raw.clone(),
                pool: Some(pool),
            })),
            raw,
            offset: 0,
            len,
            dtype,
        }
    }

    pub(crate) fn unpooled(raw: wgpu::Buffer, len: usize, dtype: Dtype) -> Self {
        Self {
            raw,
            offset: 0,
            len,
            dtype,
            lease: None,
        }
    }

    /// `len` values starting `offset` values into this tensor, sharing its allocation (the
    /// byte offset must meet the adapter's storage offset alignment for the view to be bound).
    pub(crate) fn view(&self, offset: usize, len: usize) -> Self {
        debug_assert!(offset + len <= self.len);
        Self {
            raw: self.raw.clone(),
            offset: self.offset + offset,
            len,
            dtype: self.dtype,
            lease: self.lease.clone(),
        }
    }

    /// `len` values of this tensor's allocation from where this tensor starts, which may run
    /// past its end into the tensors after it (an arena's span).
    pub(crate) fn run(&self, len: usize) -> Self {
        Self {
            len,
            ..self.view(0, 0)
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pool owns it (and will never destroy it).
    pub(crate) fn is_pooled(&self) -> bool {
        self.lease.is_some()
    }

    /// How the values are stored.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The underlying wgpu buffer (it may be larger than the values, which start at
    /// `byte_offset`).
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.raw
    }

    /// Where the values start in `raw`, in bytes.
    pub fn byte_offset(&self) -> u64 {
        (self.offset * self.dtype.size()) as u64
    }

    /// Where the values start in `raw`, in values.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes that hold the values, rounded up to whole 4-byte words (what a binding or a copy
    /// of them spans).
    pub fn byte_len(&self) -> u64 {
        words_bytes(self.len, self.dtype)
    }
}

/// Bytes of `len` values of `dtype`, rounded up to a multiple of 4.
pub(crate) fn words_bytes(len: usize, dtype: Dtype) -> u64 {
    ((len * dtype.size()) as u64).div_ceil(4) * 4
}

impl GpuBuffer {
    /// Returns a buffer that no recorded work can still touch (a readback's staging buffer,
    /// once the GPU has finished and it is unmapped) straight to the free list: quarantine is
    /// for buffers that unsubmitted work may read. Without this, how many staging buffers the
    /// pool holds would depend on how reads happen to fall between submissions.
    pub(crate) fn recycle_idle(mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(mut lease) = Arc::try_unwrap(lease)
            && let Some(pool) = lease.pool.take()
        {
            pool.reuse(vec![lease.raw.clone()]);
        }
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} {:?})", self.len, self.dtype)
    }
}
