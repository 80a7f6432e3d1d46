//! The CPU twin of `shaders/activation.wgsl`.

use super::{Activation, ActivationOps};
use crate::Result;
use crate::cpu::{CpuBackend, CpuBuffer};

/// Keep test and scale of `activation`'s dropout: every element kept and a scale of 1 without.
fn dropout_of(activation: Activation) -> (impl Fn(usize) -> bool, f32) {
    let mask = activation.dropout;
    let keeps = move |i: usize| mask.is_none_or(|m| m.keeps(i as u32));
    (keeps, mask.map_or(1.0, |m| m.scale()))
}

/// y = act(x) for every element; `values` holds x and receives y.
pub(crate) fn activate_in_place(activation: Activation, values: &mut [f32]) {
    let (keeps, scale) = dropout_of(activation);
    for (i, value) in values.iter_mut().enumerate() {
        let activated = if activation.relu {
            value.max(0.0)
        } else {
            *value
        };
        *value = if keeps(i) { activated * scale } else { 0.0 };
    }
}

/// The gradient of what ReLU (then dropout) received, from the gradient `dy` of its output
/// `activated`: dy·scale where the output is positive (kept, and positive before), else 0.
pub(crate) fn relu_gradient_from_output(
    activation: Activation,
    activated: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let scale = activation.dropout.map_or(1.0, |mask| mask.scale());
    (activated.iter().zip(dy))
        .map(|(&a, &d)| if a > 0.0 { d * scale } else { 0.0 })
        .collect()
}

/// What the activation receives at element i: x, or x + addend (in f32) when the pass sums.
fn activation_input(x: &[f32], addend: Option<&[f32]>, i: usize) -> f32 {
    addend.map_or(x[i], |addend| x[i] + addend[i])
}

impl ActivationOps for CpuBackend {
    fn activation_forward_unchecked(
        &self,
        activation: Activation,
        x: &CpuBuffer,
        addend: Option<&CpuBuffer>,
        y: &mut CpuBuffer,
    ) -> Result<()> {
        let addend = addend.map(|addend| &addend[..]);
        for (i, y) in y.iter_mut().enumerate() {
            *y = activation_input(x, addend, i);
        }
        activate_in_place(activation, y);
        Ok(())
    }

    fn activation_backward_unchecked(
        &self,
        activation: Activation,
        x: Option<&CpuBuffer>,
        addend: Option<&CpuBuffer>,
        dy: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) -> Result<()> {
        let (keeps, scale) = dropout_of(activation);
        let addend = addend.map(|addend| &addend[..]);
        for (i, (dx, &dy)) in dx.iter_mut().zip(dy).enumerate() {
            let passes = keeps(i) && x.is_none_or(|x| activation_input(x, addend, i) > 0.0);
            *dx = if passes { dy * scale } else { 0.0 };
        }
        Ok(())
    }
}
