//! The CPU twin of `shaders/activation.wgsl`.

use super::{Activation, ActivationOps};
use crate::Result;
use crate::cpu::CpuBackend;

/// Keep test and scale of `activation`'s dropout: every element kept and a scale of 1 without.
fn dropout_of(activation: Activation) -> (impl Fn(usize) -> bool, f32) {
    let mask = activation.dropout;
    let keeps = move |i: usize| mask.is_none_or(|m| m.keeps(i as u32));
    (keeps, mask.map_or(1.0, |m| m.scale()))
}

impl ActivationOps for CpuBackend {
    fn activation_forward_unchecked(
        &self,
        activation: Activation,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let (keeps, scale) = dropout_of(activation);
        for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            let activated = if activation.relu { x.max(0.0) } else { x };
            *y = if keeps(i) { activated * scale } else { 0.0 };
        }
        Ok(())
    }

    fn activation_backward_unchecked(
        &self,
        activation: Activation,
        x: Option<&Vec<f32>>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let (keeps, scale) = dropout_of(activation);
        for (i, (dx, &dy)) in dx.iter_mut().zip(dy).enumerate() {
            let passes = keeps(i) && x.is_none_or(|x| x[i] > 0.0);
            *dx = if passes { dy * scale } else { 0.0 };
        }
        Ok(())
    }
}
