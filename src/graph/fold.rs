//! Inference-mode BatchNorm folded into the Linear or convolution before it: the same function
//! of the input with one layer fewer, for deployment.

use super::{HostModel, LayerSpec, ModelSpec};
use crate::{Error, Result};

/// `spec` and `model` with every BatchNorm folded into the Linear or convolution right before it,
/// in f64: with σ = √(running_var + eps), each output's weights w' = w·γ/σ and bias
/// b' = (b − μ)·γ/σ + β. The folded model computes what the original does in eval mode (to f32
/// rounding) and has no running statistics. A BatchNorm after anything else cannot be folded and
/// is refused, naming it. LayerNorm, GroupNorm and InstanceNorm, whose statistics are the
/// input's own, stay as they are.
pub fn fold_batchnorm(spec: &ModelSpec, model: &HostModel) -> Result<(ModelSpec, HostModel)> {
    model.check(spec)?;
    let eps = f64::from(spec.batchnorm_config().eps());
    let layers = spec.layers();
    let (mut folded_layers, mut params) = (Vec::new(), Vec::new());
    let (mut next_param, mut next_running) = (0, 0);
    let mut at = 0;
    while at < layers.len() {
        let layer = layers[at];
        match layer {
            LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. } => {
                let mut weight = model.params[next_param].clone();
                let mut bias = model.params[next_param + 1].clone();
                next_param += 2;
                let folds = layers.get(at + 1) == Some(&LayerSpec::BatchNorm);
                if folds {
                    let (gamma, beta) = (&model.params[next_param], &model.params[next_param + 1]);
                    let running = &model.running[next_running];
                    next_param += 2;
                    next_running += 1;
                    let per_output = weight.len() / bias.len();
                    for (output, (row, b)) in
                        weight.chunks_mut(per_output).zip(&mut bias).enumerate()
                    {
                        let sigma = (f64::from(running.var[output]) + eps).sqrt();
                        let scale = f64::from(gamma[output]) / sigma;
                        for w in row {
                            *w = (f64::from(*w) * scale) as f32;
                        }
                        *b = ((f64::from(*b) - f64::from(running.mean[output])) * scale
                            + f64::from(beta[output])) as f32;
                    }
                }
                params.push(weight);
                params.push(bias);
                folded_layers.push(layer);
                at += if folds { 2 } else { 1 };
            }
            LayerSpec::BatchNorm => {
                return Err(Error::InvalidArgument(format!(
                    "layer {at} (BatchNorm) does not follow a Linear or convolution layer, so it \
                     cannot be folded into one"
                )));
            }
            _ => {
                // Any other layer's tensors (a LayerNorm's γ and β) carry over unchanged.
                if layer.param_shapes(spec.shapes()[at]).is_some() {
                    params.extend_from_slice(&model.params[next_param..next_param + 2]);
                    next_param += 2;
                }
                folded_layers.push(layer);
                at += 1;
            }
        }
    }
    let folded = ModelSpec::new(spec.input(), folded_layers, spec.batchnorm_config())?;
    let model = HostModel {
        params,
        running: Vec::new(),
    };
    model.check(&folded)?;
    Ok((folded, model))
}
