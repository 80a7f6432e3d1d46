//! WGSL sources, the kernels (entry points) wgnorm dispatches, and the cache that creates each
//! compute pipeline once.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::{Dtype, Error, Result};

use super::GpuBuffer;

/// Threads per workgroup of the reduction and elementwise kernels (`WORKGROUP` in WGSL).
pub const WORKGROUP: u32 = 256;

/// One WGSL file per kernel family, compiled into the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    BatchNorm,
    Matmul,
    Activation,
    Loss,
    Optimizer,
    Data,
}

impl Shader {
    pub const ALL: &'static [Shader] = &[
        Shader::BatchNorm,
        Shader::Matmul,
        Shader::Activation,
        Shader::Loss,
        Shader::Optimizer,
        Shader::Data,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Shader::BatchNorm => "batchnorm.wgsl",
            Shader::Matmul => "matmul.wgsl",
            Shader::Activation => "activation.wgsl",
            Shader::Loss => "loss.wgsl",
            Shader::Optimizer => "optimizer.wgsl",
            Shader::Data => "data.wgsl",
        }
    }

    /// The module wgnorm compiles: the file with the storage type of each typed binding
    /// (`X_T`, `DY_T`, `OUT_T`, `A_T`, `B_T`) defined as f32 or f16 ahead of it. One source
    /// serves every combination.
    pub fn module_source(self, storage: Storage) -> String {
        let mut header = String::new();
        if storage.0.contains(&Dtype::F16) {
            header.push_str("enable f16;\n");
        }
        for ((_, alias), dtype) in TYPED_SLOTS.iter().zip(storage.0) {
            let ty = match dtype {
                Dtype::F32 => "f32",
                Dtype::F16 => "f16",
            };
            header.push_str(&format!("alias {alias} = {ty};\n"));
        }
        format!("{header}{}", self.source())
    }

    /// Whether the file declares bindings with the aliases of `TYPED_SLOTS`, so that they can
    /// hold f16; the others take f32 only. Read from the source, so it cannot drift from it.
    pub fn has_f16_variant(self) -> bool {
        let source = self.source();
        TYPED_SLOTS
            .iter()
            .any(|(_, alias)| source.contains(&format!("array<{alias}>")))
    }

    /// The file as written (it uses the `TYPED_SLOTS` aliases without defining them: see
    /// `module_source`).
    pub fn source(self) -> &'static str {
        match self {
            Shader::BatchNorm => include_str!("../../shaders/batchnorm.wgsl"),
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::Activation => include_str!("../../shaders/activation.wgsl"),
            Shader::Loss => include_str!("../../shaders/loss.wgsl"),
            Shader::Optimizer => include_str!("../../shaders/optimizer.wgsl"),
            Shader::Data => include_str!("../../shaders/data.wgsl"),
        }
    }
}

/// An entry point of a shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    BatchNormStatsPartial,
    BatchNormStatsFinalize,
    BatchNormEvalStats,
    BatchNormNormalize,
    BatchNormBackwardPartial,
    BatchNormBackwardFinalize,
    BatchNormBackwardDx,
    Matmul,
    MatmulVec4,
    MatmulTiled,
    ReluForward,
    ReluBackward,
    DropoutForward,
    DropoutBackward,
    SoftmaxCrossEntropy,
    Adam,
    Sgd,
    Gather,
}

impl Kernel {
    pub const ALL: &'static [Kernel] = &[
        Kernel::BatchNormStatsPartial,
        Kernel::BatchNormStatsFinalize,
        Kernel::BatchNormEvalStats,
        Kernel::BatchNormNormalize,
        Kernel::BatchNormBackwardPartial,
        Kernel::BatchNormBackwardFinalize,
        Kernel::BatchNormBackwardDx,
        Kernel::Matmul,
        Kernel::MatmulVec4,
        Kernel::MatmulTiled,
        Kernel::ReluForward,
        Kernel::ReluBackward,
        Kernel::DropoutForward,
        Kernel::DropoutBackward,
        Kernel::SoftmaxCrossEntropy,
        Kernel::Adam,
        Kernel::Sgd,
        Kernel::Gather,
    ];

    pub fn shader(self) -> Shader {
        match self {
            Kernel::BatchNormStatsPartial
            | Kernel::BatchNormStatsFinalize
            | Kernel::BatchNormEvalStats
            | Kernel::BatchNormNormalize
            | Kernel::BatchNormBackwardPartial
            | Kernel::BatchNormBackwardFinalize
            | Kernel::BatchNormBackwardDx => Shader::BatchNorm,
            Kernel::Matmul | Kernel::MatmulVec4 | Kernel::MatmulTiled => Shader::Matmul,
            Kernel::ReluForward
            | Kernel::ReluBackward
            | Kernel::DropoutForward
            | Kernel::DropoutBackward => Shader::Activation,
            Kernel::SoftmaxCrossEntropy => Shader::Loss,
            Kernel::Adam | Kernel::Sgd => Shader::Optimizer,
            Kernel::Gather => Shader::Data,
        }
    }

    pub fn entry_point(self) -> &'static str {
        match self {
            Kernel::BatchNormStatsPartial => "stats_partial",
            Kernel::BatchNormStatsFinalize => "stats_finalize",
            Kernel::BatchNormEvalStats => "eval_stats",
            Kernel::BatchNormNormalize => "normalize",
            Kernel::BatchNormBackwardPartial => "backward_partial",
            Kernel::BatchNormBackwardFinalize => "backward_finalize",
            Kernel::BatchNormBackwardDx => "backward_dx",
            Kernel::Matmul => "matmul",
            Kernel::MatmulVec4 => "matmul_vec4",
            Kernel::MatmulTiled => "matmul_tiled",
            Kernel::ReluForward => "relu_forward",
            Kernel::ReluBackward => "relu_backward",
            Kernel::DropoutForward => "dropout_forward",
            Kernel::DropoutBackward => "dropout_backward",
            Kernel::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Kernel::Adam => "adam",
            Kernel::Sgd => "sgd",
            Kernel::Gather => "gather",
        }
    }
}

/// Binding slots of group 0, named as the WGSL globals they feed, one numbering across all
/// shaders (a test checks each name and number against every shader). Slot 0 is always the
/// kernel's uniform parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    X = 1,
    Dy = 2,
    Partials = 3,
    Stats = 4,
    RunningMean = 5,
    RunningVar = 6,
    Gamma = 7,
    Beta = 8,
    Out = 9,
    Dgamma = 10,
    Dbeta = 11,
    MatA = 12,
    MatB = 13,
    Bias = 14,
    Labels = 15,
    Metrics = 16,
    Param = 17,
    Grad = 18,
    Moment1 = 19,
    Moment2 = 20,
    Images = 21,
    Index = 22,
    ByteScale = 23,
    AllLabels = 24,
    MatA4 = 25,
    MatB4 = 26,
}

impl Slot {
    pub const ALL: &'static [Slot] = &[
        Slot::X,
        Slot::Dy,
        Slot::Partials,
        Slot::Stats,
        Slot::RunningMean,
        Slot::RunningVar,
        Slot::Gamma,
        Slot::Beta,
        Slot::Out,
        Slot::Dgamma,
        Slot::Dbeta,
        Slot::MatA,
        Slot::MatB,
        Slot::Bias,
        Slot::Labels,
        Slot::Metrics,
        Slot::Param,
        Slot::Grad,
        Slot::Moment1,
        Slot::Moment2,
        Slot::Images,
        Slot::Index,
        Slot::ByteScale,
        Slot::AllLabels,
        Slot::MatA4,
        Slot::MatB4,
    ];

    pub fn wgsl_name(self) -> &'static str {
        match self {
            Slot::X => "x",
            Slot::Dy => "dy",
            Slot::Partials => "partials",
            Slot::Stats => "stats",
            Slot::RunningMean => "running_mean",
            Slot::RunningVar => "running_var",
            Slot::Gamma => "gamma",
            Slot::Beta => "beta",
            Slot::Out => "out",
            Slot::Dgamma => "dgamma",
            Slot::Dbeta => "dbeta",
            Slot::MatA => "a",
            Slot::MatB => "b",
            Slot::Bias => "bias",
            Slot::Labels => "labels",
            Slot::Metrics => "metrics",
            Slot::Param => "param",
            Slot::Grad => "grad",
            Slot::Moment1 => "moment1",
            Slot::Moment2 => "moment2",
            Slot::Images => "images",
            Slot::Index => "index",
            Slot::ByteScale => "byte_scale",
            Slot::AllLabels => "all_labels",
            Slot::MatA4 => "a4",
            Slot::MatB4 => "b4",
        }
    }
}

/// A buffer range bound to a slot, in values of the buffer's dtype.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub slot: Slot,
    pub buffer: &'a GpuBuffer,
    pub offset: usize,
    pub len: usize,
}

impl<'a> Binding<'a> {
    pub fn whole(slot: Slot, buffer: &'a GpuBuffer) -> Self {
        Self {
            slot,
            buffer,
            offset: 0,
            len: buffer.len(),
        }
    }

    /// `len` values starting at value `offset` (the byte offset must meet the adapter's
    /// storage offset alignment).
    pub fn rows(slot: Slot, buffer: &'a GpuBuffer, offset: usize, len: usize) -> Self {
        Self {
            slot,
            buffer,
            offset,
            len,
        }
    }
}

/// Bindings whose storage type each pipeline chooses, with the WGSL alias that names it: the
/// activations and gradients (x, dy, out) and the matmul operands (a, b and their vec4 views).
/// Every other binding is f32.
pub const TYPED_SLOTS: [(&[Slot], &str); 5] = [
    (&[Slot::X], "X_T"),
    (&[Slot::Dy], "DY_T"),
    (&[Slot::Out], "OUT_T"),
    (&[Slot::MatA, Slot::MatA4], "A_T"),
    (&[Slot::MatB, Slot::MatB4], "B_T"),
];

/// The storage type of each of `TYPED_SLOTS`, as one pipeline is built for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Storage(pub [Dtype; 5]);

impl Storage {
    /// Every typed binding stored as `dtype`.
    pub fn all(dtype: Dtype) -> Self {
        Self([dtype; 5])
    }

    /// The storage of the buffers in `bindings`, refusing an f16 buffer where `shader` has no
    /// f16 variant or in an untyped slot.
    pub fn of(kernel: Kernel, bindings: &[Binding]) -> Result<Self> {
        let mut storage = Self::default();
        for binding in bindings {
            let dtype = binding.buffer.dtype();
            let typed = TYPED_SLOTS
                .iter()
                .position(|(slots, _)| slots.contains(&binding.slot));
            match typed {
                Some(index) if kernel.shader().has_f16_variant() => storage.0[index] = dtype,
                _ if dtype == Dtype::F32 => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{} cannot take a {dtype:?} buffer as {}",
                        kernel.entry_point(),
                        binding.slot.wgsl_name()
                    )));
                }
            }
        }
        Ok(storage)
    }
}

/// Values for a kernel's WGSL `override` constants, fixed when its pipeline is created.
pub type Constants<'a> = &'a [(&'static str, f64)];

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
