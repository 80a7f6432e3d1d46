//! ReLU and dropout, forward and backward:
//!
//! ```text
//! relu:    y = max(x, 0)                 dx = dy·[x > 0]
//! dropout: y = x·keep·1/(1 − p)          dx = dy·keep·1/(1 − p)
//! ```
//!
//! where keep is a pure function of (seed, layer, step, element), so backward recomputes the
//! mask instead of storing it and both backends draw the same one. The WGSL is
//! `shaders/activation.wgsl`.

mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::ActivationParams;

use crate::Result;
use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};
use crate::seed::splitmix64;

/// Which elements one dropout layer keeps at one step: a pure function of
/// (seed, layer, step, element), so backward recomputes the mask and both backends agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
    key: [u32; 2],
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

/// Checks an elementwise op: every input as long as the output, and indexable by a kernel.
fn check_elementwise(op: &str, inputs: &[(&str, usize)], output: usize) -> Result<()> {
    for &(name, len) in inputs {
        check_len(&format!("{op} {name}"), len, output)?;
    }
    check_u32_indexable(&format!("{op} output"), output)
}

/// Elementwise activations. Outputs go into caller-owned buffers of the input's length.
pub trait ActivationOps: Backend + Sized {
    /// y = max(x, 0); y has x's length.
    fn relu_forward(&self, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()> {
        check_elementwise("relu", &[("x", self.len_of(x))], self.len_of(y))?;
        self.relu_forward_unchecked(x, y)
    }

    /// dx from the forward's input x.
    fn relu_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        let inputs = [("x", self.len_of(x)), ("dy", self.len_of(dy))];
        check_elementwise("relu backward", &inputs, self.len_of(dx))?;
        self.relu_backward_unchecked(x, dy, dx)
    }

    /// y = x·keep·scale with `mask`.
    fn dropout_forward(
        &self,
        mask: &DropoutMask,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        check_elementwise("dropout", &[("x", self.len_of(x))], self.len_of(y))?;
        self.dropout_forward_unchecked(mask, x, y)
    }

    /// dx = dy·keep·scale with the mask of the forward.
    fn dropout_backward(
        &self,
        mask: &DropoutMask,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_elementwise(
            "dropout backward",
            &[("dy", self.len_of(dy))],
            self.len_of(dx),
        )?;
        self.dropout_backward_unchecked(mask, dy, dx)
    }

    /// `relu_forward` on checked arguments.
    #[doc(hidden)]
    fn relu_forward_unchecked(&self, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;

    /// `relu_backward` on checked arguments.
    #[doc(hidden)]
    fn relu_backward_unchecked(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `dropout_forward` on checked arguments.
    #[doc(hidden)]
    fn dropout_forward_unchecked(
        &self,
        mask: &DropoutMask,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// `dropout_backward` on checked arguments.
    #[doc(hidden)]
    fn dropout_backward_unchecked(
        &self,
        mask: &DropoutMask,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
}
