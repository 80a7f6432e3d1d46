// The per-channel affine of GroupNorm (and so of LayerNorm and InstanceNorm) on channels-last x
// of shape (rows, C), rows = N·P for N samples of P positions, and its gradients. GroupNorm's
// statistics and x̂ come from shaders/batchnorm.wgsl, which sees x as BatchNorm over
// (N·P, G, C/G) with one ghost batch per sample and no scale of its own (`GROUP_NORM`,
// src/ops/groupnorm/mod.rs): the scale and shift are per channel c here where that view's
// would be per group.
//
//   apply:  out = γ[c]·x + β[c]        (β left out with `shifted` = 0: dy·γ for the backward pass)
//   grads:  dγ[c] = Σ_rows dy·x̂,  dβ[c] = Σ_rows dy,  x̂ = ((x − K) − μ_K)·invstd
//
// where K, μ_K and invstd are the BatchNorm statistics of the row's sample and the channel's
// group, so x̂ is formed exactly as the normalization formed it. Each split of rows sums its
// channels in f32 (`grads_partial`); `grads_finalize` adds the splits, unless there is only one.
//
// x, dy and out are stored as X_T, DY_T and OUT_T (f32 or f16, defined ahead of this file);
// values are computed in f32.

// Planes of the BatchNorm statistics, mirrored from shaders/batchnorm.wgsl (a test checks both
// against src/ops/batchnorm/mod.rs).
const STAT_INVSTD: u32 = 2u;
const STAT_SHIFT: u32 = 3u;
const STAT_SHIFTED_MEAN: u32 = 4u;
const STAT_PLANES: u32 = 5u;

struct AffineParams {
    rows: u32,
    channels: u32,
    // Rows per sample (the statistics change from one sample to the next), channels per group
    // and groups.
    positions: u32,
    group_channels: u32,
    groups: u32,
    // Rows summed by one thread of `grads_partial`, and the number of such splits.
    split_rows: u32,
    splits: u32,
    // 1: apply adds β; 0: it scales only and never reads β, whose slot then holds a placeholder
    // of one value.
    shifted: u32,
}

@group(0) @binding(0) var<uniform> p: AffineParams;
@group(0) @binding(1) var<storage, read> x: array<X_T>;
@group(0) @binding(2) var<storage, read> dy: array<DY_T>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
@group(0) @binding(10) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(WORKGROUP)
fn apply(@builtin(global_invocation_id) id: vec3<u32>,
         @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.rows * p.channels {
        let c = i % p.channels;
        // A branch, not a select: a select would load beta[c] either way.
        var shift = 0.0;
        if p.shifted == 1u {
            shift = beta[c];
        }
        out[i] = OUT_T(gamma[c] * f32(x[i]) + shift);
    }
}

// One thread per (split, channel), neighbouring threads on neighbouring channels so that their
// loads of a row are contiguous.
@compute @workgroup_size(FINALIZE_WORKGROUP)
fn grads_partial(@builtin(global_invocation_id) id: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, FINALIZE_WORKGROUP);
    let c = i % p.channels;
    let split = i / p.channels;
    if split >= p.splits {
        return;
    }
    let group = c / p.group_channels;
    let begin = split * p.split_rows;
    let end = min(begin + p.split_rows, p.rows);
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    // The statistics of the sample the rows are in, reloaded when a row starts the next one.
    var sample = 0xffffffffu;
    var shift = 0.0;
    var shifted_mean = 0.0;
    var invstd = 0.0;
    for (var row = begin; row < end; row++) {
        let row_sample = row / p.positions;
        if row_sample != sample {
            sample = row_sample;
            let first = sample * STAT_PLANES * p.groups + group;
            shift = stats[first + STAT_SHIFT * p.groups];
            shifted_mean = stats[first + STAT_SHIFTED_MEAN * p.groups];
            invstd = stats[first + STAT_INVSTD * p.groups];
        }
        let e = row * p.channels + c;
        let grad = f32(dy[e]);
        sum_dy += grad;
        sum_dy_xhat += grad * (((f32(x[e]) - shift) - shifted_mean) * invstd);
    }
    if p.splits == 1u {
        dgamma[c] = sum_dy_xhat;
        dbeta[c] = sum_dy;
    } else {
        let slot = (split * p.channels + c) * 2u;
        partials[slot] = sum_dy;
        partials[slot + 1u] = sum_dy_xhat;
    }
}

@compute @workgroup_size(FINALIZE_WORKGROUP)
fn grads_finalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var split = 0u; split < p.splits; split++) {
        let slot = (split * p.channels + c) * 2u;
        sum_dy += partials[slot];
        sum_dy_xhat += partials[slot + 1u];
    }
    dgamma[c] = sum_dy_xhat;
    dbeta[c] = sum_dy;
}
