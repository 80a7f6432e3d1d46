//! Grid sizes and the matmul schedule: parameters per adapter class, so that one set of
//! kernels runs well on a software rasterizer and on a hardware GPU.

/// Sizes that shape the kernels' grids; they are parameters so each GPU can be tuned.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Workgroups a reduction aims to spread over (at least 2 keeps both cores of a software
    /// rasterizer busy; real GPUs want hundreds).
    pub target_workgroups: u32,
    /// Fewer values than this per thread and a split is not worth its partial result.
    pub min_elements_per_thread: u32,
    /// A BatchNorm input of at most this many bytes is reduced in one split per channel group,
    /// so each pass is one dispatch: below it, the two dispatches a split adds cost more than
    /// the parallelism it buys (about 44 µs each on a software rasterizer, where 1 MiB streams
    /// in about 0.2 ms).
    pub single_split_bytes: usize,
    /// For (N, C) inputs: channels side by side in one workgroup (a power of two ≤ 256).
    pub lanes_c_2d: u32,
    /// For inputs with positions (S > 1): channels side by side in one workgroup (a power of
    /// two ≤ 256). 1 on hardware GPUs, whose threads then read one channel's runs together; more
    /// on software rasterizers, where fewer threads per channel shorten the tree merge.
    pub lanes_c_spatial: u32,
    /// How the threads of a BatchNorm reduction share their split.
    pub reduction_walk: ReductionWalk,
    /// At most this many ghost batches of an input small enough for one split are finished one
    /// after another by the same workgroups (one dispatch each way); more get workgroups of
    /// their own. Measured on lavapipe: 4 or 16 ghost batches ran faster in one workgroup, 128
    /// slower (33 against 28 ms per `bn` step at batch 1024).
    pub looped_ghost_batches: usize,
    /// Threads per workgroup of `matmul_vec4`.
    pub matmul_group: u32,
    /// Channels one thread of the max-pooling backward takes at its position: all of them on
    /// software rasterizers, where a thread's index arithmetic costs more than its loads.
    pub pool_channels_per_thread: usize,
    /// Training steps recorded into one submission, by default
    /// (`GpuBackend::set_steps_per_submission` overrides it). A software rasterizer runs a submission's
    /// work as it is submitted, so there batching steps only grows the working set (the reference
    /// epoch on lavapipe took about a fifth longer at 8); a hardware GPU runs one submission while
    /// the host records the next.
    pub steps_per_submission: u64,
}

impl Tuning {
    /// The defaults, adjusted for software rasterizers, where one workgroup runs on one CPU
    /// core: small matmul workgroups, so that a 32×128 product (16 threads of 16×16 outputs)
    /// uses 2 cores with groups of 8; and BatchNorm workgroups of fewer, longer walks, since
    /// there a workgroup's fixed cost (its barriers and tree merge) is about that of reading
    /// 200 KB.
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => Self {
                min_elements_per_thread: 64,
                lanes_c_spatial: 8,
                reduction_walk: ReductionWalk::Contiguous,
                matmul_group: 8,
                pool_channels_per_thread: 64,
                steps_per_submission: 1,
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
            single_split_bytes: 1 << 20,
            lanes_c_2d: 32,
            lanes_c_spatial: 1,
            reduction_walk: ReductionWalk::Interleaved,
            looped_ghost_batches: 16,
            matmul_group: 64,
            pool_channels_per_thread: 1,
            steps_per_submission: 8,
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

/// How the threads of a BatchNorm reduction share their workgroup's split of a channel group
/// (`CONTIGUOUS_WALK` in `shaders/batchnorm.wgsl`; both sum in a fixed order, not the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionWalk {
    /// Thread r takes every n-th vector from r on: neighbouring threads read neighbouring
    /// memory at the same time, which hardware GPUs coalesce.
    Interleaved,
    /// Each thread takes one contiguous block and reads it in order: software rasterizers run
    /// a workgroup's threads one SIMD batch after another, and the interleaved order gives each
    /// batch short strided runs the CPU does not prefetch.
    Contiguous,
}
