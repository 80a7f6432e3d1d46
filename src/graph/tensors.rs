//! A model's tensors between the host and the device: upload (f32, or f16 weights for
//! inference), download, and the parameters in `ModelSpec::params` order, the layout the
//! gradients and the optimizer share.

use super::{
    BatchNorm, Compute, Conv2d, GroupNorm, HostModel, HostRunning, Layer, LayerSpec, Linear,
    MaxPool2d, ModelSpec, ParamSpec, SampleShape, Sequential,
};
use crate::ops::batchnorm::{Affine, RunningStats};
use crate::{Dtype, Error, Result};

impl<B: Compute> Sequential<B> {
    /// Uploads `host` (checked against `spec`) to the backend.
    pub fn upload(backend: &B, spec: &ModelSpec, host: &HostModel) -> Result<Self> {
        Self::upload_with_weights(backend, spec, host, Dtype::F32)
    }

    /// For inference in half precision: the Linear weights stored as `dtype` (each rounded
    /// once) and the activations too; biases, BatchNorm's parameters and statistics and all
    /// arithmetic stay f32. A model with f16 weights cannot be trained (the optimizer kernels
    /// take f32 only and refuse it).
    pub fn upload_for_inference(
        backend: &B,
        spec: &ModelSpec,
        host: &HostModel,
        dtype: Dtype,
    ) -> Result<Self> {
        let mut model = Self::upload_with_weights(backend, spec, host, dtype)?;
        model.activations = dtype;
        Ok(model)
    }

    fn upload_with_weights(
        backend: &B,
        spec: &ModelSpec,
        host: &HostModel,
        weights: Dtype,
    ) -> Result<Self> {
        host.check(spec)?;
        // Trainable f32 parameters share one arena, so the optimizer updates them in one pass.
        let mut params = if weights == Dtype::F32 {
            let values: Vec<&[f32]> = host.params.iter().map(Vec::as_slice).collect();
            backend.upload_arena(&values)?
        } else {
            (host.params.iter().zip(spec.params()))
                .map(|(values, param)| {
                    let dtype = if param.is_matrix() {
                        weights
                    } else {
                        Dtype::F32
                    };
                    backend.upload_as(values, dtype)
                })
                .collect::<Result<_>>()?
        }
        .into_iter();
        let mut running = host.running.iter();
        let mut next_param = || -> Result<B::Buffer> {
            params
                .next()
                .ok_or_else(|| Error::Shape("model is missing a parameter".to_string()))
        };
        let mut layers = Vec::new();
        let image = |shape: SampleShape| match shape {
            SampleShape::Image(image) => Ok(image),
            SampleShape::Flat(_) => Err(Error::Shape(format!("{shape:?} is not an image"))),
        };
        for (&layer, &input) in spec.layers().iter().zip(spec.shapes()) {
            layers.push(match layer {
                LayerSpec::Linear { outputs } => Layer::Linear(Linear {
                    weight: next_param()?,
                    bias: next_param()?,
                    inputs: input.len(),
                    outputs,
                }),
                LayerSpec::Conv2d { outputs, window } => {
                    let input = image(input)?;
                    Layer::Conv2d(Conv2d {
                        linear: Linear {
                            weight: next_param()?,
                            bias: next_param()?,
                            inputs: window.patch_len(input.channels),
                            outputs,
                        },
                        input,
                        window,
                    })
                }
                LayerSpec::BatchNorm => {
                    let affine = Affine {
                        gamma: next_param()?,
                        beta: next_param()?,
                    };
                    let stats = running.next().ok_or_else(|| {
                        Error::Shape("model is missing running statistics".to_string())
                    })?;
                    let (features, positions) = match input {
                        SampleShape::Flat(features) => (features, 1),
                        SampleShape::Image(image) => (image.channels, image.positions()),
                    };
                    Layer::BatchNorm(BatchNorm {
                        affine,
                        running: RunningStats {
                            mean: backend.upload(&stats.mean)?,
                            var: backend.upload(&stats.var)?,
                        },
                        batches_tracked: stats.batches_tracked,
                        features,
                        positions,
                        config: spec.batchnorm_config(),
                    })
                }
                LayerSpec::LayerNorm | LayerSpec::GroupNorm { .. } | LayerSpec::InstanceNorm => {
                    Layer::GroupNorm(GroupNorm {
                        affine: Affine {
                            gamma: next_param()?,
                            beta: next_param()?,
                        },
                        sample: layer.groupnorm_shape(1, input).ok_or_else(|| {
                            Error::Shape(format!("{layer} has no GroupNorm shape"))
                        })?,
                    })
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Dropout { p } => Layer::Dropout { p },
                LayerSpec::MaxPool2d { window } => Layer::MaxPool2d(MaxPool2d {
                    input: image(input)?,
                    window,
                }),
                LayerSpec::AvgPool => Layer::AvgPool(image(input)?),
                LayerSpec::Flatten => Layer::Flatten(image(input)?),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            layers,
            activations: Dtype::F32,
            param_lens: spec.params().iter().map(ParamSpec::len).collect(),
        })
    }

    /// Copies every tensor of the `state_dict` back to the host.
    pub fn download(&self, backend: &B) -> Result<HostModel> {
        self.host_model(backend.download_many(&self.tensors())?)
    }

    /// Every tensor of the `state_dict` on the device: the parameters in `ModelSpec::params`
    /// order, then each BatchNorm layer's running mean and variance, so that one
    /// `download_many` reads them all.
    pub fn tensors(&self) -> Vec<&B::Buffer> {
        let mut tensors = Vec::new();
        let mut running = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::Linear(linear) | Layer::Conv2d(Conv2d { linear, .. }) => {
                    tensors.extend([&linear.weight, &linear.bias])
                }
                Layer::GroupNorm(norm) => tensors.extend([&norm.affine.gamma, &norm.affine.beta]),
                Layer::BatchNorm(bn) => {
                    tensors.extend([&bn.affine.gamma, &bn.affine.beta]);
                    running.extend([&bn.running.mean, &bn.running.var]);
                }
                _ => {}
            }
        }
        tensors.extend(running);
        tensors
    }

    /// The host model from the values of `tensors`, in that order.
    pub fn host_model(&self, values: Vec<Vec<f32>>) -> Result<HostModel> {
        let params = self.spec.params().len();
        let batchnorms: Vec<u64> = (self.layers.iter())
            .filter_map(|layer| match layer {
                Layer::BatchNorm(bn) => Some(bn.batches_tracked),
                _ => None,
            })
            .collect();
        if values.len() != params + 2 * batchnorms.len() {
            return Err(Error::Shape(format!(
                "{} tensors for a model of {params} parameters and {} BatchNorm layers",
                values.len(),
                batchnorms.len()
            )));
        }
        let mut values = values.into_iter();
        let params = values.by_ref().take(params).collect();
        let running = batchnorms
            .into_iter()
            .map(|batches_tracked| HostRunning {
                mean: values.next().unwrap_or_default(),
                var: values.next().unwrap_or_default(),
                batches_tracked,
            })
            .collect();
        Ok(HostModel { params, running })
    }

    /// The parameters, in `ModelSpec::params` order, for the optimizer to update.
    pub fn params_mut(&mut self) -> Vec<&mut B::Buffer> {
        let mut params = Vec::new();
        for layer in &mut self.layers {
            match layer {
                Layer::Linear(linear) | Layer::Conv2d(Conv2d { linear, .. }) => {
                    params.push(&mut linear.weight);
                    params.push(&mut linear.bias);
                }
                Layer::BatchNorm(BatchNorm { affine, .. })
                | Layer::GroupNorm(GroupNorm { affine, .. }) => {
                    params.push(&mut affine.gamma);
                    params.push(&mut affine.beta);
                }
                _ => {}
            }
        }
        params
    }
}
