// BatchNorm over x of shape (N, C, S), row-major; S = 1 for (N, C). Per channel c the
// m = N·S elements are x[(n·C + c)·S + s].
//
//   mean = Σx/m, var = Σ(x − mean)²/m (biased), invstd = 1/sqrt(var + eps)
//   train:    y = γ·x̂ + β, x̂ = ((x − K) − μ_K)·invstd, K = a sample of the channel, μ_K = mean − K
//   eval:     y = γ·(x − running_mean)/sqrt(running_var + eps) + β
//   running:  r_mean ← (1 − momentum)·r_mean + momentum·mean
//             r_var  ← (1 − momentum)·r_var  + momentum·var·m/(m − 1)   (·1: biased, as Keras)
//   backward: dβ = Σdy, dγ = Σdy·x̂, dx = γ·invstd/m·(m·dy − dβ − x̂·dγ)
//
// Why the shift K: reducing x − K instead of x keeps the f32 sums at the scale of the spread, not
// of the mean, and keeping K and μ_K apart means x − mean is never formed from a mean rounded to
// f32 (at mean 1e4 that rounding alone is 5% of a 1e-2 spread).
//
// x, dy and out are stored as X_T, DY_T and OUT_T, each f32 or f16 (defined ahead of this file
// when the module is built); every value is widened to f32 when loaded, so all arithmetic and
// accumulation is f32.
//
// A reduction runs in two passes because WGSL has no grid-wide barrier: `*_partial` reduces one
// split of the m elements per workgroup row, `*_finalize` merges the splits. With a single split
// the partial pass finalizes in place and the second pass is skipped.

// Planes of the per-channel `stats` buffer: stats[plane·C + c]. Mirrored in src/ops/batchnorm/mod.rs.
const STAT_MEAN: u32 = 0u;
const STAT_VAR: u32 = 1u;
const STAT_INVSTD: u32 = 2u;
const STAT_SHIFT: u32 = 3u;
const STAT_SHIFTED_MEAN: u32 = 4u;

// Floats per (split, channel) slot of `partials`: shift, count, shifted mean, M2 for the
// statistics; Σdy, Σdy·(x − mean) for the backward pass.
const PARTIAL_STRIDE: u32 = 4u;

struct Params {
    // Rows (samples) of x bound to this dispatch; large tensors are dispatched in row chunks.
    rows: u32,
    channels: u32,
    spatial: u32,
    // Channels handled side by side by one workgroup; WORKGROUP / lanes_c threads per channel.
    lanes_c: u32,
    // Elements of one channel handled by one split (workgroup row of the grid).
    split_len: u32,
    // Slot of this dispatch's first split in `partials`, and the number of slots in all.
    split_base: u32,
    total_splits: u32,
    // m/(m − 1) for an unbiased running variance (PyTorch), 1 for a biased one (Keras).
    running_var_factor: f32,
    // Elements per channel over the whole tensor, m.
    count: f32,
    eps: f32,
    momentum: f32,
    // Keeps the struct a multiple of 16 bytes, as uniform buffers require.
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<X_T>;
@group(0) @binding(2) var<storage, read> dy: array<DY_T>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
@group(0) @binding(10) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbeta: array<f32>;

// Count, mean and sum of squared deviations of a set of values, all relative to one shift.
struct Moments {
    n: f32,
    mean: f32,
    m2: f32,
}

// Chan et al.'s merge of two disjoint sets; either may be empty.
fn merge(a: Moments, b: Moments) -> Moments {
    let n = a.n + b.n;
    let w = select(0.0, b.n / max(n, 1.0), n > 0.0);
    let delta = b.mean - a.mean;
    return Moments(n, a.mean + delta * w, a.m2 + b.m2 + delta * delta * a.n * w);
}

fn element_index(j: u32, c: u32) -> u32 {
    let n = j / p.spatial;
    let s = j - n * p.spatial;
    return (n * p.channels + c) * p.spatial + s;
}

var<workgroup> tree_n: array<f32, WORKGROUP>;
var<workgroup> tree_a: array<f32, WORKGROUP>;
var<workgroup> tree_b: array<f32, WORKGROUP>;

struct Lane {
    channel: u32,
    // Position among the threads that share this channel.
    row_lane: u32,
    // This workgroup's range [begin, end) of the channel's elements within the bound rows.
    begin: u32,
    end: u32,
}

fn lane_of(local: u32, group: vec3<u32>) -> Lane {
    let lanes_c = p.lanes_c;
    let chunk_len = p.rows * p.spatial;
    let begin = min(group.y * p.split_len, chunk_len);
    return Lane(
        group.x * lanes_c + local % lanes_c,
        local / lanes_c,
        begin,
        min(begin + p.split_len, chunk_len),
    );
}

// Threads per channel. Barrier loops are bounded by this uniform value alone.
fn row_lanes() -> u32 {
    return WORKGROUP / p.lanes_c;
}

// Tree-reduces the Moments of the threads sharing a channel; thread row_lane 0 ends with the sum.
fn reduce_moments(local: u32, row_lane: u32) {
    for (var stride = row_lanes() / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if row_lane < stride {
            let other = local + stride * p.lanes_c;
            let m = merge(Moments(tree_n[local], tree_a[local], tree_b[local]),
                          Moments(tree_n[other], tree_a[other], tree_b[other]));
            tree_n[local] = m.n;
            tree_a[local] = m.mean;
            tree_b[local] = m.m2;
        }
    }
}

// Tree-sums (tree_a, tree_b) over the threads sharing a channel.
fn reduce_sums(local: u32, row_lane: u32) {
    for (var stride = row_lanes() / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if row_lane < stride {
            let other = local + stride * p.lanes_c;
            tree_a[local] += tree_a[other];
            tree_b[local] += tree_b[other];
        }
    }
}

fn finalize_stats(c: u32, shift: f32, total: Moments) {
    let m = p.count;
    let variance = total.m2 / m;
    let mean = shift + total.mean;
    let C = p.channels;
    stats[STAT_MEAN * C + c] = mean;
    stats[STAT_VAR * C + c] = variance;
    stats[STAT_INVSTD * C + c] = 1.0 / sqrt(variance + p.eps);
    stats[STAT_SHIFT * C + c] = shift;
    stats[STAT_SHIFTED_MEAN * C + c] = total.mean;
    let keep = 1.0 - p.momentum;
    running_mean[c] = keep * running_mean[c] + p.momentum * mean;
    running_var[c] = keep * running_var[c] + p.momentum * variance * p.running_var_factor;
}

@compute @workgroup_size(WORKGROUP)
fn stats_partial(@builtin(local_invocation_index) local: u32,
                 @builtin(workgroup_id) group: vec3<u32>) {
    let lane = lane_of(local, group);
    let c = lane.channel;
    var acc = Moments(0.0, 0.0, 0.0);
    var shift = 0.0;
    if c < p.channels && lane.begin < lane.end {
        shift = f32(x[element_index(lane.begin, c)]);
        for (var j = lane.begin + lane.row_lane; j < lane.end; j += row_lanes()) {
            let d = f32(x[element_index(j, c)]) - shift;
            acc.n += 1.0;
            let delta = d - acc.mean;
            acc.mean += delta / acc.n;
            acc.m2 += delta * (d - acc.mean);
        }
    }
    tree_n[local] = acc.n;
    tree_a[local] = acc.mean;
    tree_b[local] = acc.m2;
    reduce_moments(local, lane.row_lane);
    if lane.row_lane == 0u && c < p.channels {
        let total = Moments(tree_n[local], tree_a[local], tree_b[local]);
        if p.total_splits == 1u {
            finalize_stats(c, shift, total);
        } else {
            let slot = ((p.split_base + group.y) * p.channels + c) * PARTIAL_STRIDE;
            partials[slot] = shift;
            partials[slot + 1u] = total.n;
            partials[slot + 2u] = total.mean;
            partials[slot + 3u] = total.m2;
        }
    }
}

@compute @workgroup_size(FINALIZE_WORKGROUP)
fn stats_finalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    // Every split is rebased onto the shift of the first one that saw data.
    var shift = 0.0;
    var total = Moments(0.0, 0.0, 0.0);
    for (var split = 0u; split < p.total_splits; split++) {
        let slot = (split * p.channels + c) * PARTIAL_STRIDE;
        let part = Moments(partials[slot + 1u], partials[slot + 2u], partials[slot + 3u]);
        if part.n == 0.0 {
            continue;
        }
        if total.n == 0.0 {
            shift = partials[slot];
        }
        let rebased = Moments(part.n, (partials[slot] - shift) + part.mean, part.m2);
        total = merge(total, rebased);
    }
    finalize_stats(c, shift, total);
}

// Eval mode normalizes with the running statistics: they become the stats planes, with the
// running mean as the shift so that `normalize` has one path.
@compute @workgroup_size(FINALIZE_WORKGROUP)
fn eval_stats(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    let C = p.channels;
    stats[STAT_MEAN * C + c] = running_mean[c];
    stats[STAT_VAR * C + c] = running_var[c];
    stats[STAT_INVSTD * C + c] = 1.0 / sqrt(running_var[c] + p.eps);
    stats[STAT_SHIFT * C + c] = running_mean[c];
    stats[STAT_SHIFTED_MEAN * C + c] = 0.0;
}

fn centered(value: f32, c: u32) -> f32 {
    let C = p.channels;
    return (value - stats[STAT_SHIFT * C + c]) - stats[STAT_SHIFTED_MEAN * C + c];
}

@compute @workgroup_size(WORKGROUP)
fn normalize(@builtin(global_invocation_id) id: vec3<u32>,
             @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.rows * p.channels * p.spatial {
        return;
    }
    let c = (i / p.spatial) % p.channels;
    out[i] = OUT_T(gamma[c] * centered(f32(x[i]), c) * stats[STAT_INVSTD * p.channels + c] + beta[c]);
}

@compute @workgroup_size(WORKGROUP)
fn backward_partial(@builtin(local_invocation_index) local: u32,
                    @builtin(workgroup_id) group: vec3<u32>) {
    let lane = lane_of(local, group);
    let c = lane.channel;
    var sum_dy = 0.0;
    var sum_dy_xc = 0.0;
    if c < p.channels {
        for (var j = lane.begin + lane.row_lane; j < lane.end; j += row_lanes()) {
            let i = element_index(j, c);
            let g = f32(dy[i]);
            sum_dy += g;
            sum_dy_xc += g * centered(f32(x[i]), c);
        }
    }
    tree_a[local] = sum_dy;
    tree_b[local] = sum_dy_xc;
    reduce_sums(local, lane.row_lane);
    if lane.row_lane == 0u && c < p.channels {
        if p.total_splits == 1u {
            dbeta[c] = tree_a[local];
            dgamma[c] = tree_b[local] * stats[STAT_INVSTD * p.channels + c];
        } else {
            let slot = ((p.split_base + group.y) * p.channels + c) * PARTIAL_STRIDE;
            partials[slot] = tree_a[local];
            partials[slot + 1u] = tree_b[local];
        }
    }
}

@compute @workgroup_size(FINALIZE_WORKGROUP)
fn backward_finalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    var sum_dy = 0.0;
    var sum_dy_xc = 0.0;
    for (var split = 0u; split < p.total_splits; split++) {
        let slot = (split * p.channels + c) * PARTIAL_STRIDE;
        sum_dy += partials[slot];
        sum_dy_xc += partials[slot + 1u];
    }
    dbeta[c] = sum_dy;
    dgamma[c] = sum_dy_xc * stats[STAT_INVSTD * p.channels + c];
}

@compute @workgroup_size(WORKGROUP)
fn backward_dx(@builtin(global_invocation_id) id: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.rows * p.channels * p.spatial {
        return;
    }
    let C = p.channels;
    let c = (i / p.spatial) % C;
    let invstd = stats[STAT_INVSTD * C + c];
    let xhat = centered(f32(x[i]), c) * invstd;
    let inv_m = 1.0 / p.count;
    out[i] = OUT_T(gamma[c] * invstd * (f32(dy[i]) - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m));
}
