//! Launches `shaders/activation.wgsl`: one thread per element.

use super::{ActivationOps, DropoutMask};
use crate::Result;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};

/// Uniform parameters of `shaders/activation.wgsl` (`struct ActivationParams` there).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActivationParams {
    pub len: u32,
    pub threshold: u32,
    pub key_x: u32,
    pub key_y: u32,
    pub scale: f32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

const _: () = assert!(std::mem::size_of::<ActivationParams>() == 32);

impl ActivationParams {
    fn plain(len: usize) -> Self {
        Self {
            len: len as u32,
            ..Self::default()
        }
    }

    fn dropout(len: usize, mask: &DropoutMask) -> Self {
        Self {
            len: len as u32,
            threshold: mask.threshold(),
            key_x: mask.key[0],
            key_y: mask.key[1],
            scale: mask.scale(),
            ..Self::default()
        }
    }
}

impl GpuBackend {
    fn activation(
        &self,
        kernel: Kernel,
        params: ActivationParams,
        inputs: &[Binding],
        out: &mut GpuBuffer,
    ) -> Result<()> {
        for input in inputs {
            self.check_bindable(kernel.entry_point(), input.buffer)?;
        }
        let mut bindings = inputs.to_vec();
        bindings.push(Binding::whole(Slot::Out, out));
        self.record(|encoder| {
            self.dispatch_elementwise(encoder, kernel, &params, &bindings, params.len as usize)
        })
    }
}

impl ActivationOps for GpuBackend {
    fn relu_forward_unchecked(&self, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
        let params = ActivationParams::plain(x.len());
        let inputs = [Binding::whole(Slot::X, x)];
        self.activation(Kernel::ReluForward, params, &inputs, y)
    }

    fn relu_backward_unchecked(
        &self,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::plain(x.len());
        let inputs = [Binding::whole(Slot::X, x), Binding::whole(Slot::Dy, dy)];
        self.activation(Kernel::ReluBackward, params, &inputs, dx)
    }

    fn dropout_forward_unchecked(
        &self,
        mask: &DropoutMask,
        x: &GpuBuffer,
        y: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::dropout(x.len(), mask);
        let inputs = [Binding::whole(Slot::X, x)];
        self.activation(Kernel::DropoutForward, params, &inputs, y)
    }

    fn dropout_backward_unchecked(
        &self,
        mask: &DropoutMask,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::dropout(dy.len(), mask);
        let inputs = [Binding::whole(Slot::Dy, dy)];
        self.activation(Kernel::DropoutBackward, params, &inputs, dx)
    }
}
