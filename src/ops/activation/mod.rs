//! ReLU and dropout, forward and backward, each alone or ReLU then dropout in one pass:
//!
//! ```text
//! relu:    y = max(x, 0)                 dx = dy·[x > 0]
//! dropout: y = x·keep·1/(1 − p)          dx = dy·keep·1/(1 − p)
//! ```
//!
//! where keep is a pure function of (seed, layer, step, element), so backward recomputes the
//! mask instead of storing it and both backends draw the same one. The WGSL is
//! `shaders/activation.wgsl`.

pub(crate) mod cpu;
mod gpu;

#[doc(hidden)]
pub use gpu::ActivationParams;

use crate::backend::Backend;
use crate::ops::{check_len, check_u32_indexable};
use crate::seed::splitmix64;
use crate::{Error, Result};

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

    /// The hash key the kernels draw the mask with.
    pub(crate) fn key(&self) -> [u32; 2] {
        self.key
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

/// One elementwise activation pass: ReLU, dropout, or ReLU then dropout (what a `Relu,
/// Dropout` pair of layers runs in training, in one pass over memory).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activation {
    /// max(x, 0) first.
    pub relu: bool,
    /// Then inverted dropout with this mask.
    pub dropout: Option<DropoutMask>,
}

impl Activation {
    /// ReLU alone.
    pub const RELU: Activation = Activation {
        relu: true,
        dropout: None,
    };

    /// Dropout alone.
    pub fn dropout(mask: DropoutMask) -> Self {
        Self {
            relu: false,
            dropout: Some(mask),
        }
    }

    /// The name errors give it.
    pub fn name(&self) -> &'static str {
        match (self.relu, self.dropout.is_some()) {
            (true, true) => "relu+dropout",
            (true, false) => "relu",
            (false, true) => "dropout",
            (false, false) => "identity",
        }
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
    /// y = act(x) (see `Activation`); y has x's length.
    fn activation_forward(
        &self,
        activation: Activation,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        check_elementwise(activation.name(), &[("x", self.len_of(x))], self.len_of(y))?;
        self.activation_forward_unchecked(activation, x, y)
    }

    /// dx from dy and, with ReLU, the forward's input x (dropout alone reads none).
    fn activation_backward(
        &self,
        activation: Activation,
        x: Option<&Self::Buffer>,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        let mut inputs = Vec::with_capacity(2);
        match x {
            Some(x) => inputs.push(("x", self.len_of(x))),
            None if activation.relu => {
                return Err(Error::InvalidArgument(
                    "the ReLU backward pass needs the forward's input x".to_string(),
                ));
            }
            None => {}
        }
        inputs.push(("dy", self.len_of(dy)));
        let op = format!("{} backward", activation.name());
        check_elementwise(&op, &inputs, self.len_of(dx))?;
        self.activation_backward_unchecked(activation, x.filter(|_| activation.relu), dy, dx)
    }

    /// y = max(x, 0); y has x's length.
    fn relu_forward(&self, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()> {
        self.activation_forward(Activation::RELU, x, y)
    }

    /// dx from the forward's input x.
    fn relu_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        self.activation_backward(Activation::RELU, Some(x), dy, dx)
    }

    /// y = x·keep·scale with `mask`.
    fn dropout_forward(
        &self,
        mask: &DropoutMask,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        self.activation_forward(Activation::dropout(*mask), x, y)
    }

    /// dx = dy·keep·scale with the mask of the forward.
    fn dropout_backward(
        &self,
        mask: &DropoutMask,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        self.activation_backward(Activation::dropout(*mask), None, dy, dx)
    }

    /// `activation_forward` on checked arguments.
    #[doc(hidden)]
    fn activation_forward_unchecked(
        &self,
        activation: Activation,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// `activation_backward` on checked arguments; x is given exactly when `activation.relu`.
    #[doc(hidden)]
    fn activation_backward_unchecked(
        &self,
        activation: Activation,
        x: Option<&Self::Buffer>,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
}
