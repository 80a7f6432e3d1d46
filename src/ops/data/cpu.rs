//! The CPU twin of `shaders/data.wgsl`.

use super::{DataOps, DeviceImages};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

impl DataOps for CpuBackend {
    type Bytes = Vec<u8>;
    type Indices = Vec<u32>;

    fn upload_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn upload_indices_unchecked(&self, indices: &[u32]) -> Result<Vec<u32>> {
        Ok(indices.to_vec())
    }

    fn gather_unchecked(
        &self,
        images: &DeviceImages<Self>,
        index: &Vec<u32>,
        first: usize,
        x: &mut CpuBuffer,
        labels: &mut CpuBuffer,
    ) -> Result<()> {
        let row_len = images.row_len;
        let rows = labels.len();
        for (r, &source) in index[first..first + rows].iter().enumerate() {
            let source = source as usize;
            let pixels = &images.bytes[source * row_len..(source + 1) * row_len];
            for (out, &byte) in x[r * row_len..(r + 1) * row_len].iter_mut().zip(pixels) {
                *out = images.byte_scale[usize::from(byte)];
            }
            labels[r] = images.labels[source];
        }
        Ok(())
    }
}
