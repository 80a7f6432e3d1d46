//! A model's tensors between the host and the device, each by its `state_dict` name: upload
//! (f32, or f16 weights for inference), download, and the parameters in `ModelSpec::params`
//! order, the layout the gradients and the optimizer share.

use std::collections::HashMap;

use super::layers::TakeTensor;
use super::{Compute, HostModel, Layer, ModelSpec, ParamSpec, Sequential};
use crate::{Dtype, Error, Result};

/// The uploaded tensors of a model, taken by the layers being built.
struct Uploaded<'a, B: Compute> {
    tensors: HashMap<String, B::Buffer>,
    node: &'a str,
}

impl<B: Compute> TakeTensor<B> for Uploaded<'_, B> {
    fn take(&mut self, name: &str) -> Result<B::Buffer> {
        let full = format!("{}.{name}", self.node);
        (self.tensors.remove(&full))
            .ok_or_else(|| Error::Shape(format!("the model is missing tensor {full}")))
    }
}

impl<B: Compute> Sequential<B> {
    /// Uploads `host` (checked against `spec`) to the backend.
    pub fn upload(backend: &B, spec: &ModelSpec, host: &HostModel) -> Result<Self> {
        Self::upload_with_weights(backend, spec, host, Dtype::F32)
    }

    /// For inference in half precision: the Linear and convolution weights stored as `dtype`
    /// (each rounded once) and the activations too; biases, BatchNorm's parameters and statistics and all
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
        let params = spec.params();
        // Trainable f32 parameters share one arena, so the optimizer updates them in one pass.
        let buffers = if weights == Dtype::F32 {
            backend.upload_arena(&host.params(spec)?)?
        } else {
            (params.iter())
                .map(|param| {
                    let dtype = if param.is_matrix() {
                        weights
                    } else {
                        Dtype::F32
                    };
                    backend.upload_as(host.tensor(&param.name)?, dtype)
                })
                .collect::<Result<_>>()?
        };
        let mut tensors: HashMap<String, B::Buffer> = (params.iter().map(|p| p.name.clone()))
            .zip(buffers)
            .collect();
        for running in spec.running() {
            let values = backend.upload(host.tensor(&running.name)?)?;
            tensors.insert(running.name, values);
        }
        let mut uploaded = Uploaded { tensors, node: "" };
        let config = spec.batchnorm_config();
        let mut layers = Vec::with_capacity(spec.nodes().len());
        for node in spec.nodes() {
            uploaded.node = &node.name;
            let mut layer = node.layer.build(node.input, config, &mut uploaded)?;
            if let Layer::BatchNorm(batchnorm) = &mut layer {
                batchnorm.batches_tracked = host.batches_tracked(&node.name)?;
            }
            layers.push(layer);
        }
        Ok(Self {
            spec: spec.clone(),
            layers,
            activations: Dtype::F32,
            param_lens: params.iter().map(ParamSpec::len).collect(),
        })
    }

    /// Copies every tensor of the `state_dict` back to the host.
    pub fn download(&self, backend: &B) -> Result<HostModel> {
        self.host_model(backend.download_many(&self.tensors()?)?)
    }

    /// Every tensor of the `state_dict` on the device, in `ModelSpec::tensors` order, so that
    /// one `download_many` reads them all.
    pub fn tensors(&self) -> Result<Vec<&B::Buffer>> {
        (self.spec.tensors().iter())
            .map(|tensor| {
                (self.layers[tensor.node].tensors().into_iter())
                    .find(|(name, _)| *name == tensor.def.name)
                    .map(|(_, buffer)| buffer)
                    .ok_or_else(|| Error::Shape(format!("no tensor {} on the device", tensor.name)))
            })
            .collect()
    }

    /// The host model from the values of `tensors`, in that order.
    pub fn host_model(&self, values: Vec<Vec<f32>>) -> Result<HostModel> {
        let tensors = self.spec.tensors();
        if values.len() != tensors.len() {
            return Err(Error::Shape(format!(
                "{} tensors for a model of {}",
                values.len(),
                tensors.len()
            )));
        }
        let mut host = HostModel::default();
        for (tensor, values) in tensors.into_iter().zip(values) {
            host.insert(tensor.name, values);
        }
        for (node, layer) in self.spec.nodes().iter().zip(&self.layers) {
            if let Layer::BatchNorm(batchnorm) = layer {
                host.set_batches_tracked(node.name.clone(), batchnorm.batches_tracked);
            }
        }
        Ok(host)
    }

    /// The parameters, in `ModelSpec::params` order, for the optimizer to update.
    pub fn params_mut(&mut self) -> Result<Vec<&mut B::Buffer>> {
        let params = self.spec.params();
        self.named_mut(&params)
    }

    /// Every tensor of the `state_dict`, in `ModelSpec::tensors` order, to overwrite.
    pub fn tensors_mut(&mut self) -> Result<Vec<&mut B::Buffer>> {
        let tensors = self.spec.tensors();
        self.named_mut(&tensors)
    }

    /// The running statistics, in `ModelSpec::running` order, to overwrite.
    pub fn running_mut(&mut self) -> Result<Vec<&mut B::Buffer>> {
        let running = self.spec.running();
        self.named_mut(&running)
    }

    /// The device tensors of `wanted`, in that order.
    fn named_mut(&mut self, wanted: &[ParamSpec]) -> Result<Vec<&mut B::Buffer>> {
        let mut by_node: Vec<Vec<(&'static str, &mut B::Buffer)>> =
            self.layers.iter_mut().map(Layer::tensors_mut).collect();
        let mut found = Vec::new();
        for tensor in wanted {
            let slot = (by_node[tensor.node].iter())
                .position(|(name, _)| *name == tensor.def.name)
                .ok_or_else(|| Error::Shape(format!("no tensor {} on the device", tensor.name)))?;
            found.push(by_node[tensor.node].swap_remove(slot).1);
        }
        Ok(found)
    }
}
