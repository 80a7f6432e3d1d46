//! Tensors on the device: allocation from the pool, uploads, arenas of views, readback; the
//! `Backend` implementation.

use std::sync::Arc;

use super::{GpuBackend, GpuBuffer, STORAGE, buffer};
use crate::backend::Backend;
use crate::{Dtype, Error, Result};

impl GpuBackend {
    pub(super) fn check_dtype(&self, dtype: Dtype) -> Result<()> {
        if dtype == Dtype::F16 && !self.has_f16() {
            return Err(Error::InvalidArgument(format!(
                "{} was opened without shader-f16, so it cannot store f16 tensors",
                self.shared.summary.name
            )));
        }
        Ok(())
    }

    pub(super) fn alloc(&self, len: usize, usage: wgpu::BufferUsages) -> Result<GpuBuffer> {
        self.alloc_as(len, Dtype::F32, usage)
    }

    /// A buffer of `len` values; pooled, except while recording for a host: wgnorm cannot know
    /// when the host submits, and the pool would reuse the buffer too early.
    fn alloc_as(&self, len: usize, dtype: Dtype, usage: wgpu::BufferUsages) -> Result<GpuBuffer> {
        self.check()?;
        self.check_dtype(dtype)?;
        let bytes = buffer::words_bytes(len, dtype);
        if self.records_for_host() {
            return Ok(GpuBuffer::unpooled(
                self.shared.pool.create(bytes, usage)?,
                len,
                dtype,
            ));
        }
        let raw = self.shared.pool.acquire(bytes, usage)?;
        Ok(GpuBuffer::new(
            raw,
            len,
            dtype,
            Arc::clone(&self.shared.pool),
        ))
    }

    /// Where each of `lens` f32 tensors starts in an arena, in values, and the arena's length:
    /// one after another, each at the adapter's storage offset alignment so that it can be
    /// bound alone, and the whole a multiple of that alignment.
    fn arena_layout(&self, lens: &[usize]) -> (Vec<usize>, usize) {
        let align = (self.limits().min_storage_buffer_offset_alignment as usize / 4).max(4);
        let mut end = 0;
        let offsets = (lens.iter())
            .map(|&len| {
                let offset = end;
                end = (offset + len).div_ceil(align) * align;
                offset
            })
            .collect();
        (offsets, end)
    }

    /// Copies u32 words (indices, packed bytes) to the device.
    pub fn upload_words(&self, data: &[u32]) -> Result<GpuBuffer> {
        self.upload_pod(data)
    }

    /// Copies 4-byte values to a new storage buffer.
    fn upload_pod<T: bytemuck::Pod>(&self, data: &[T]) -> Result<GpuBuffer> {
        const { assert!(std::mem::size_of::<T>() == 4) };
        let buffer = self.alloc(data.len(), STORAGE)?;
        if !data.is_empty() {
            self.shared.queue.write_buffer(
                buffer.raw(),
                buffer.byte_offset(),
                bytemuck::cast_slice(data),
            );
        }
        Ok(buffer)
    }
}

impl Backend for GpuBackend {
    type Buffer = GpuBuffer;

    fn describe(&self) -> String {
        self.shared.summary.to_string()
    }

    fn max_binding_bytes(&self) -> Option<u64> {
        Some(self.max_binding())
    }

    fn view(&self, buffer: &GpuBuffer, offset: usize, len: usize) -> Option<GpuBuffer> {
        let start = buffer.byte_offset() + (offset * buffer.dtype().size()) as u64;
        let aligned = start.is_multiple_of(self.view_alignment());
        (aligned && offset + len <= buffer.len()).then(|| buffer.view(offset, len))
    }

    fn view_alignment(&self) -> u64 {
        self.limits().min_storage_buffer_offset_alignment.into()
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.upload_pod(data)
    }

    fn len_of(&self, buffer: &GpuBuffer) -> usize {
        buffer.len()
    }

    fn filled(&self, len: usize, value: f32) -> Result<GpuBuffer> {
        // Allocating first refuses an oversized request before the host vector is built.
        let buffer = self.alloc(len, STORAGE)?;
        if len > 0 {
            let data = vec![value; len];
            self.shared.queue.write_buffer(
                buffer.raw(),
                buffer.byte_offset(),
                bytemuck::cast_slice(&data),
            );
        }
        Ok(buffer)
    }

    /// Queue writes land before the next submission's commands, so the commands recorded so
    /// far are submitted first.
    fn write(&self, buffer: &mut GpuBuffer, data: &[f32]) -> Result<()> {
        crate::ops::check_len("written buffer", data.len(), buffer.len())?;
        if buffer.dtype() != Dtype::F32 {
            return Err(Error::InvalidArgument(format!(
                "cannot write f32 values into a {:?} buffer",
                buffer.dtype()
            )));
        }
        self.submit_pending()?;
        if !data.is_empty() {
            self.shared.queue.write_buffer(
                buffer.raw(),
                buffer.byte_offset(),
                bytemuck::cast_slice(data),
            );
        }
        Ok(())
    }

    fn scratch(&self, len: usize) -> Result<GpuBuffer> {
        self.alloc(len, STORAGE)
    }

    fn device_buffers(&self) -> Option<usize> {
        Some(self.counters().buffers as usize)
    }

    fn scratch_arena(&self, lens: &[usize]) -> Result<Vec<GpuBuffer>> {
        let (offsets, total) = self.arena_layout(lens);
        let arena = self.alloc(total, STORAGE)?;
        Ok((offsets.iter().zip(lens))
            .map(|(&offset, &len)| arena.view(offset, len))
            .collect())
    }

    fn upload_arena(&self, data: &[&[f32]]) -> Result<Vec<GpuBuffer>> {
        let lens: Vec<usize> = data.iter().map(|values| values.len()).collect();
        let (offsets, total) = self.arena_layout(&lens);
        let mut flat = Vec::with_capacity(total);
        for (&offset, values) in offsets.iter().zip(data) {
            flat.resize(offset, 0.0);
            flat.extend_from_slice(values);
        }
        flat.resize(total, 0.0);
        let arena = self.upload(&flat)?;
        Ok((offsets.iter().zip(lens))
            .map(|(&offset, len)| arena.view(offset, len))
            .collect())
    }

    /// The span runs to the end of the last part's padding, so that its length is a multiple
    /// of the alignment (and the update runs in vectors of four).
    fn arena_span(&self, parts: &[&GpuBuffer]) -> Option<GpuBuffer> {
        let first = parts.first()?;
        let lens: Vec<usize> = parts.iter().map(|part| part.len()).collect();
        let (offsets, total) = self.arena_layout(&lens);
        let laid_out = (parts.iter().zip(offsets)).all(|(part, offset)| {
            part.raw() == first.raw()
                && part.dtype() == Dtype::F32
                && part.offset() == first.offset() + offset
        });
        let span = first.run(total);
        let fits = span.byte_offset() + span.byte_len() <= span.raw().size();
        (laid_out && fits && span.byte_len() <= self.max_binding()).then_some(span)
    }

    fn dtype_of(&self, buffer: &GpuBuffer) -> Dtype {
        buffer.dtype()
    }

    fn supports(&self, dtype: Dtype) -> bool {
        self.check_dtype(dtype).is_ok()
    }

    fn upload_as(&self, data: &[f32], dtype: Dtype) -> Result<GpuBuffer> {
        match dtype {
            Dtype::F32 => self.upload(data),
            Dtype::F16 => {
                let buffer = self.alloc_as(data.len(), dtype, STORAGE)?;
                let mut halves: Vec<half::f16> =
                    data.iter().map(|&v| half::f16::from_f32(v)).collect();
                // Queue writes are whole 4-byte words.
                halves.resize(buffer.byte_len() as usize / 2, half::f16::ZERO);
                if !halves.is_empty() {
                    self.shared.queue.write_buffer(
                        buffer.raw(),
                        buffer.byte_offset(),
                        bytemuck::cast_slice(&halves),
                    );
                }
                Ok(buffer)
            }
        }
    }

    fn scratch_as(&self, len: usize, dtype: Dtype) -> Result<GpuBuffer> {
        self.alloc_as(len, dtype, STORAGE)
    }

    /// Submits everything recorded so far into wgnorm's own encoder (a host's encoder is the
    /// host's to submit).
    fn flush(&self) -> Result<()> {
        self.submit_pending()
    }

    fn steps_per_submission(&self) -> u64 {
        self.shared
            .steps_per_submission
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn download(&self, buffer: &GpuBuffer) -> Result<Vec<f32>> {
        let mut all = self.download_many(&[buffer])?;
        Ok(all.pop().unwrap_or_default())
    }

    /// One staging buffer, one submission and one wait for all of `buffers`.
    fn download_many(&self, buffers: &[&GpuBuffer]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(buffers))
    }
}
