//! The GPU backend: one wgpu device and queue, cached pipelines, pooled buffers.
//!
//! Work is recorded into one pending command encoder and submitted when results are needed
//! (`flush`, `download`), so a whole step goes to the GPU in one submission. wgpu errors and
//! device loss are caught and returned as `Error`s instead of panicking.

mod buffer;
pub mod device;
// Kernel plumbing, public only for the shader tests (hidden from the docs).
#[allow(missing_docs)]
mod pipeline;
mod profiler;

use std::sync::{Arc, Mutex, PoisonError};

pub use buffer::GpuBuffer;
pub use device::{AdapterRequest, AdapterSummary};
// The kernel plumbing is public for the shader tests, not an API.
#[doc(hidden)]
pub use pipeline::{Binding, Constants, Kernel, Shader, Slot, Storage, TYPED_SLOTS, WORKGROUP};
pub use profiler::{KernelTime, Profile};

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

/// Sizes that shape the kernels' grids; they are parameters so each GPU can be tuned.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Workgroups a reduction aims to spread over (at least 2 keeps both cores of a software
    /// rasterizer busy; real GPUs want hundreds).
    pub target_workgroups: u32,
    /// Fewer values than this per thread and a split is not worth its partial result.
    pub min_elements_per_thread: u32,
    /// For (N, C) inputs: channels side by side in one workgroup (a power of two ≤ 256).
    pub lanes_c_2d: u32,
    /// Threads per workgroup of `matmul_vec4`.
    pub matmul_group: u32,
}

impl Tuning {
    /// The defaults, with small matmul workgroups on software rasterizers: one workgroup runs
    /// on one CPU core there, so a 32×128 product (64 threads) needs groups of 16 to use 4.
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => Self {
                matmul_group: 16,
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            target_workgroups: 256,
            min_elements_per_thread: 16,
            lanes_c_2d: 32,
            matmul_group: 64,
        }
    }
}

/// How matmul schedules its work (`shaders/matmul.wgsl` has one kernel for each; both sum in the
/// same order and give identical results).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulSchedule {
    /// Each thread reads its operands from storage into registers: fastest on software
    /// rasterizers, where a barrier costs more than a cached load.
    Registers,
    /// Tiles staged in workgroup memory, shared by the workgroup: the schedule for real GPUs.
    WorkgroupTiles,
}

impl MatmulSchedule {
    /// The schedule measured fastest for a kind of adapter.
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => MatmulSchedule::Registers,
            _ => MatmulSchedule::WorkgroupTiles,
        }
    }
}

/// Errors reported by wgpu callbacks, waiting to be returned by the next call that checks.
#[derive(Default)]
struct Faults {
    error: Option<String>,
    lost: Option<String>,
}

/// A fault for tests: no GPU can be unplugged in CI, so `WGNORM_FAULT_LOSE_DEVICE_AT_SUBMIT=N`
/// destroys the device right after wgnorm's Nth submission, losing it mid-run. Only devices
/// wgnorm opens itself read it.
struct DeviceLossFault {
    at_submit: u64,
    submits: std::sync::atomic::AtomicU64,
}

impl DeviceLossFault {
    fn from_env() -> Option<Self> {
        let at_submit = std::env::var("WGNORM_FAULT_LOSE_DEVICE_AT_SUBMIT")
            .ok()?
            .parse()
            .ok()?;
        Some(Self {
            at_submit,
            submits: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Counts a submission; true when it is the one after which the device is to be lost.
    fn strikes(&self) -> bool {
        self.submits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
            == self.at_submit
    }
}

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    pipelines: PipelineCache,
    pool: Arc<BufferPool>,
    pending: Mutex<Option<wgpu::CommandEncoder>>,
    faults: Arc<Mutex<Faults>>,
    tuning: Tuning,
    matmul_schedule: Mutex<MatmulSchedule>,
    profile: Mutex<Option<profiler::Window>>,
    /// Held while work is recorded into a host's encoder (`record_into`) and while the pending
    /// encoder is submitted, so that a host's encoder is never submitted by wgnorm.
    host_recording: Mutex<()>,
    /// One f32 bound where a kernel needs a buffer in a slot it will not read (a matmul
    /// without bias), so that the slot's type never depends on another operand's.
    placeholder: GpuBuffer,
    /// Set while recording into a host's encoder: temporaries are then unpooled, because wgnorm
    /// cannot know when the host submits and the pool would reuse them too early.
    for_host: std::sync::atomic::AtomicBool,
    lose_device: Option<DeviceLossFault>,
}

/// The GPU backend. Cloning it gives another handle to the same device.
#[derive(Clone)]
pub struct GpuBackend {
    shared: Arc<Shared>,
}

/// WGSL indexes arrays with u32: refuses, before any dispatch, a tensor with more elements.
pub(crate) fn check_u32_indexable(what: &str, elements: usize) -> Result<()> {
    if elements > u32::MAX as usize {
        return Err(Error::Limit(format!(
            "{what} of {elements} elements exceeds the 2^32 elements a GPU kernel can index"
        )));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GpuBackend {
    /// Opens the best adapter matching `request`, with every limit it offers. wgnorm owns the
    /// device: wgpu errors and device loss are returned as `Error`s by the next call.
    pub fn new(request: &AdapterRequest) -> Result<Self> {
        let instance = device::instance();
        let adapter = device::choose(&instance, request)?;
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
        let backend = Self::on(device, queue, summary, DeviceLossFault::from_env());
        let on_error = Arc::clone(&backend.shared.faults);
        backend
            .shared
            .device
            .on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
                lock(&on_error)
                    .error
                    .get_or_insert_with(|| error.to_string());
            }));
        let on_lost = Arc::clone(&backend.shared.faults);
        backend
            .shared
            .device
            .set_device_lost_callback(move |reason, message| {
                lock(&on_lost)
                    .lost
                    .get_or_insert_with(|| match message.as_str() {
                        "" => format!("{reason:?}"),
                        message => format!("{reason:?}: {message}"),
                    });
            });
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
        lose_device: Option<DeviceLossFault>,
    ) -> Self {
        let max_buffer_size = device.limits().max_buffer_size;
        let placeholder = GpuBuffer::unpooled(
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgnorm placeholder"),
                size: 4,
                usage: STORAGE,
                mapped_at_creation: false,
            }),
            1,
            Dtype::F32,
        );
        Self {
            shared: Arc::new(Shared {
                pipelines: PipelineCache::new(device.clone()),
                pool: Arc::new(BufferPool::new(device.clone(), max_buffer_size)),
                device,
                queue,
                pending: Mutex::new(None),
                faults: Arc::default(),
                tuning: Tuning::for_device(summary.device_type),
                matmul_schedule: Mutex::new(MatmulSchedule::for_device(summary.device_type)),
                summary,
                profile: Mutex::new(None),
                host_recording: Mutex::new(()),
                placeholder,
                for_host: std::sync::atomic::AtomicBool::new(false),
                lose_device,
            }),
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

    /// Runs `record` with `encoder`, the host's, standing in for wgnorm's own pending encoder:
    /// every op it calls is recorded there, and the host decides when to submit. Work wgnorm
    /// recorded before is submitted first, so it runs before the host's.
    pub(crate) fn record_into<R>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        record: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        use std::sync::atomic::Ordering;
        let _host = lock(&self.shared.host_recording);
        self.submit_pending()?;
        let placeholder =
            self.shared
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgnorm placeholder"),
                });
        let host_encoder = std::mem::replace(encoder, placeholder);
        *lock(&self.shared.pending) = Some(host_encoder);
        self.shared.for_host.store(true, Ordering::SeqCst);
        let result = record();
        self.shared.for_host.store(false, Ordering::SeqCst);
        if let Some(host_encoder) = lock(&self.shared.pending).take() {
            *encoder = host_encoder;
        }
        result
    }

    /// The adapter the device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.shared.summary
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.shared.device.limits()
    }

    /// The grid sizes in use.
    pub fn tuning(&self) -> Tuning {
        self.shared.tuning
    }

    /// The matmul kernel in use.
    pub fn matmul_schedule(&self) -> MatmulSchedule {
        *lock(&self.shared.matmul_schedule)
    }

    /// Chooses the matmul kernel for this device (every clone of this backend included).
    pub fn set_matmul_schedule(&self, schedule: MatmulSchedule) {
        *lock(&self.shared.matmul_schedule) = schedule;
    }

    /// The device wgnorm records on (the host's, for `from_device`).
    pub fn device(&self) -> &wgpu::Device {
        &self.shared.device
    }

    /// The queue wgnorm submits to; a host's encoders holding wgnorm work go to this queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.shared.queue
    }

    /// Whether the adapter can time dispatches on the device (`start_profiling`).
    pub fn has_timestamps(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Opens a profiling window: every dispatch recorded from now on has its device time
    /// measured, until `finish_profiling`.
    pub fn start_profiling(&self) -> Result<()> {
        if !self.has_timestamps() {
            return Err(Error::Gpu(format!(
                "{} does not offer timestamp queries",
                self.shared.summary.name
            )));
        }
        *lock(&self.shared.profile) = Some(profiler::Window::new(&self.shared.device));
        Ok(())
    }

    /// Submits everything recorded and blocks until the device has run it.
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Closes the profiling window, waits for its work and returns each dispatch's device time.
    pub fn finish_profiling(&self) -> Result<Profile> {
        let Some(window) = lock(&self.shared.profile).take() else {
            return Err(Error::Gpu("no profiling window is open".to_string()));
        };
        let queries = 2 * window.kernels.len() as u32;
        if queries == 0 {
            return Ok(window.profile(&[], 0.0));
        }
        let resolved = self.alloc(
            2 * queries as usize,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        self.record(|encoder| {
            encoder.resolve_query_set(&window.queries, 0..queries, resolved.raw(), 0);
            Ok(())
        })?;
        let words = self.download_many(&[&resolved])?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&words[0]);
        let period = f64::from(self.shared.queue.get_timestamp_period());
        Ok(window.profile(&ticks, period))
    }

    /// Buffers held by the pool (free or waiting for the next submit).
    pub fn pooled_buffers(&self) -> usize {
        self.shared.pool.pooled_count()
    }

    /// Refuses, naming the limit, a buffer an op binds whole that is larger than the adapter
    /// lets one binding be (ops that split their work along rows do not need this).
    pub(crate) fn check_bindable(&self, what: &str, buffer: &GpuBuffer) -> Result<()> {
        check_u32_indexable(what, buffer.len())?;
        let max = self.limits().max_storage_buffer_binding_size;
        if buffer.byte_len() > max {
            return Err(Error::Limit(format!(
                "{what} of {} bytes exceeds the adapter's max_storage_buffer_binding_size of {max} bytes",
                buffer.byte_len()
            )));
        }
        Ok(())
    }

    /// Returns the first error wgpu reported since the last check, if any.
    fn check(&self) -> Result<()> {
        let mut faults = lock(&self.shared.faults);
        if let Some(lost) = &faults.lost {
            return Err(Error::DeviceLost(lost.clone()));
        }
        match faults.error.take() {
            Some(error) => Err(Error::Gpu(error)),
            None => Ok(()),
        }
    }

    /// `flush` without the host-recording lock, for callers that hold it.
    fn submit_pending(&self) -> Result<()> {
        let mut pending = lock(&self.shared.pending);
        if let Some(encoder) = pending.take() {
            let released = self.shared.pool.take_released();
            self.shared.queue.submit([encoder.finish()]);
            self.shared.pool.reuse(released);
            if self
                .shared
                .lose_device
                .as_ref()
                .is_some_and(DeviceLossFault::strikes)
            {
                self.shared.device.destroy();
            }
        }
        drop(pending);
        self.check()
    }

    /// A buffer for a slot the kernel will not read.
    pub(crate) fn placeholder(&self) -> &GpuBuffer {
        &self.shared.placeholder
    }

    /// Whether the device can run kernels on f16 storage (`Features::SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    fn check_dtype(&self, dtype: Dtype) -> Result<()> {
        if dtype == Dtype::F16 && !self.has_f16() {
            return Err(Error::InvalidArgument(format!(
                "{} was opened without shader-f16, so it cannot store f16 tensors",
                self.shared.summary.name
            )));
        }
        Ok(())
    }

    fn alloc(&self, len: usize, usage: wgpu::BufferUsages) -> Result<GpuBuffer> {
        self.alloc_as(len, Dtype::F32, usage)
    }

    fn alloc_as(&self, len: usize, dtype: Dtype, usage: wgpu::BufferUsages) -> Result<GpuBuffer> {
        self.check()?;
        self.check_dtype(dtype)?;
        let bytes = buffer::words_bytes(len, dtype);
        if self
            .shared
            .for_host
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(GpuBuffer::unpooled(
                self.shared.pool.create(bytes, usage)?,
                len,
                dtype,
            ));
        }
        let raw = self.shared.pool.acquire(bytes, usage)?;
        Ok(GpuBuffer::new(
            raw,
            len,
            dtype,
            Arc::clone(&self.shared.pool),
        ))
    }

    /// Copies u32 words (indices, packed bytes) to the device.
    pub fn upload_words(&self, data: &[u32]) -> Result<GpuBuffer> {
        self.upload_pod(data)
    }

    /// Copies 4-byte values to a new storage buffer.
    fn upload_pod<T: bytemuck::Pod>(&self, data: &[T]) -> Result<GpuBuffer> {
        const { assert!(std::mem::size_of::<T>() == 4) };
        let buffer = self.alloc(data.len(), STORAGE)?;
        if !data.is_empty() {
            self.shared
                .queue
                .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(data));
        }
        Ok(buffer)
    }

    /// Records into the pending encoder; it is submitted by `flush`.
    pub(crate) fn record<R>(
        &self,
        f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<R>,
    ) -> Result<R> {
        self.check()?;
        let mut pending = lock(&self.shared.pending);
        let encoder = pending.get_or_insert_with(|| {
            self.shared
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgnorm"),
                })
        });
        f(encoder)
    }

    /// Records one dispatch of `kernel` with `params` in slot 0.
    pub(crate) fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        self.dispatch_specialized(encoder, kernel, &[], params, bindings, groups)
    }

    /// `dispatch` of the pipeline of `kernel` specialized with `constants`.
    pub(crate) fn dispatch_specialized(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        constants: Constants,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self
            .shared
            .device
            .limits()
            .max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit(format!(
                "{} needs {groups:?} workgroups, beyond the adapter's \
                 max_compute_workgroups_per_dimension of {max}",
                kernel.entry_point()
            )));
        }
        let storage = pipeline::Storage::of(kernel, bindings)?;
        let pipeline = self.shared.pipelines.get(kernel, storage, constants)?;
        let bytes = bytemuck::bytes_of(params);
        let uniform = self.alloc(bytes.len().div_ceil(4), UNIFORM)?;
        self.shared.queue.write_buffer(uniform.raw(), 0, bytes);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: uniform.raw(),
                offset: 0,
                size: wgpu::BufferSize::new(bytes.len() as u64),
            }),
        }];
        entries.extend(bindings.iter().map(|b| wgpu::BindGroupEntry {
            binding: b.slot as u32,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: b.buffer.raw(),
                offset: (b.offset * b.buffer.dtype().size()) as u64,
                size: wgpu::BufferSize::new(buffer::words_bytes(b.len.max(1), b.buffer.dtype())),
            }),
        }));
        let bind_group = self
            .shared
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry_point()),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut profile = lock(&self.shared.profile);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel.entry_point()),
            timestamp_writes: profile.as_mut().and_then(|window| window.next(kernel)),
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }

    /// Dispatches one thread per element over `elements`, folding the grid into two
    /// dimensions when one would exceed the workgroup-count limit.
    pub(crate) fn dispatch_elementwise(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        elements: usize,
    ) -> Result<()> {
        self.dispatch_threads(encoder, kernel, &[], WORKGROUP, params, bindings, elements)
    }

    /// Dispatches `threads` threads in workgroups of `group`, folded into two dimensions when
    /// one would exceed the workgroup-count limit (the kernel numbers its thread
    /// `id.x + id.y · num_workgroups.x · group`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dispatch_threads(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        constants: Constants,
        group: u32,
        params: &impl bytemuck::Pod,
        bindings: &[Binding],
        threads: usize,
    ) -> Result<()> {
        let max = self
            .shared
            .device
            .limits()
            .max_compute_workgroups_per_dimension as usize;
        let workgroups = threads.div_ceil(group as usize).max(1);
        let x = workgroups.min(max);
        let y = workgroups.div_ceil(x);
        self.dispatch_specialized(
            encoder,
            kernel,
            constants,
            params,
            bindings,
            [x as u32, y as u32, 1],
        )
    }

    /// Copies several buffers back in one submission and waits for them.
    pub fn download_many(&self, buffers: &[&GpuBuffer]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(buffers))
    }

    /// Starts copying `buffers` to the host; the future resolves once the GPU has finished and
    /// the data is mapped. Only this call's `device.poll` blocks, and only once all is recorded.
    pub async fn read(&self, buffers: &[&GpuBuffer]) -> Result<Vec<Vec<f32>>> {
        let total: u64 = buffers.iter().map(|b| b.byte_len()).sum();
        let staging = self.alloc(total.div_ceil(4) as usize, READBACK)?;
        self.record(|encoder| {
            let mut offset = 0;
            for buffer in buffers {
                encoder.copy_buffer_to_buffer(
                    buffer.raw(),
                    0,
                    staging.raw(),
                    offset,
                    buffer.byte_len(),
                );
                offset += buffer.byte_len();
            }
            Ok(())
        })?;
        self.flush()?;
        let (sender, receiver) = futures::channel::oneshot::channel();
        staging
            .raw()
            .slice(..total.max(4))
            .map_async(wgpu::MapMode::Read, move |result| {
                let _ = sender.send(result);
            });
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()?;
        receiver
            .await
            .map_err(|_| Error::Gpu("readback was cancelled".to_string()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let values = {
            let view = staging
                .raw()
                .slice(..total.max(4))
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
            let mut start = 0;
            buffers
                .iter()
                .map(|b| {
                    let bytes = &view[start as usize..(start + b.byte_len()) as usize];
                    start += b.byte_len();
                    match b.dtype() {
                        Dtype::F32 => bytemuck::cast_slice::<u8, f32>(bytes)[..b.len()].to_vec(),
                        Dtype::F16 => bytemuck::cast_slice::<u8, half::f16>(bytes)[..b.len()]
                            .iter()
                            .map(|v| v.to_f32())
                            .collect(),
                    }
                })
                .collect()
        };
        staging.raw().unmap();
        Ok(values)
    }
}

impl Backend for GpuBackend {
    type Buffer = GpuBuffer;

    fn describe(&self) -> String {
        self.shared.summary.to_string()
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.upload_pod(data)
    }

    fn len_of(&self, buffer: &GpuBuffer) -> usize {
        buffer.len()
    }

    fn filled(&self, len: usize, value: f32) -> Result<GpuBuffer> {
        // Allocating first refuses an oversized request before the host vector is built.
        let buffer = self.alloc(len, STORAGE)?;
        if len > 0 {
            let data = vec![value; len];
            self.shared
                .queue
                .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(&data));
        }
        Ok(buffer)
    }

    fn scratch(&self, len: usize) -> Result<GpuBuffer> {
        self.alloc(len.max(1), STORAGE)
    }

    fn device_buffers(&self) -> Option<usize> {
        Some(self.shared.pool.created_count())
    }

    fn dtype_of(&self, buffer: &GpuBuffer) -> Dtype {
        buffer.dtype()
    }

    fn supports(&self, dtype: Dtype) -> bool {
        self.check_dtype(dtype).is_ok()
    }

    fn upload_as(&self, data: &[f32], dtype: Dtype) -> Result<GpuBuffer> {
        match dtype {
            Dtype::F32 => self.upload(data),
            Dtype::F16 => {
                let buffer = self.alloc_as(data.len(), dtype, STORAGE)?;
                let mut halves: Vec<half::f16> =
                    data.iter().map(|&v| half::f16::from_f32(v)).collect();
                // Queue writes are whole 4-byte words.
                halves.resize(buffer.byte_len() as usize / 2, half::f16::ZERO);
                self.shared
                    .queue
                    .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(&halves));
                Ok(buffer)
            }
        }
    }

    fn scratch_as(&self, len: usize, dtype: Dtype) -> Result<GpuBuffer> {
        self.alloc_as(len.max(1), dtype, STORAGE)
    }

    /// Submits everything recorded so far. The pending lock is held until the submission is
    /// made: another thread's flush then returns only once work it may depend on (recorded by
    /// anyone into the shared encoder) has really been submitted.
    fn flush(&self) -> Result<()> {
        let _host = lock(&self.shared.host_recording);
        self.submit_pending()
    }

    fn download(&self, buffer: &GpuBuffer) -> Result<Vec<f32>> {
        let mut all = self.download_many(&[buffer])?;
        Ok(all.pop().unwrap_or_default())
    }
}
