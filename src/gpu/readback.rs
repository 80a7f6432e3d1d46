//! Reading device buffers back to the host: one staging buffer and one submission for any
//! number of tensors.

use super::{GpuBackend, GpuBuffer, READBACK};
use crate::{Dtype, Error, Result};

impl GpuBackend {
    /// Starts copying `buffers` to the host; the future resolves once the GPU has finished and
    /// the data is mapped. Only this call's `device.poll` blocks, and only once all is recorded.
    pub async fn read(&self, buffers: &[&GpuBuffer]) -> Result<Vec<Vec<f32>>> {
        if self.records_for_host() {
            return Err(Error::InvalidArgument(
                "nothing can be read back while recording into a host's encoder: the host \
                 submits it"
                    .to_string(),
            ));
        }
        let total: u64 = buffers.iter().map(|b| b.byte_len()).sum();
        let staging = self.alloc(total.div_ceil(4) as usize, READBACK)?;
        self.record(|recording| {
            let mut offset = 0;
            for buffer in buffers {
                recording.encoder().copy_buffer_to_buffer(
                    buffer.raw(),
                    buffer.byte_offset(),
                    staging.raw(),
                    offset,
                    buffer.byte_len(),
                );
                offset += buffer.byte_len();
            }
            Ok(())
        })?;
        self.submit_pending()?;
        let (sender, receiver) = futures::channel::oneshot::channel();
        staging
            .raw()
            .slice(..total.max(4))
            .map_async(wgpu::MapMode::Read, move |result| {
                let _ = sender.send(result);
            });
        self.poll()?;
        receiver
            .await
            .map_err(|_| Error::Gpu("readback was cancelled".to_string()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let values = {
            let view = staging
                .raw()
                .slice(..total.max(4))
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
            let mut start = 0;
            buffers
                .iter()
                .map(|b| {
                    let bytes = &view[start as usize..(start + b.byte_len()) as usize];
                    start += b.byte_len();
                    match b.dtype() {
                        Dtype::F32 => bytemuck::cast_slice::<u8, f32>(bytes)[..b.len()].to_vec(),
                        Dtype::F16 => bytemuck::cast_slice::<u8, half::f16>(bytes)[..b.len()]
                            .iter()
                            .map(|v| v.to_f32())
                            .collect(),
                    }
                })
                .collect()
        };
        staging.raw().unmap();
        staging.recycle_idle();
        Ok(values)
    }

    /// Blocks until the device has run everything submitted, then reports any fault.
    pub(super) fn poll(&self) -> Result<()> {
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }
}
