//! The GPU backend: one wgpu device and queue, cached pipelines, pooled buffers.
//!
//! Work is recorded into one pending command encoder and submitted when results are needed
//! (`flush`, `download`), so a whole step goes to the GPU in one submission
//! (`recording.rs`). wgpu errors and device loss are caught and returned as `Error`s instead of
//! panicking (`faults.rs`).

mod bindings;
mod buffer;
pub mod device;
mod faults;
// Kernel plumbing, public only for the shader tests (hidden from the docs).
#[allow(missing_docs)]
mod kernels;
mod pipeline;
mod profiler;
mod readback;
mod recording;
mod storage;
mod tuning;

use std::sync::{Arc, Mutex, PoisonError};

pub use bindings::GpuCounters;
pub use buffer::GpuBuffer;
pub use device::{AdapterRequest, AdapterSummary};
// The kernel plumbing is public for the shader tests, not an API.
#[doc(hidden)]
pub use kernels::{
    Binding, FINALIZE_WORKGROUP, Kernel, PRELUDE, Shader, Slot, Storage, TYPED_SLOTS, VectorWidth,
    WORKGROUP,
};
#[doc(hidden)]
pub use pipeline::{Constants, Variant};
pub use profiler::{KernelTime, Profile};
pub(crate) use recording::Recording;
pub use tuning::{MatmulSchedule, ReductionWalk, Tuning};

use crate::backend::Backend;
use crate::{Dtype, Error, Result};
use buffer::BufferPool;
use pipeline::PipelineCache;

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const UNIFORM: wgpu::BufferUsages = wgpu::BufferUsages::UNIFORM.union(wgpu::BufferUsages::COPY_DST);
const READBACK: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    pipelines: PipelineCache,
    pool: Arc<BufferPool>,
    pending: recording::EncoderSlot,
    bind_groups: bindings::BindGroupCache,
    faults: faults::SharedFaults,
    tuning: Mutex<Tuning>,
    matmul_schedule: Mutex<MatmulSchedule>,
    steps_per_submission: std::sync::atomic::AtomicU64,
    profile: Mutex<Option<profiler::Window>>,
    /// One f32 bound where a kernel needs a buffer in a slot it will not read (a matmul
    /// without bias), so that the slot's type never depends on another operand's.
    /// Bound to slots a kernel will not touch: one for read-only slots and one for writable
    /// ones (a buffer bound both ways in one dispatch is a usage conflict).
    placeholders: [GpuBuffer; 2],
    lose_device: Option<faults::DeviceLossFault>,
    /// What one binding may hold: the adapter's limit, or a lower one set for tests so that
    /// the chunked paths run on every adapter.
    max_binding: std::sync::atomic::AtomicU64,
}

/// The GPU backend. Cloning it gives another handle to the same device.
#[derive(Clone)]
pub struct GpuBackend {
    shared: Arc<Shared>,
    /// The host's encoder, for the view that `record_into` hands its closure.
    host_encoder: Option<Arc<recording::EncoderSlot>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GpuBackend {
    /// Opens the best adapter matching `request`, with every limit it offers. wgnorm owns the
    /// device: wgpu errors and device loss are returned as `Error`s by the next call.
    pub fn new(request: &AdapterRequest) -> Result<Self> {
        Self::open(device::choose(&device::instance(), request)?)
    }

    /// Opens `adapter` (one of `device::adapters`), as `new` opens the one it chooses.
    pub fn open(adapter: wgpu::Adapter) -> Result<Self> {
        let summary = AdapterSummary::of(&adapter);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgnorm"),
            // Timestamps cost nothing until a profiling window writes them.
            // f16 storage is offered to callers only where the adapter has shader-f16.
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("could not open {}: {e}", summary.name)))?;
        let backend = Self::on(device, queue, summary, faults::DeviceLossFault::from_env());
        backend.catch_faults();
        Ok(backend)
    }

    /// wgnorm on a device and queue the host already owns: no second device, and buffers pass
    /// between the host and wgnorm without copies. The host keeps its own error handling:
    /// wgnorm installs no error or device-lost callback on a device it does not own, so wgpu
    /// errors inside recorded work reach the host's handler. Profiling needs the device to
    /// have been created with `Features::TIMESTAMP_QUERY`.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let summary = AdapterSummary::from_info(device.adapter_info());
        Self::on(device, queue, summary, None)
    }

    fn on(
        device: wgpu::Device,
        queue: wgpu::Queue,
        summary: AdapterSummary,
        lose_device: Option<faults::DeviceLossFault>,
    ) -> Self {
        let limits = device.limits();
        let placeholder = || {
            GpuBuffer::unpooled(
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgnorm placeholder"),
                    size: 4,
                    usage: STORAGE,
                    mapped_at_creation: false,
                }),
                1,
                Dtype::F32,
            )
        };
        let placeholders = [placeholder(), placeholder()];
        let tuning = Tuning::for_device(summary.device_type);
        Self {
            shared: Arc::new(Shared {
                pipelines: PipelineCache::new(device.clone()),
                pool: Arc::new(BufferPool::new(device.clone(), limits.max_buffer_size)),
                device,
                queue,
                pending: Mutex::new(None),
                bind_groups: Default::default(),
                faults: Arc::default(),
                tuning: Mutex::new(tuning),
                matmul_schedule: Mutex::new(MatmulSchedule::for_device(summary.device_type)),
                steps_per_submission: tuning.steps_per_submission.into(),
                summary,
                profile: Mutex::new(None),
                placeholders,
                lose_device,
                max_binding: limits.max_storage_buffer_binding_size.into(),
            }),
            host_encoder: None,
        }
    }

    /// A host's buffer as a wgnorm tensor of `len` values stored as `dtype`, without a copy;
    /// `name` is the argument the errors name. The buffer needs `BufferUsages::STORAGE` and at
    /// least `len` values' bytes rounded up to a multiple of 4, and must belong to this
    /// backend's device. Add `COPY_SRC` to `download` it.
    pub fn wrap_buffer(
        &self,
        name: &str,
        buffer: &wgpu::Buffer,
        len: usize,
        dtype: Dtype,
    ) -> Result<GpuBuffer> {
        self.check_dtype(dtype)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidArgument(format!(
                "{name}: the buffer's usage {:?} lacks STORAGE",
                buffer.usage()
            )));
        }
        let needed = buffer::words_bytes(len, dtype);
        if buffer.size() < needed {
            return Err(Error::Shape(format!(
                "{name}: buffer of {} bytes, expected at least {needed} bytes ({len} {dtype:?})",
                buffer.size()
            )));
        }
        Ok(GpuBuffer::unpooled(buffer.clone(), len, dtype))
    }

    /// The adapter the device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.shared.summary
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.shared.device.limits()
    }

    /// The most bytes one binding may hold: the adapter's `max_storage_buffer_binding_size`
    /// unless `set_max_binding_for_tests` lowered it.
    pub fn max_binding(&self) -> u64 {
        self.shared
            .max_binding
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lowers the binding size wgnorm plans with (never above the adapter's), so that tests
    /// run the chunked and refused-binding paths on adapters whose own limit is large.
    #[doc(hidden)]
    pub fn set_max_binding_for_tests(&self, bytes: u64) {
        let bytes = bytes.min(self.limits().max_storage_buffer_binding_size);
        self.shared
            .max_binding
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The grid sizes in use.
    pub fn tuning(&self) -> Tuning {
        *lock(&self.shared.tuning)
    }

    /// Replaces the grid sizes for work recorded from now on (every clone of this backend
    /// included), to tune for an adapter or to test another class's grids; steps per
    /// submission follow `set_steps_per_submission` alone once the backend exists.
    pub fn set_tuning(&self, tuning: Tuning) {
        *lock(&self.shared.tuning) = tuning;
    }

    /// The matmul kernel in use.
    pub fn matmul_schedule(&self) -> MatmulSchedule {
        *lock(&self.shared.matmul_schedule)
    }

    /// Chooses the matmul kernel for this device (every clone of this backend included).
    pub fn set_matmul_schedule(&self, schedule: MatmulSchedule) {
        *lock(&self.shared.matmul_schedule) = schedule;
    }

    /// Records `steps` training steps per submission from now on (every clone of this backend
    /// included), in place of the adapter class's `Tuning::steps_per_submission`; at least 1.
    pub fn set_steps_per_submission(&self, steps: u64) {
        self.shared
            .steps_per_submission
            .store(steps.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The device wgnorm records on (the host's, for `from_device`).
    pub fn device(&self) -> &wgpu::Device {
        &self.shared.device
    }

    /// The queue wgnorm submits to; a host's encoders holding wgnorm work go to this queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.shared.queue
    }

    /// Submits everything recorded and blocks until the device has run it.
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.poll()
    }

    /// Buffers held by the pool (free or waiting for the next submit).
    pub fn pooled_buffers(&self) -> usize {
        self.shared.pool.pooled_count()
    }

    /// Refuses, naming the limit, a buffer an op binds whole that is larger than one binding
    /// may be (ops that split their work along rows do not need this).
    pub(crate) fn check_bindable(&self, what: &str, buffer: &GpuBuffer) -> Result<()> {
        let max = self.max_binding();
        if buffer.byte_len() > max {
            return Err(Error::Limit(format!(
                "{what} of {} bytes exceeds the adapter's max_storage_buffer_binding_size of {max} bytes",
                buffer.byte_len()
            )));
        }
        Ok(())
    }

    /// A buffer for a read-only slot the kernel will not read.
    pub(crate) fn placeholder(&self) -> &GpuBuffer {
        &self.shared.placeholders[0]
    }

    /// A buffer for a writable slot the kernel will not write.
    pub(crate) fn writable_placeholder(&self) -> &GpuBuffer {
        &self.shared.placeholders[1]
    }

    /// Whether `buffer` is one of the placeholders.
    pub(crate) fn is_placeholder(&self, buffer: &GpuBuffer) -> bool {
        (self.shared.placeholders.iter()).any(|placeholder| placeholder.raw() == buffer.raw())
    }

    /// Whether the device can run kernels on f16 storage (`Features::SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }
}
