//! Bind groups, and the uniform buffer each one binds, kept from one step to the next. A
//! training step dispatches the same kernels on the same pooled buffers every time, so once
//! the first step has run, a dispatch creates nothing: it finds its bind group and writes its
//! parameters into that group's own uniform buffer, only where they differ from the last ones
//! written there (most of a step's parameters are the same every step).
//!
//! A queue write lands before the whole submission it precedes, so a cached group can serve
//! several dispatches of one submission only with the same parameters. The cache keeps a few
//! copies of each group, each with its own uniform: a dispatch takes the copy that already holds
//! its parameters, else one that this submission has not used, else a new copy. Several
//! training steps recorded into one submission thus settle on one copy per step for the
//! kernels whose parameters change from step to step (the batch's offset, the dropout keys,
//! Adam's step size) and share one for all the others. Work recorded for a host (wgnorm cannot
//! know when the host submits) and work on buffers the pool does not own (a cached group would
//! keep them alive) get a bind group and a uniform of their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::buffer::words_bytes;
use super::kernels::{Binding, Kernel};
use super::{GpuBackend, GpuBuffer, UNIFORM, lock};
use crate::Result;

/// Cached bind groups past this many are dropped all at once (a run that keeps binding new
/// buffers, such as many batch sizes in one process, would otherwise grow without bound).
const CAPACITY: usize = 4096;

/// Copies of one bind group at most; past them a dispatch gets a group of its own.
const COPIES: usize = 64;

/// A binding in bytes: slot, buffer, offset, size.
type Range = (u32, wgpu::Buffer, u64, u64);

/// The pipeline and every storage range a bind group binds.
#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    pipeline: wgpu::ComputePipeline,
    ranges: Vec<Range>,
}

struct CachedGroup {
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    /// What the uniform holds.
    params: Vec<u8>,
    /// The submission whose commands last used it.
    used_in: u64,
}

/// What the GPU backend has created and done, for checking that a steady-state step creates
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GpuCounters {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Submissions made to the queue.
    pub submissions: u64,
    /// Bind groups created.
    pub bind_groups: u64,
    /// Device buffers created (storage, uniform, staging), by the pool or for a bind group.
    pub buffers: u64,
    /// Uniform parameters written to the queue (a cached group whose parameters did not change
    /// writes none).
    pub uniform_writes: u64,
}

#[derive(Default)]
pub(super) struct BindGroupCache {
    groups: Mutex<HashMap<GroupKey, Vec<CachedGroup>>>,
    /// Submissions made so far: the serial of the one being recorded.
    pub(super) submissions: AtomicU64,
    pub(super) dispatches: AtomicU64,
    bind_groups: AtomicU64,
    uniforms: AtomicU64,
    uniform_writes: AtomicU64,
}

impl BindGroupCache {
    /// Buffers created for cached groups.
    pub(super) fn uniforms_created(&self) -> u64 {
        self.uniforms.load(Ordering::Relaxed)
    }

    pub(super) fn bind_groups_created(&self) -> u64 {
        self.bind_groups.load(Ordering::Relaxed)
    }
}

fn range(binding: &Binding) -> Range {
    let dtype = binding.buffer.dtype();
    (
        binding.slot as u32,
        binding.buffer.raw().clone(),
        binding.buffer.byte_offset() + (binding.offset * dtype.size()) as u64,
        words_bytes(binding.len.max(1), dtype),
    )
}

impl GpuBackend {
    /// The bind group for one dispatch of `pipeline` with `params` in slot 0, and the pooled
    /// uniform it binds when it is not a cached group's own (to keep until the dispatch is
    /// recorded). The caller holds the pending encoder's lock, so the submission serial cannot
    /// change meanwhile.
    pub(super) fn bind_group(
        &self,
        kernel: Kernel,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        bindings: &[Binding],
    ) -> Result<(wgpu::BindGroup, Option<GpuBuffer>)> {
        let cache = &self.shared.bind_groups;
        cache.dispatches.fetch_add(1, Ordering::Relaxed);
        let cacheable = !self.records_for_host()
            && (bindings.iter()).all(|b| b.buffer.is_pooled() || self.is_placeholder(b.buffer));
        let ranges: Vec<Range> = bindings.iter().map(range).collect();
        if !cacheable {
            return self.fresh_bind_group(kernel, pipeline, params, &ranges);
        }
        let serial = cache.submissions.load(Ordering::SeqCst);
        let key = GroupKey {
            pipeline: pipeline.clone(),
            ranges,
        };
        let mut groups = lock(&cache.groups);
        if !groups.contains_key(&key) && groups.len() >= CAPACITY {
            groups.clear();
        }
        let copies = groups.entry(key).or_default();
        let holding = copies.iter().position(|copy| copy.params == params);
        let free = || copies.iter().position(|copy| copy.used_in != serial);
        if let Some(index) = holding.or_else(free) {
            let copy = &mut copies[index];
            copy.used_in = serial;
            if copy.params != params {
                self.write_uniform(&copy.uniform, params);
                copy.params.clear();
                copy.params.extend_from_slice(params);
            }
            return Ok((copy.bind_group.clone(), None));
        }
        if copies.len() >= COPIES {
            let ranges: Vec<Range> = bindings.iter().map(range).collect();
            drop(groups);
            return self.fresh_bind_group(kernel, pipeline, params, &ranges);
        }
        let uniform = self.shared.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(kernel.entry_point()),
            size: params.len() as u64,
            usage: UNIFORM,
            mapped_at_creation: false,
        });
        cache.uniforms.fetch_add(1, Ordering::Relaxed);
        self.write_uniform(&uniform, params);
        let ranges: Vec<Range> = bindings.iter().map(range).collect();
        let bind_group = self.create_bind_group(kernel, pipeline, &uniform, params, &ranges);
        copies.push(CachedGroup {
            bind_group: bind_group.clone(),
            uniform,
            params: params.to_vec(),
            used_in: serial,
        });
        Ok((bind_group, None))
    }

    /// A bind group of its own, binding a pooled uniform.
    fn fresh_bind_group(
        &self,
        kernel: Kernel,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        ranges: &[Range],
    ) -> Result<(wgpu::BindGroup, Option<GpuBuffer>)> {
        let uniform = self.alloc(params.len().div_ceil(4), UNIFORM)?;
        self.write_uniform(uniform.raw(), params);
        let bind_group = self.create_bind_group(kernel, pipeline, uniform.raw(), params, ranges);
        Ok((bind_group, Some(uniform)))
    }

    fn create_bind_group(
        &self,
        kernel: Kernel,
        pipeline: &wgpu::ComputePipeline,
        uniform: &wgpu::Buffer,
        params: &[u8],
        ranges: &[Range],
    ) -> wgpu::BindGroup {
        self.shared
            .bind_groups
            .bind_groups
            .fetch_add(1, Ordering::Relaxed);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: uniform,
                offset: 0,
                size: wgpu::BufferSize::new(params.len() as u64),
            }),
        }];
        entries.extend(
            ranges
                .iter()
                .map(|(slot, buffer, offset, size)| wgpu::BindGroupEntry {
                    binding: *slot,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: wgpu::BufferSize::new(*size),
                    }),
                }),
        );
        self.shared
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry_point()),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
    }

    fn write_uniform(&self, uniform: &wgpu::Buffer, params: &[u8]) {
        let cache = &self.shared.bind_groups;
        cache.uniform_writes.fetch_add(1, Ordering::Relaxed);
        self.shared.queue.write_buffer(uniform, 0, params);
    }

    /// What this device has created and done so far.
    pub fn counters(&self) -> GpuCounters {
        let cache = &self.shared.bind_groups;
        GpuCounters {
            dispatches: cache.dispatches.load(Ordering::Relaxed),
            submissions: cache.submissions.load(Ordering::Relaxed),
            bind_groups: cache.bind_groups_created(),
            buffers: self.shared.pool.created_count() as u64 + cache.uniforms_created(),
            uniform_writes: cache.uniform_writes.load(Ordering::Relaxed),
        }
    }
}
