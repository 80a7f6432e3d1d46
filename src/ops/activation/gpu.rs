//! Launches `shaders/activation.wgsl`: one thread per element.

use super::{Activation, ActivationOps};
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
    pub relu: u32,
    /// 1 where the activation's input is x + addend.
    pub addend: u32,
    /// The global batch's index of element 0 (dropout draws by it).
    pub first_element: u32,
}

const _: () = assert!(std::mem::size_of::<ActivationParams>() == 32);

impl ActivationParams {
    fn of(len: usize, activation: Activation, summed: bool) -> Self {
        let dropout = activation.dropout;
        let (threshold, key, scale) = dropout.map_or((0, [0, 0], 1.0), |mask| {
            (mask.threshold(), mask.key(), mask.scale())
        });
        Self {
            len: len as u32,
            threshold,
            key_x: key[0],
            key_y: key[1],
            scale,
            relu: u32::from(activation.relu),
            addend: u32::from(summed),
            first_element: dropout.map_or(0, |mask| mask.first_element()),
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
        self.record(|recording| {
            self.dispatch_elementwise(recording, kernel, &params, &bindings, params.len as usize)
        })
    }
}

impl ActivationOps for GpuBackend {
    fn activation_forward_unchecked(
        &self,
        activation: Activation,
        x: &GpuBuffer,
        addend: Option<&GpuBuffer>,
        y: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::of(x.len(), activation, addend.is_some());
        // Slots the kernel will not read are bound to the placeholder.
        let inputs = [
            Binding::whole(Slot::X, x),
            Binding::whole(Slot::Addend, addend.unwrap_or(self.placeholder())),
        ];
        self.activation(Kernel::ActivationForward, params, &inputs, y)
    }

    fn activation_backward_unchecked(
        &self,
        activation: Activation,
        x: Option<&GpuBuffer>,
        addend: Option<&GpuBuffer>,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::of(dy.len(), activation, addend.is_some());
        // Without ReLU the kernel reads neither x nor the addend: the placeholder stands in.
        let inputs = [
            Binding::whole(Slot::X, x.unwrap_or(self.placeholder())),
            Binding::whole(Slot::Addend, addend.unwrap_or(self.placeholder())),
            Binding::whole(Slot::Dy, dy),
        ];
        self.activation(Kernel::ActivationBackward, params, &inputs, dx)
    }
}
