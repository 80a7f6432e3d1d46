//! Launches `shaders/data.wgsl`: one thread per gathered word where rows are whole words, else
//! per value.

use super::{DataOps, DeviceImages};
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot, Variant, WORKGROUP};

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

    fn upload_indices_unchecked(&self, indices: &[u32]) -> Result<GpuBuffer> {
        let buffer = self.upload_words(indices)?;
        self.check_bindable("index list", &buffer)?;
        Ok(buffer)
    }

    fn gather_unchecked(
        &self,
        images: &DeviceImages<Self>,
        index: &GpuBuffer,
        first: usize,
        x: &mut GpuBuffer,
        labels: &mut GpuBuffer,
    ) -> Result<()> {
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
        let whole_words = images.row_len.is_multiple_of(4);
        let constants = [("WHOLE_WORDS", f64::from(u8::from(whole_words)))];
        let per_thread = if whole_words { 4 } else { 1 };
        self.record(|recording| {
            self.dispatch_threads(
                recording,
                Kernel::Gather,
                Variant {
                    constants: &constants,
                    ..Variant::default()
                },
                WORKGROUP,
                &params,
                &bindings,
                x.len().div_ceil(per_thread),
            )
        })
    }
}
