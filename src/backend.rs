//! One interface, two backends: the GPU (wgpu compute shaders) and its CPU twin.
//!
//! Ops are written against these traits, so a program switches device by choosing a backend
//! value, not by changing code.

use crate::{Error, Result};

/// How a tensor's values are stored. Arithmetic is f32 either way: f16 halves the memory and
/// traffic of activations (and the size of an exported model) and rounds each stored value to
/// the nearest f16 (relative error ≤ 2⁻¹¹).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Four bytes per value.
    #[default]
    F32,
    /// Two bytes per value (IEEE 754 half precision).
    F16,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// Storage of f32 tensors on one device.
pub trait Backend {
    /// A flat run of f32 values on this backend's device. Shapes travel beside it.
    type Buffer;

    /// What runs the work, for humans: the adapter name or "cpu".
    fn describe(&self) -> String;

    /// Copies host data to the device.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;

    /// Number of f32 values in `buffer`.
    fn len_of(&self, buffer: &Self::Buffer) -> usize;

    /// A buffer of `len` copies of `value`.
    fn filled(&self, len: usize, value: f32) -> Result<Self::Buffer>;

    /// A buffer of `len` values for an op to overwrite; its contents are unspecified.
    fn scratch(&self, len: usize) -> Result<Self::Buffer>;

    /// Buffers of `lens` values laid out in one allocation where the backend has views (the
    /// GPU), so that an op can later treat them as one (`arena_span`): a model's parameters,
    /// their gradients and the optimizer's moments, updated in one dispatch. Contents
    /// unspecified. Elsewhere, separate `scratch` buffers.
    fn scratch_arena(&self, lens: &[usize]) -> Result<Vec<Self::Buffer>> {
        lens.iter().map(|&len| self.scratch(len)).collect()
    }

    /// `scratch_arena` holding copies of `data`.
    fn upload_arena(&self, data: &[&[f32]]) -> Result<Vec<Self::Buffer>> {
        data.iter().map(|values| self.upload(values)).collect()
    }

    /// One buffer over `parts` when they are consecutive tensors of one arena, padding
    /// included. Arenas of the same lengths are laid out alike, so the spans of corresponding
    /// tensors of two arenas hold corresponding values at the same positions (the padding is
    /// read by nothing but an op over such spans, whose results there nothing reads). `None`
    /// where the backend has no arenas or `parts` are not such tensors.
    fn arena_span(&self, _parts: &[&Self::Buffer]) -> Option<Self::Buffer> {
        None
    }

    /// The most bytes one buffer may hold in a kernel's binding, where the backend has such a
    /// limit (an adapter's `max_storage_buffer_binding_size`).
    fn max_binding_bytes(&self) -> Option<u64> {
        None
    }

    /// `len` values of `buffer` from value `offset` on, sharing its memory, where the backend
    /// has views (the GPU) and the view starts a multiple of `view_alignment` bytes into its
    /// allocation; `None` elsewhere. Backends with a binding limit have them, to bind a tensor
    /// too large for one binding a chunk at a time.
    fn view(&self, _buffer: &Self::Buffer, _offset: usize, _len: usize) -> Option<Self::Buffer> {
        None
    }

    /// The multiple of bytes at which a view may start (an adapter's
    /// `min_storage_buffer_offset_alignment`).
    fn view_alignment(&self) -> u64 {
        1
    }

    /// Device buffers created so far, where the backend keeps count (a leak check: flat once
    /// every size a run needs has been allocated).
    fn device_buffers(&self) -> Option<usize> {
        None
    }

    /// How `buffer` stores its values.
    fn dtype_of(&self, _buffer: &Self::Buffer) -> Dtype {
        Dtype::F32
    }

    /// Whether buffers can store `dtype` here.
    fn supports(&self, dtype: Dtype) -> bool {
        dtype == Dtype::F32
    }

    /// `data` stored as `dtype` (each value rounded to it).
    fn upload_as(&self, data: &[f32], dtype: Dtype) -> Result<Self::Buffer> {
        match dtype {
            Dtype::F32 => self.upload(data),
            Dtype::F16 => Err(unsupported(self, dtype)),
        }
    }

    /// `scratch` of `dtype` values.
    fn scratch_as(&self, len: usize, dtype: Dtype) -> Result<Self::Buffer> {
        match dtype {
            Dtype::F32 => self.scratch(len),
            Dtype::F16 => Err(unsupported(self, dtype)),
        }
    }

    /// Overwrites `buffer` (f32, of `data`'s length) with `data`, after all the work recorded
    /// before has read it.
    fn write(&self, buffer: &mut Self::Buffer, data: &[f32]) -> Result<()>;

    /// Sends the work recorded so far to the device (a no-op where work runs at once).
    fn flush(&self) -> Result<()>;

    /// Training steps to record before submitting them (`train::train_on_batch`): one where
    /// each submission runs at once.
    fn steps_per_submission(&self) -> u64 {
        1
    }

    /// Copies device data back to the host, waiting for all work recorded before.
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<f32>>;

    /// Copies several buffers back at once: on the GPU one submission and one wait for all of
    /// them (a checkpoint's tensors), not one round trip each.
    fn download_many(&self, buffers: &[&Self::Buffer]) -> Result<Vec<Vec<f32>>> {
        buffers.iter().map(|buffer| self.download(buffer)).collect()
    }

    /// `download_many` into `out`, one buffer after another (`out` holds their lengths summed),
    /// for a caller that keeps `out` between calls: the CPU backend copies straight into it.
    fn download_many_into(&self, buffers: &[&Self::Buffer], out: &mut [f32]) -> Result<()> {
        let total: usize = buffers.iter().map(|buffer| self.len_of(buffer)).sum();
        crate::ops::check_len("downloaded values", out.len(), total)?;
        let mut start = 0;
        for (values, buffer) in self.download_many(buffers)?.iter().zip(buffers) {
            crate::ops::check_len("downloaded buffer", values.len(), self.len_of(buffer))?;
            out[start..start + values.len()].copy_from_slice(values);
            start += values.len();
        }
        Ok(())
    }
}

fn unsupported<B: Backend + ?Sized>(backend: &B, dtype: Dtype) -> Error {
    Error::InvalidArgument(format!(
        "{} cannot store {dtype:?} tensors",
        backend.describe()
    ))
}
