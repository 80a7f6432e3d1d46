//! ReLU and dropout, forward and backward, each alone or ReLU then dropout in one pass,
//! optionally on the sum of x and a second input, the addend s:
//!
//! ```text
//! relu:    y = max(x, 0)                 dx = dy·[x > 0]
//! dropout: y = x·keep·1/(1 − p)          dx = dy·keep·1/(1 − p)
//! with an addend s (a residual connection's shortcut, or a gradient fan-in without activation):
//!          y = keep·scale·act(x + s)     dx = keep·scale·dy·[x + s > 0 or no ReLU]
//! ```
//!
//! where keep is a pure function of (seed, layer, step, element), so backward recomputes the
//! mask instead of storing it and both backends draw the same one. The same dx reaches x and
//! the addend. x + s is summed in f32 whatever the storage of x and s; without an addend nothing
//! is added, so the results are those of the plain activation bit for bit. The WGSL is
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
    /// Elements of the global batch ahead of this tensor's first (a data-parallel rank's
    /// slice): the mask is drawn by an element's place in the global batch.
    first_element: u32,
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
            first_element: 0,
        }
    }

    /// The same mask on a tensor whose first element is element `first_element` of the global
    /// batch (a data-parallel rank's slice of it). Element indices are 32-bit, as on the GPU.
    pub fn starting_at(self, first_element: usize) -> Self {
        Self {
            first_element: first_element as u32,
            ..self
        }
    }

    /// The global batch's index of this tensor's first element.
    pub(crate) fn first_element(&self) -> u32 {
        self.first_element
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
        let element = element.wrapping_add(self.first_element);
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
    /// Neither ReLU nor dropout: with an addend, the plain sum.
    pub const IDENTITY: Activation = Activation {
        relu: false,
        dropout: None,
    };

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

    /// The name errors give it applied to x + addend: `relu+add`, or `add` alone.
    pub fn sum_name(&self) -> String {
        if *self == Self::IDENTITY {
            "add".to_string()
        } else {
            format!("{}+add", self.name())
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

/// Checks the backward pass of `op`: with ReLU it reads what the forward received (`saved`,
/// by name), so each must be given; whatever is given is as long as dx, as is dy.
fn check_backward<B: Backend>(
    backend: &B,
    op: &str,
    activation: Activation,
    saved: &[(&str, Option<&B::Buffer>)],
    dy: &B::Buffer,
    dx: &B::Buffer,
) -> Result<()> {
    let mut inputs = Vec::with_capacity(saved.len() + 1);
    for &(name, buffer) in saved {
        match buffer {
            Some(buffer) => inputs.push((name, backend.len_of(buffer))),
            None if activation.relu => {
                return Err(Error::InvalidArgument(format!(
                    "{op} backward needs the forward's {name} (ReLU's gradient depends on it)"
                )));
            }
            None => {}
        }
    }
    inputs.push(("dy", backend.len_of(dy)));
    check_elementwise(&format!("{op} backward"), &inputs, backend.len_of(dx))
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
        self.activation_forward_unchecked(activation, x, None, y)
    }

    /// dx from dy and, with ReLU, the forward's input x (dropout alone reads none).
    fn activation_backward(
        &self,
        activation: Activation,
        x: Option<&Self::Buffer>,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        check_backward(self, activation.name(), activation, &[("x", x)], dy, dx)?;
        let x = x.filter(|_| activation.relu);
        self.activation_backward_unchecked(activation, x, None, dy, dx)
    }

    /// y = act(x + addend); x, addend and y of one length.
    fn activation_forward_sum(
        &self,
        activation: Activation,
        x: &Self::Buffer,
        addend: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        let inputs = [("x", self.len_of(x)), ("addend", self.len_of(addend))];
        check_elementwise(&activation.sum_name(), &inputs, self.len_of(y))?;
        self.activation_forward_unchecked(activation, x, Some(addend), y)
    }

    /// dx of `activation_forward_sum` (the same dx reaches x and the addend); with ReLU it
    /// reads x and the addend, without ReLU neither (pass None for both).
    fn activation_backward_sum(
        &self,
        activation: Activation,
        x: Option<&Self::Buffer>,
        addend: Option<&Self::Buffer>,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()> {
        let saved = [("x", x), ("addend", addend)];
        check_backward(self, &activation.sum_name(), activation, &saved, dy, dx)?;
        let (x, addend) = (
            x.filter(|_| activation.relu),
            addend.filter(|_| activation.relu),
        );
        self.activation_backward_unchecked(activation, x, addend, dy, dx)
    }

    /// y = a + b (a gradient fan-in, or a residual addition without activation).
    fn add(&self, a: &Self::Buffer, b: &Self::Buffer, y: &mut Self::Buffer) -> Result<()> {
        let inputs = [("a", self.len_of(a)), ("b", self.len_of(b))];
        check_elementwise("add", &inputs, self.len_of(y))?;
        self.activation_forward_unchecked(Activation::IDENTITY, a, Some(b), y)
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

    /// `activation_forward` (no addend) and `activation_forward_sum` on checked arguments.
    #[doc(hidden)]
    fn activation_forward_unchecked(
        &self,
        activation: Activation,
        x: &Self::Buffer,
        addend: Option<&Self::Buffer>,
        y: &mut Self::Buffer,
    ) -> Result<()>;

    /// `activation_backward` (no addend) and `activation_backward_sum` on checked arguments;
    /// x is given exactly when `activation.relu`, the addend when, besides, the forward summed.
    #[doc(hidden)]
    fn activation_backward_unchecked(
        &self,
        activation: Activation,
        x: Option<&Self::Buffer>,
        addend: Option<&Self::Buffer>,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
}
