//! A labelled image set kept on the device as bytes, and the gather that turns an index range
//! into a batch of f32 rows and labels:
//!
//! ```text
//! x[r, j] = byte_scale[images[index[first + r], j]],   labels[r] = all_labels[index[first + r]]
//! ```
//!
//! with `byte_scale[b] = b/255` as a 256-entry table, so both backends convert bytes identically.
//! The WGSL is `shaders/data.wgsl`.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::GatherParams;

use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};
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

/// Row indices on the device, with the bound they were checked against on upload: a kernel
/// cannot refuse an index it reads, so every index is known below `end` before any gather.
pub struct IndexList<B: DataOps> {
    raw: B::Indices,
    len: usize,
    end: usize,
}

impl<B: DataOps> IndexList<B> {
    /// Indices in the list.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no index.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Storage for bytes and indices beside the f32 buffers, and the gather kernel.
pub trait DataOps: Backend + Sized {
    /// Bytes on the device.
    type Bytes;
    /// Row indices (u32) on the device.
    type Indices;

    /// Copies u32 indices to the device.
    fn upload_indices(&self, indices: &[u32]) -> Result<IndexList<Self>> {
        check_u32_indexable("index list", indices.len())?;
        Ok(IndexList {
            raw: self.upload_indices_unchecked(indices)?,
            len: indices.len(),
            end: indices.iter().max().map_or(0, |&max| max as usize + 1),
        })
    }

    /// x\[r, j\] = images\[index\[first + r\], j\]/255, labels\[r\] = its label, r < labels.len().
    fn gather(
        &self,
        images: &DeviceImages<Self>,
        index: &IndexList<Self>,
        first: usize,
        x: &mut Self::Buffer,
        labels: &mut Self::Buffer,
    ) -> Result<()> {
        let rows = self.len_of(labels);
        if first + rows > index.len {
            return Err(Error::Shape(format!(
                "gather of rows {first}..{} reaches past the {} indices",
                first + rows,
                index.len
            )));
        }
        if index.end > images.rows {
            return Err(Error::Shape(format!(
                "index {} is past the {} images",
                index.end - 1,
                images.rows
            )));
        }
        check_len("gathered batch", self.len_of(x), rows * images.row_len)?;
        check_u32_indexable("gathered batch", rows * images.row_len)?;
        self.gather_unchecked(images, &index.raw, first, x, labels)
    }

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
        check_u32_indexable("image set", pixels.len())?;
        let labels: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
        Ok(DeviceImages {
            rows: labels.len(),
            row_len,
            bytes: self.upload_bytes(pixels)?,
            byte_scale: self.upload(&byte_scale())?,
            labels: self.upload(&labels)?,
        })
    }

    /// Copies bytes to the device (packed four to a word on the GPU).
    #[doc(hidden)]
    fn upload_bytes(&self, bytes: &[u8]) -> Result<Self::Bytes>;

    /// `upload_indices` without the bound.
    #[doc(hidden)]
    fn upload_indices_unchecked(&self, indices: &[u32]) -> Result<Self::Indices>;

    /// `gather` on checked arguments.
    #[doc(hidden)]
    fn gather_unchecked(
        &self,
        images: &DeviceImages<Self>,
        index: &Self::Indices,
        first: usize,
        x: &mut Self::Buffer,
        labels: &mut Self::Buffer,
    ) -> Result<()>;
}
