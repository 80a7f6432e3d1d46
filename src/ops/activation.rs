//! ReLU and dropout, forward and backward, for both backends. The formulas live in
//! `shaders/activation.wgsl`; the CPU loops here are their twins.

use crate::Result;
use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::gpu::{Binding, GpuBackend, GpuBuffer, Kernel, Slot};
use crate::ops::check_len;

/// Which elements one dropout layer keeps at one step: a pure function of
/// (seed, layer, step, element), so backward recomputes the mask and both backends agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
    key: [u32; 2],
}

/// SplitMix64's finalizer: mixes the 64-bit key inputs before they are cut to two u32 words.
pub(crate) fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `lowbias32` of `shaders/activation.wgsl`.
fn lowbias32(value: u32) -> u32 {
    let mut h = value;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

impl DropoutMask {
    /// The mask of layer `layer` at training step `step` of run `seed`, dropping with probability `p`.
    pub fn new(p: f32, seed: u64, layer: u32, step: u64) -> Self {
        let key = splitmix64(splitmix64(splitmix64(seed) ^ u64::from(layer)) ^ step);
        Self {
            p,
            key: [key as u32, (key >> 32) as u32],
        }
    }

    /// Elements whose hash is below this are dropped: round(p·2³²).
    pub fn threshold(&self) -> u32 {
        (f64::from(self.p) * 4_294_967_296.0)
            .round()
            .min(f64::from(u32::MAX)) as u32
    }

    /// 1/(1 − p), applied to kept elements so the expected output equals the input.
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - f64::from(self.p))) as f32
    }

    /// Whether element `element` is kept.
    pub fn keeps(&self, element: u32) -> bool {
        lowbias32(self.key[0] ^ lowbias32(self.key[1] ^ element)) >= self.threshold()
    }
}

/// Elementwise activations. Outputs go into caller-owned buffers of the input's length.
pub trait ActivationOps: Backend + Sized {
    /// y = max(x, 0); y has x's length.
    fn relu_forward(&self, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;

    /// dx from the forward's input x.
    fn relu_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// y = x·keep·scale with `mask`.
    fn dropout_forward(
        &self,
        mask: &DropoutMask,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// dx = dy·keep·scale with the mask of the forward.
    fn dropout_backward(
        &self,
        mask: &DropoutMask,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
}

impl ActivationOps for CpuBackend {
    fn relu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        check_len("relu output", y.len(), x.len())?;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.max(0.0);
        }
        Ok(())
    }

    fn relu_backward(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        check_len("relu dy", dy.len(), x.len())?;
        check_len("relu dx", dx.len(), x.len())?;
        for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
            *dx = if x > 0.0 { dy } else { 0.0 };
        }
        Ok(())
    }

    fn dropout_forward(&self, mask: &DropoutMask, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        check_len("dropout output", y.len(), x.len())?;
        crate::gpu::check_u32_indexable("dropout input", x.len())?;
        masked_scale(mask, x, y);
        Ok(())
    }

    fn dropout_backward(&self, mask: &DropoutMask, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        check_len("dropout dx", dx.len(), dy.len())?;
        crate::gpu::check_u32_indexable("dropout dy", dy.len())?;
        masked_scale(mask, dy, dx);
        Ok(())
    }
}

fn masked_scale(mask: &DropoutMask, input: &[f32], output: &mut [f32]) {
    let scale = mask.scale();
    for (i, (out, &value)) in output.iter_mut().zip(input).enumerate() {
        *out = if mask.keeps(i as u32) {
            value * scale
        } else {
            0.0
        };
    }
}

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
            check_len(kernel.entry_point(), out.len(), input.len)?;
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
    fn relu_forward(&self, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
        let params = ActivationParams::plain(x.len());
        self.activation(
            Kernel::ReluForward,
            params,
            &[Binding::whole(Slot::X, x)],
            y,
        )
    }

    fn relu_backward(&self, x: &GpuBuffer, dy: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
        let params = ActivationParams::plain(x.len());
        let inputs = [Binding::whole(Slot::X, x), Binding::whole(Slot::Dy, dy)];
        self.activation(Kernel::ReluBackward, params, &inputs, dx)
    }

    fn dropout_forward(&self, mask: &DropoutMask, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
        let params = ActivationParams::dropout(x.len(), mask);
        self.activation(
            Kernel::DropoutForward,
            params,
            &[Binding::whole(Slot::X, x)],
            y,
        )
    }

    fn dropout_backward(
        &self,
        mask: &DropoutMask,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let params = ActivationParams::dropout(dy.len(), mask);
        self.activation(
            Kernel::DropoutBackward,
            params,
            &[Binding::whole(Slot::Dy, dy)],
            dx,
        )
    }
}
