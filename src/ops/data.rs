//! A labelled image set kept on the device as bytes, and the gather that turns an index range
//! into a batch of f32 rows and labels. The formula lives in `shaders/data.wgsl`; the CPU loop
//! here is its twin.

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};
use crate::ops::check_len;
use crate::{Error, Result};

/// byte_scale\[b\] = b/255, rounded once from f64 as numpy's `x / 255.0` then `astype(float32)`.
pub fn byte_scale() -> Vec<f32> {
    (0..=255u8).map(|b| (f64::from(b) / 255.0) as f32).collect()
}

/// Images (`rows` × `row_len` bytes) and their labels, on one backend.
pub struct DeviceImages<B: DataOps> {
    /// Images.
    pub rows: usize,
    /// Bytes per image.
    pub row_len: usize,
    bytes: B::Bytes,
    byte_scale: B::Buffer,
    labels: B::Buffer,
}

/// Storage for bytes and indices beside the f32 buffers, and the gather kernel.
pub trait DataOps: Backend + Sized {
    /// Bytes on the device.
    type Bytes;
    /// Row indices (u32) on the device.
    type Indices;

    /// Copies bytes (packed four to a word) to the device.
    fn upload_bytes(&self, bytes: &[u8]) -> Result<Self::Bytes>;

    /// Copies u32 indices to the device.
    fn upload_indices(&self, indices: &[u32]) -> Result<Self::Indices>;

    /// x\[r, j\] = images\[index\[first + r\], j\]/255, labels\[r\] = its label, r < labels.len().
    fn gather(
        &self,
        images: &DeviceImages<Self>,
        index: &Self::Indices,
        first: usize,
        x: &mut Self::Buffer,
        labels: &mut Self::Buffer,
    ) -> Result<()>;

    /// Uploads `rows` images of `row_len` bytes each and their labels.
    fn upload_images(
        &self,
        pixels: &[u8],
        row_len: usize,
        labels: &[u8],
    ) -> Result<DeviceImages<Self>> {
        if row_len == 0 || pixels.len() != labels.len() * row_len {
            return Err(Error::Shape(format!(
                "{} pixel bytes are not {} images of {row_len} bytes",
                pixels.len(),
                labels.len()
            )));
        }
        let labels: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
        Ok(DeviceImages {
            rows: labels.len(),
            row_len,
            bytes: self.upload_bytes(pixels)?,
            byte_scale: self.upload(&byte_scale())?,
            labels: self.upload(&labels)?,
        })
    }
}

/// Refuses a gather reaching past the index list, or outputs of the wrong size.
fn check(
    images_rows: usize,
    row_len: usize,
    index_len: usize,
    first: usize,
    x: usize,
    labels: usize,
) -> Result<()> {
    if first + labels > index_len {
        return Err(Error::Shape(format!(
            "gather of rows {first}..{} reaches past the {index_len} indices",
            first + labels
        )));
    }
    check_len("gathered batch", x, labels * row_len)?;
    crate::gpu::check_u32_indexable("image set", images_rows * row_len)
}

impl DataOps for CpuBackend {
    type Bytes = Vec<u8>;
    type Indices = Vec<u32>;

    fn upload_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn upload_indices(&self, indices: &[u32]) -> Result<Vec<u32>> {
        Ok(indices.to_vec())
    }

    fn gather(
        &self,
        images: &DeviceImages<Self>,
        index: &Vec<u32>,
        first: usize,
        x: &mut Vec<f32>,
        labels: &mut Vec<f32>,
    ) -> Result<()> {
        let row_len = images.row_len;
        check(
            images.rows,
            row_len,
            index.len(),
            first,
            x.len(),
            labels.len(),
        )?;
        let rows = labels.len();
        for (r, &source) in index[first..first + rows].iter().enumerate() {
            let source = source as usize;
            if source >= images.rows {
                return Err(Error::Shape(format!(
                    "index {source} is past the {} images",
                    images.rows
                )));
            }
            let pixels = &images.bytes[source * row_len..(source + 1) * row_len];
            for (out, &byte) in x[r * row_len..(r + 1) * row_len].iter_mut().zip(pixels) {
                *out = images.byte_scale[usize::from(byte)];
            }
            labels[r] = images.labels[source];
        }
        Ok(())
    }
}

/// Uniform parameters of `shaders/data.wgsl` (`struct GatherParams` there).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub row_len: u32,
    pub first: u32,
    pub _pad0: u32,
}

const _: () = assert!(std::mem::size_of::<GatherParams>() == 16);

impl DataOps for GpuBackend {
    type Bytes = GpuBuffer;
    type Indices = GpuBuffer;

    /// Packs four bytes per u32 word, little-endian, as `shaders/data.wgsl` unpacks them.
    fn upload_bytes(&self, bytes: &[u8]) -> Result<GpuBuffer> {
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|chunk| {
                let mut word = [0u8; 4];
                word[..chunk.len()].copy_from_slice(chunk);
                u32::from_le_bytes(word)
            })
            .collect();
        let buffer = self.upload_words(&words)?;
        self.check_bindable("image set", &buffer)?;
        Ok(buffer)
    }

    fn upload_indices(&self, indices: &[u32]) -> Result<GpuBuffer> {
        let buffer = self.upload_words(indices)?;
        self.check_bindable("index list", &buffer)?;
        Ok(buffer)
    }

    /// Indices past the image set cannot be refused on the device; the trainer builds every
    /// index list from the set's own row range.
    fn gather(
        &self,
        images: &DeviceImages<Self>,
        index: &GpuBuffer,
        first: usize,
        x: &mut GpuBuffer,
        labels: &mut GpuBuffer,
    ) -> Result<()> {
        check(
            images.rows,
            images.row_len,
            index.len(),
            first,
            x.len(),
            labels.len(),
        )?;
        let params = GatherParams {
            rows: labels.len() as u32,
            row_len: images.row_len as u32,
            first: first as u32,
            _pad0: 0,
        };
        let bindings = [
            Binding::whole(Slot::Images, &images.bytes),
            Binding::whole(Slot::Index, index),
            Binding::whole(Slot::ByteScale, &images.byte_scale),
            Binding::whole(Slot::AllLabels, &images.labels),
            Binding::whole(Slot::Out, x),
            Binding::whole(Slot::Labels, labels),
        ];
        self.record(|encoder| {
            self.dispatch_elementwise(encoder, Kernel::Gather, &params, &bindings, x.len())
        })
    }
}
