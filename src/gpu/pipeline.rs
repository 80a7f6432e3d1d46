//! The cache that creates each shader module and compute pipeline once.

use std::collections::HashMap;
use std::sync::Mutex;

use super::kernels::{Kernel, Shader, Storage, VectorWidth};
use crate::{Error, Result};

/// Values for a kernel's WGSL `override` constants, fixed when its pipeline is created.
pub type Constants<'a> = &'a [(&'static str, f64)];

/// What a dispatch specializes its kernel with beyond the dtypes of its buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Variant<'a> {
    /// Values of `override` constants.
    pub constants: Constants<'a>,
    /// Width of the `*_V` vector types.
    pub vector: VectorWidth,
}

/// A kernel with its activation storage and constants: each distinct one is its own pipeline.
type PipelineKey = (Kernel, Storage, Vec<(&'static str, u64)>);

/// Creates each shader module and compute pipeline once.
pub(crate) struct PipelineCache {
    device: wgpu::Device,
    modules: Mutex<HashMap<(Shader, Storage), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
        }
    }

    pub(crate) fn get(
        &self,
        kernel: Kernel,
        storage: Storage,
        constants: Constants,
    ) -> Result<wgpu::ComputePipeline> {
        let key = (
            kernel,
            storage,
            constants
                .iter()
                .map(|&(name, value)| (name, value.to_bits()))
                .collect(),
        );
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipeline) = pipelines.get(&key) {
            return Ok(pipeline.clone());
        }
        let module = self.module(kernel.shader(), storage)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry_point()),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry_point()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "pipeline {} of {}: {error}",
                kernel.entry_point(),
                kernel.shader().file_name()
            )));
        }
        pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, shader: Shader, storage: Storage) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = modules.get(&(shader, storage)) {
            return Ok(module.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.file_name()),
                source: wgpu::ShaderSource::Wgsl(shader.module_source(storage).into()),
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("{}: {error}", shader.file_name())));
        }
        modules.insert((shader, storage), module.clone());
        Ok(module)
    }
}
