// BatchNorm over x of shape (N, C, S), row-major; S = 1 for (N, C). Per channel c the
// m = N·S elements are x[(n·C + c)·S + s]. With ghost batches, x is viewed as (G, N/G, C, S)
// and each (ghost batch, channel) has its own statistics over m = (N/G)·S elements; the running
// statistics take the mean of the G ghost batches' statistics, once.
//
//   mean = Σx/m, var = Σ(x − mean)²/m (biased), invstd = 1/sqrt(var + eps)
//   train:    y = γ·x̂ + β, x̂ = ((x − K) − μ_K)·invstd, K = a sample of the channel, μ_K = mean − K
//   eval:     y = γ·(x − running_mean)/sqrt(running_var + eps) + β
//   running:  r_mean ← (1 − momentum)·r_mean + momentum·mean
//             r_var  ← (1 − momentum)·r_var  + momentum·var·m/(m − 1)   (·1: biased, as Keras)
//   backward: dβ = Σdy, dγ = Σdy·x̂, dx = γ·invstd/m·(m·dy − dβ − x̂·dγ)
//
// Optionally a ReLU, then dropout, in the same pass (`ACTIVATION`): the forward writes
// a = keep·scale·max(y, 0) as shaders/activation.wgsl would, and the backward takes the gradient
// of a and the saved a, forming dy = dA·scale where a > 0 and 0 elsewhere (a > 0 exactly where
// the element was kept and y > 0), as PyTorch's ReLU backward gates by its output.
//
// Why the shift K: reducing x − K instead of x keeps the f32 sums at the scale of the spread, not
// of the mean, and keeping K and μ_K apart means x − mean is never formed from a mean rounded to
// f32 (at mean 1e4 that rounding alone is 5% of a 1e-2 spread).
//
// x, dy and out are stored as X_T, DY_T and OUT_T, each f32 or f16 (defined ahead of this file
// when the module is built); every value is widened to f32 when loaded, so all arithmetic and
// accumulation is f32.
//
// How the kernels walk x: in vectors of VECTOR values (X_V, F_V: four where the layout allows,
// else one). A vector holds either VECTOR neighbouring channels of one sample (S = 1,
// `lanes_are_channels`) or VECTOR neighbouring positions of one channel. The channels one
// vector spans form a channel group g; within the bound rows its values are rows × run_len
// vectors, vector (n, s) at (n·groups + g)·run_len + s. A workgroup takes `lanes_c` neighbouring
// groups and one split of their vectors, walked by WORKGROUP / lanes_c threads each, so every
// thread keeps one group's per-channel values in registers and no element index is divided.
// Those threads share the split in one of two orders (`CONTIGUOUS_WALK`).
//
// Statistics: each thread sums d = x − K and d² from one shift K shared by its workgroup, turns
// them into a mean and M2, and the threads and splits are merged by Chan's formula. WGSL has no
// grid-wide barrier, so with several splits `*_partial` writes one result per split and
// `*_finalize` merges them, and a third pass applies them. When one split covers the batch (or
// each ghost batch, where nothing is summed over them), one dispatch finishes the channel and
// applies the result: `stats_partial` itself, and `backward_fused` for the backward pass. Ghost batches are the third dimension of the grid:
// each has its own splits (slots of `partials`), merged by `*_finalize` one ghost batch after
// another; where one split covers each, a workgroup may instead finish a run of them one after
// another (`GHOST_LOOP`).
//
// GroupNorm, LayerNorm and InstanceNorm run these same kernels on a view of their input
// (`GROUP_NORM`, src/ops/groupnorm/): x of shape (N, P, C) channels-last is (N·P, G, C/G) here,
// with one ghost batch per sample, so each (ghost batch, channel) statistic is one (sample,
// group) statistic of GroupNorm.

// Planes of the per-channel `stats` buffer: stats[(ghost·STAT_PLANES + plane)·C + c].
// Mirrored in src/ops/batchnorm/mod.rs.
const STAT_MEAN: u32 = 0u;
const STAT_VAR: u32 = 1u;
const STAT_INVSTD: u32 = 2u;
const STAT_SHIFT: u32 = 3u;
const STAT_SHIFTED_MEAN: u32 = 4u;
const STAT_PLANES: u32 = 5u;

// Floats per (split, channel) slot of `partials`: shift, count, shifted mean, M2 for the
// statistics; Σdy, Σdy·(x − mean) for the backward pass, and in the first slot of each ghost
// batch the ghost batch's dβ and dγ (`backward_finalize` for `backward_dx`).
const PARTIAL_STRIDE: u32 = 4u;

// How the threads of a group share their split. False: interleaved, thread r taking vectors
// r, r + row_lanes(), ..., so neighbouring threads read neighbouring memory at the same time,
// which a hardware GPU coalesces. True: a contiguous block per thread, so each thread reads
// memory in order, which is what a CPU rasterizer needs: it runs a workgroup's threads one SIMD
// batch after another, and the interleaved order makes every batch's reads strided, one short
// run per row, which the CPU's prefetchers do not follow.
override CONTIGUOUS_WALK: bool = false;

// Whether a ReLU and dropout follow the normalization (see above). A constant of the pipeline,
// not a parameter, so that kernels without them do not carry their code: a CPU rasterizer runs
// the code of a branch no thread takes, under an empty mask.
override ACTIVATION: bool = false;

// Whether one workgroup finishes several ghost batches one after another (where one split
// covers each). A constant of the pipeline, so that the kernels of every other plan have no
// loop around their barriers, which a CPU rasterizer pays for.
override GHOST_LOOP: bool = false;

// GroupNorm's view (see above): the kernels write x̂ itself (γ = 1 and β = 0, neither read) and
// each ghost batch's statistics, and nothing summed over the ghost batches (no running
// statistics, no dγ or dβ): GroupNorm keeps no running statistics, and its affine and the
// affine's gradients are per channel of x, in shaders/channel_affine.wgsl. Those slots are
// bound to placeholders.
override GROUP_NORM: bool = false;

struct Params {
    // Rows (samples) of each ghost batch bound to this dispatch (all of them without ghost
    // batches); large tensors are dispatched in row chunks.
    rows: u32,
    channels: u32,
    // Channel groups per sample, and vectors of one group per sample (see above).
    groups: u32,
    run_len: u32,
    // 1 when a vector's lanes are neighbouring channels, 0 when they are positions of one.
    lanes_are_channels: u32,
    // Channel groups handled side by side by one workgroup.
    lanes_c: u32,
    // Vectors of one channel group handled by one split (workgroup row of the grid).
    split_len: u32,
    // Slot of this dispatch's first split in `partials` (0 with ghost batches, whose slots
    // follow from their index), and the number of slots in all: 1 where there are no partials,
    // one split covering each ghost batch (or the batch) and finishing it.
    split_base: u32,
    total_splits: u32,
    // m/(m − 1) for an unbiased running variance (PyTorch), 1 for a biased one (Keras).
    running_var_factor: f32,
    // Elements per statistic over the whole tensor, m: per channel, or per ghost batch and
    // channel.
    count: f32,
    eps: f32,
    momentum: f32,
    // Values ahead of the bound rows, in the global batch (of which x may be one rank's slice):
    // dropout draws by element of the whole batch.
    first_value: u32,
    // With ACTIVATION: dropout's threshold, key and scale (threshold 0 and scale 1 for none).
    dropout_threshold: u32,
    key_x: u32,
    key_y: u32,
    dropout_scale: f32,
    // Ghost batches in x (1 for none), and the index of the first one bound to this dispatch.
    ghost_batches: u32,
    first_ghost: u32,
    // Ghost batches bound to this dispatch, and how many each workgroup finishes one after
    // another (1 without GHOST_LOOP): the grid's third dimension is bound_ghosts / ghost_loop,
    // rounded up.
    bound_ghosts: u32,
    ghost_loop: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<X_V>;
@group(0) @binding(2) var<storage, read> dy: array<DY_V>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_V>;
@group(0) @binding(10) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(11) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(28) var<storage, read> activated: array<X_V>;

// The fused activation of the normalized vector at `index`.
fn activate(y: F_V, index: u32) -> F_V {
    if !ACTIVATION {
        return y;
    }
    let first = p.first_value + index * VECTOR;
    var kept = vec4<f32>();
    for (var l = 0u; l < VECTOR; l++) {
        kept[l] = select(0.0, 1.0, dropout_keeps(vec2<u32>(p.key_x, p.key_y), p.dropout_threshold, first + l));
    }
    return select(F_V(0.0), max(y, F_V(0.0)) * p.dropout_scale, from_lanes(kept) != F_V(0.0));
}

// dy from the gradient of the fused activation's output.
fn gated(grad: F_V, index: u32) -> F_V {
    if !ACTIVATION {
        return grad;
    }
    return select(F_V(0.0), grad * p.dropout_scale, F_V(activated[index]) > F_V(0.0));
}

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

// The same merge for the lanes of two vectors of moments with equal counts per lane.
fn merge_lanes(n_a: f32, mean_a: F_V, m2_a: F_V, n_b: f32, mean_b: F_V, m2_b: F_V) -> array<F_V, 2> {
    let n = n_a + n_b;
    let w = select(0.0, n_b / max(n, 1.0), n > 0.0);
    let delta = mean_b - mean_a;
    return array<F_V, 2>(mean_a + delta * w, m2_a + m2_b + delta * delta * (n_a * w));
}

fn lane_value(v: F_V, i: u32) -> f32 {
    return vec4<f32>(v)[i];
}

// Channels in one channel group.
fn group_channels() -> u32 {
    return select(1u, VECTOR, p.lanes_are_channels == 1u);
}

// The channel of lane i of group g (every lane is the group's one channel when lanes are positions).
fn channel_of(g: u32, i: u32) -> u32 {
    return select(g, g * VECTOR + i, p.lanes_are_channels == 1u);
}

// Per-channel values of group g as a vector, from the values of its lanes' channels.
fn per_lane(a: f32, b: f32, c: f32, d: f32) -> F_V {
    return select(F_V(a), from_lanes(vec4<f32>(a, b, c, d)), p.lanes_are_channels == 1u);
}

fn lane_channels(g: u32) -> vec4<u32> {
    return vec4<u32>(channel_of(g, 0u), channel_of(g, 1u), channel_of(g, 2u), channel_of(g, 3u));
}

// Index of a statistic of channel c of ghost batch `ghost` (0 without ghost batches).
fn stat_index(ghost: u32, plane: u32, c: u32) -> u32 {
    return (ghost * STAT_PLANES + plane) * p.channels + c;
}

fn stat_of(lane: Lane, plane: u32) -> F_V {
    let c = lane_channels(lane.group) + vec4<u32>(stat_index(lane.ghost, plane, 0u));
    return per_lane(stats[c.x], stats[c.y], stats[c.z], stats[c.w]);
}

// γ and β of channel c: 1 and 0 in GroupNorm's view, whose slots hold placeholders.
fn gamma_at(c: u32) -> f32 {
    if GROUP_NORM {
        return 1.0;
    }
    return gamma[c];
}

fn beta_at(c: u32) -> f32 {
    if GROUP_NORM {
        return 0.0;
    }
    return beta[c];
}

fn gamma_of(g: u32) -> F_V {
    let c = lane_channels(g);
    return per_lane(gamma_at(c.x), gamma_at(c.y), gamma_at(c.z), gamma_at(c.w));
}

var<workgroup> tree_n: array<f32, WORKGROUP>;
var<workgroup> tree_a: array<F_V, WORKGROUP>;
var<workgroup> tree_b: array<F_V, WORKGROUP>;

struct Lane {
    // The channel group, and its place among the workgroup's groups.
    group: u32,
    group_lane: u32,
    // Position among the threads that share this group.
    row_lane: u32,
    // This workgroup's range [begin, end) of the group's vectors within its ghost batch's bound
    // rows.
    begin: u32,
    end: u32,
    // The ghost batch (0 without), and the index of its first vector within the bound rows.
    ghost: u32,
    ghost_start: u32,
    // This workgroup's slot in `partials`.
    slot: u32,
}

// The lane of thread `local` in the `looped`-th ghost batch its workgroup finishes (0 where the
// grid has one workgroup per ghost batch).
fn lane_of(local: u32, workgroup: vec3<u32>, looped: u32) -> Lane {
    let chunk_len = p.rows * p.run_len;
    let begin = min(workgroup.y * p.split_len, chunk_len);
    let group_lane = local % p.lanes_c;
    let bound_ghost = workgroup.z * p.ghost_loop + looped;
    let ghost = p.first_ghost + bound_ghost;
    return Lane(
        workgroup.x * p.lanes_c + group_lane,
        group_lane,
        local / p.lanes_c,
        begin,
        min(begin + p.split_len, chunk_len),
        ghost,
        bound_ghost * chunk_len * p.groups,
        first_slot(ghost) + p.split_base + workgroup.y,
    );
}

// Threads per channel group. Barrier loops are bounded by this uniform value alone.
fn row_lanes() -> u32 {
    return WORKGROUP / p.lanes_c;
}

// The vectors [first, end) of the group's split that a thread walks, every `step`-th one.
struct Span {
    first: u32,
    end: u32,
    step: u32,
}

fn span_of(lane: Lane) -> Span {
    if CONTIGUOUS_WALK {
        let block = (lane.end - lane.begin + row_lanes() - 1u) / row_lanes();
        let first = min(lane.begin + lane.row_lane * block, lane.end);
        return Span(first, min(first + block, lane.end), 1u);
    }
    return Span(lane.begin + lane.row_lane, lane.end, row_lanes());
}

// A thread's walk over its span, tracking the position s within a sample and the vector's index
// by addition alone.
struct Walk {
    j: u32,
    end: u32,
    step: u32,
    s: u32,
    index: u32,
    step_s: u32,
    // What the index grows by per step, and again when s wraps into the next sample.
    step_index: u32,
    wrap_index: u32,
}

fn walk_start(lane: Lane) -> Walk {
    let span = span_of(lane);
    let j = span.first;
    let step = span.step;
    let L = p.run_len;
    let sample = p.groups * L;
    let s = j % L;
    return Walk(j, span.end, step, s, lane.ghost_start + (j / L) * sample + lane.group * L + s,
                step % L, (step / L) * sample + step % L, sample - L);
}

fn walk_next(w: ptr<function, Walk>) {
    (*w).j += (*w).step;
    let s = (*w).s + (*w).step_s;
    let wraps = s >= p.run_len;
    (*w).s = select(s, s - p.run_len, wraps);
    (*w).index += (*w).step_index + select(0u, (*w).wrap_index, wraps);
}

// Vectors in the thread's walk.
fn walk_count(lane: Lane) -> f32 {
    let span = span_of(lane);
    return f32(select(0u, (span.end - span.first + span.step - 1u) / span.step, span.first < span.end));
}

// Tree-merges the vector moments of the threads sharing a group; row_lane 0 ends with them.
fn reduce_moments(local: u32, row_lane: u32) {
    for (var stride = row_lanes() / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if row_lane < stride {
            let other = local + stride * p.lanes_c;
            let merged = merge_lanes(tree_n[local], tree_a[local], tree_b[local],
                                     tree_n[other], tree_a[other], tree_b[other]);
            tree_n[local] += tree_n[other];
            tree_a[local] = merged[0];
            tree_b[local] = merged[1];
        }
    }
}

// Tree-sums (tree_a, tree_b) over the threads sharing a group.
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

// The moments of channel lane i of a group: its lane, or all lanes merged when they are
// positions of one channel (they share one shift).
fn channel_moments(n: f32, mean: F_V, m2: F_V, i: u32) -> Moments {
    if p.lanes_are_channels == 1u {
        return Moments(n, lane_value(mean, i), lane_value(m2, i));
    }
    var total = Moments(0.0, 0.0, 0.0);
    for (var l = 0u; l < VECTOR; l++) {
        total = merge(total, Moments(n, lane_value(mean, l), lane_value(m2, l)));
    }
    return total;
}

// The sum for channel lane i of a group: its lane, or all lanes when they are one channel.
fn channel_sum(v: F_V, i: u32) -> f32 {
    if p.lanes_are_channels == 1u {
        return lane_value(v, i);
    }
    var total = 0.0;
    for (var l = 0u; l < VECTOR; l++) {
        total += lane_value(v, l);
    }
    return total;
}

// The batch statistics of channel c of one ghost batch (or of the batch): mean, variance,
// invstd and whether they are finite.
struct Finished {
    mean: f32,
    variance: f32,
    invstd: f32,
    finite: bool,
}

// Writes the statistics of channel c of ghost batch `ghost`.
fn write_stats(ghost: u32, c: u32, shift: f32, total: Moments) -> Finished {
    let variance = max(total.m2, 0.0) / p.count;
    let invstd = 1.0 / sqrt(variance + p.eps);
    stats[stat_index(ghost, STAT_MEAN, c)] = shift + total.mean;
    stats[stat_index(ghost, STAT_VAR, c)] = variance;
    stats[stat_index(ghost, STAT_INVSTD, c)] = invstd;
    stats[stat_index(ghost, STAT_SHIFT, c)] = shift;
    stats[stat_index(ghost, STAT_SHIFTED_MEAN, c)] = total.mean;
    let finite = is_finite(shift + total.mean) && is_finite(total.m2);
    return Finished(shift + total.mean, variance, invstd, finite);
}

// Updates channel c's running statistics from the mean of its ghost batches' statistics (the
// batch's own without ghost batches). A channel whose batch statistics are not finite (x held a
// NaN or an infinity, or its squares overflowed) keeps its running statistics: one diverged
// batch would otherwise poison every evaluation after it. GroupNorm's view has none.
fn update_running(c: u32, mean: f32, variance: f32, finite: bool) {
    if finite && !GROUP_NORM {
        let keep = 1.0 - p.momentum;
        running_mean[c] = keep * running_mean[c] + p.momentum * mean;
        running_var[c] = keep * running_var[c] + p.momentum * variance * p.running_var_factor;
    }
}

// By the exponent bits: WGSL has no isnan or isinf, and may assume away NaN in comparisons.
fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// y = γ·invstd·(x − K − μ_K) + β as scale·(x − K) + offset: x − K is exact where x is near K,
// so the large mean never meets the scale.
fn normalize_walk(lane: Lane, shift: F_V, scale: F_V, offset: F_V) {
    for (var w = walk_start(lane); w.j < w.end; walk_next(&w)) {
        let i = w.index;
        out[i] = OUT_V(activate(scale * (F_V(x[i]) - shift) + offset, i));
    }
}

// Ghost batches one workgroup finishes one after another: with GHOST_LOOP, where one split
// covers each, its run of `ghost_loop` (the last run may be shorter); else one.
fn ghosts_in_workgroup(workgroup: vec3<u32>) -> u32 {
    if !GHOST_LOOP {
        return 1u;
    }
    return min(p.ghost_loop, p.bound_ghosts - workgroup.z * p.ghost_loop);
}

@compute @workgroup_size(WORKGROUP)
fn stats_partial(@builtin(local_invocation_index) local: u32,
                 @builtin(workgroup_id) workgroup: vec3<u32>) {
    // With one split, the sums of the ghost batches' statistics for the running update (BatchNorm
    // loops over ghost batches only where one workgroup finishes all of them).
    var sums = GroupStatistics(vec4<f32>(), vec4<f32>(), vec4<bool>(true));
    for (var looped = 0u; looped < ghosts_in_workgroup(workgroup); looped++) {
        let ghost = stats_of_ghost(local, lane_of(local, workgroup, looped));
        sums.mean += ghost.mean;
        sums.variance += ghost.variance;
        sums.finite = sums.finite & ghost.finite;
    }
    let lane = lane_of(local, workgroup, 0u);
    if p.total_splits == 1u && lane.row_lane == 0u && lane.group < p.groups {
        let ghosts = f32(p.ghost_batches);
        for (var i = 0u; i < group_channels(); i++) {
            let c = channel_of(lane.group, i);
            update_running(c, sums.mean[i] / ghosts, sums.variance[i] / ghosts, sums.finite[i]);
        }
    }
}

// Per channel of a channel group: the batch statistics (or their sums over ghost batches).
struct GroupStatistics {
    mean: vec4<f32>,
    variance: vec4<f32>,
    finite: vec4<bool>,
}

// One ghost batch's (or the batch's) share of `stats_partial`: with one split, its statistics
// finished and applied, returned per channel of the group (for row_lane 0); with several, its
// split's partial moments.
fn stats_of_ghost(local: u32, lane: Lane) -> GroupStatistics {
    var finished_sums = GroupStatistics(vec4<f32>(), vec4<f32>(), vec4<bool>(true));
    let g = lane.group;
    let in_range = g < p.groups;
    var shift = F_V(0.0);
    var n = 0.0;
    var mean = F_V(0.0);
    var m2 = F_V(0.0);
    if in_range && lane.begin < lane.end {
        var first_lane = lane;
        first_lane.row_lane = 0u;
        let first = F_V(x[walk_start(first_lane).index]);
        shift = select(F_V(lane_value(first, 0u)), first, p.lanes_are_channels == 1u);
        var sum = F_V(0.0);
        var squares = F_V(0.0);
        for (var w = walk_start(lane); w.j < w.end; walk_next(&w)) {
            let d = F_V(x[w.index]) - shift;
            sum += d;
            squares += d * d;
        }
        n = walk_count(lane);
        mean = sum / max(n, 1.0);
        m2 = max(squares - sum * mean, F_V(0.0));
    }
    tree_n[local] = n;
    tree_a[local] = mean;
    tree_b[local] = m2;
    reduce_moments(local, lane.row_lane);
    if lane.row_lane == 0u && in_range {
        var scale = vec4<f32>();
        var offset = vec4<f32>();
        for (var i = 0u; i < group_channels(); i++) {
            let c = channel_of(g, i);
            let total = channel_moments(tree_n[local], tree_a[local], tree_b[local], i);
            if p.total_splits == 1u {
                let finished = write_stats(lane.ghost, c, lane_value(shift, i), total);
                finished_sums.mean[i] = finished.mean;
                finished_sums.variance[i] = finished.variance;
                finished_sums.finite[i] = finished.finite;
                scale[i] = gamma_at(c) * finished.invstd;
                offset[i] = beta_at(c) - scale[i] * total.mean;
            } else {
                let slot = (lane.slot * p.channels + c) * PARTIAL_STRIDE;
                partials[slot] = lane_value(shift, i);
                partials[slot + 1u] = total.n;
                partials[slot + 2u] = total.mean;
                partials[slot + 3u] = total.m2;
            }
        }
        tree_a[local] = per_lane(scale.x, scale.y, scale.z, scale.w);
        tree_b[local] = per_lane(offset.x, offset.y, offset.z, offset.w);
    }
    if p.total_splits == 1u {
        workgroupBarrier();
        if in_range {
            normalize_walk(lane, shift, tree_a[lane.group_lane], tree_b[lane.group_lane]);
        }
        // The next ghost batch reuses the tree.
        workgroupBarrier();
    }
    return finished_sums;
}

// Slots of `partials` per ghost batch.
fn ghost_splits() -> u32 {
    return p.total_splits / p.ghost_batches;
}

// The first slot of `partials` of a ghost batch (0 without ghost batches).
fn first_slot(ghost: u32) -> u32 {
    return ghost * ghost_splits();
}

@compute @workgroup_size(FINALIZE_WORKGROUP)
fn stats_finalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    var mean_sum = 0.0;
    var variance_sum = 0.0;
    var finite = true;
    for (var ghost = 0u; ghost < p.ghost_batches; ghost++) {
        // Every split is rebased onto the shift of the first one that saw data.
        var shift = 0.0;
        var total = Moments(0.0, 0.0, 0.0);
        for (var split = first_slot(ghost); split < first_slot(ghost + 1u); split++) {
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
        let finished = write_stats(ghost, c, shift, total);
        mean_sum += finished.mean;
        variance_sum += finished.variance;
        finite = finite && finished.finite;
    }
    let ghosts = f32(p.ghost_batches);
    update_running(c, mean_sum / ghosts, variance_sum / ghosts, finite);
}

// Eval mode normalizes with the running statistics: they become the stats planes (with no ghost
// batches), with the running mean as the shift so that `normalize` has one path.
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

// Applies finished statistics, on the reduction's grid.
@compute @workgroup_size(WORKGROUP)
fn normalize(@builtin(local_invocation_index) local: u32,
             @builtin(workgroup_id) workgroup: vec3<u32>) {
    let lane = lane_of(local, workgroup, 0u);
    let g = lane.group;
    if g >= p.groups {
        return;
    }
    let c = lane_channels(g);
    let beta_g = per_lane(beta_at(c.x), beta_at(c.y), beta_at(c.z), beta_at(c.w));
    let scale = gamma_of(g) * stat_of(lane, STAT_INVSTD);
    normalize_walk(lane, stat_of(lane, STAT_SHIFT), scale, beta_g - scale * stat_of(lane, STAT_SHIFTED_MEAN));
}

// dx = a·(dy − b − (x − K − μ_K)·k) with a = γ·invstd, b = Σdy/m, k = Σdy·x̂·invstd/m.
fn backward_dx_walk(lane: Lane, a: F_V, b: F_V, k: F_V) {
    let shift = stat_of(lane, STAT_SHIFT);
    let shifted_mean = stat_of(lane, STAT_SHIFTED_MEAN);
    for (var w = walk_start(lane); w.j < w.end; walk_next(&w)) {
        let i = w.index;
        let centered = (F_V(x[i]) - shift) - shifted_mean;
        out[i] = OUT_V(a * (gated(F_V(dy[i]), i) - b - centered * k));
    }
}

// Each thread's Σdy and Σdy·(x − mean) over its walk, tree-summed: row_lane 0 of each group
// ends with its split's sums in tree_a and tree_b.
fn backward_sums(local: u32, lane: Lane) {
    let g = lane.group;
    var sum_dy = F_V(0.0);
    var sum_dy_centered = F_V(0.0);
    if g < p.groups {
        let shift = stat_of(lane, STAT_SHIFT);
        let shifted_mean = stat_of(lane, STAT_SHIFTED_MEAN);
        for (var w = walk_start(lane); w.j < w.end; walk_next(&w)) {
            let i = w.index;
            let grad = gated(F_V(dy[i]), i);
            sum_dy += grad;
            sum_dy_centered += grad * ((F_V(x[i]) - shift) - shifted_mean);
        }
    }
    tree_a[local] = sum_dy;
    tree_b[local] = sum_dy_centered;
    reduce_sums(local, lane.row_lane);
}

// With several splits: each split's sums into `partials`, for `backward_finalize`.
@compute @workgroup_size(WORKGROUP)
fn backward_partial(@builtin(local_invocation_index) local: u32,
                    @builtin(workgroup_id) workgroup: vec3<u32>) {
    let lane = lane_of(local, workgroup, 0u);
    backward_sums(local, lane);
    let g = lane.group;
    if lane.row_lane == 0u && g < p.groups {
        for (var i = 0u; i < group_channels(); i++) {
            let c = channel_of(g, i);
            let slot = (lane.slot * p.channels + c) * PARTIAL_STRIDE;
            partials[slot] = channel_sum(tree_a[local], i);
            partials[slot + 1u] = channel_sum(tree_b[local], i);
        }
    }
}

// With one split covering the batch: the sums, dβ and dγ, and dx in one dispatch (a kernel of
// its own, so that neither it nor `backward_partial` binds more than 8 storage buffers), ghost
// batch after ghost batch, dβ and dγ summed over them.
@compute @workgroup_size(WORKGROUP)
fn backward_fused(@builtin(local_invocation_index) local: u32,
                  @builtin(workgroup_id) workgroup: vec3<u32>) {
    var dbeta_total = vec4<f32>();
    var dgamma_total = vec4<f32>();
    for (var looped = 0u; looped < ghosts_in_workgroup(workgroup); looped++) {
        let lane = lane_of(local, workgroup, looped);
        backward_sums(local, lane);
        let g = lane.group;
        let in_range = g < p.groups;
        if lane.row_lane == 0u && in_range {
            var b = vec4<f32>();
            var k = vec4<f32>();
            for (var i = 0u; i < group_channels(); i++) {
                let c = channel_of(g, i);
                // The same terms `backward_dx` forms from the finished sums.
                let dbeta_c = channel_sum(tree_a[local], i);
                let invstd = stats[stat_index(lane.ghost, STAT_INVSTD, c)];
                let dgamma_c = channel_sum(tree_b[local], i) * invstd;
                let inv_m = 1.0 / p.count;
                dbeta_total[i] += dbeta_c;
                dgamma_total[i] += dgamma_c;
                b[i] = dbeta_c * inv_m;
                k[i] = dgamma_c * invstd * inv_m;
            }
            tree_a[local] = per_lane(b.x, b.y, b.z, b.w);
            tree_b[local] = per_lane(k.x, k.y, k.z, k.w);
        }
        workgroupBarrier();
        if in_range {
            let a = gamma_of(g) * stat_of(lane, STAT_INVSTD);
            backward_dx_walk(lane, a, tree_a[lane.group_lane], tree_b[lane.group_lane]);
        }
        // The next ghost batch reuses the tree.
        workgroupBarrier();
    }
    let lane = lane_of(local, workgroup, 0u);
    if !GROUP_NORM && lane.row_lane == 0u && lane.group < p.groups {
        for (var i = 0u; i < group_channels(); i++) {
            let c = channel_of(lane.group, i);
            dbeta[c] = dbeta_total[i];
            dgamma[c] = dgamma_total[i];
        }
    }
}

// Each ghost batch's dβ and dγ into its first slot (for `backward_dx`), and their sums over the
// ghost batches into dbeta and dgamma (not in GroupNorm's view).
@compute @workgroup_size(FINALIZE_WORKGROUP)
fn backward_finalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.channels {
        return;
    }
    var dbeta_total = 0.0;
    var dgamma_total = 0.0;
    for (var ghost = 0u; ghost < p.ghost_batches; ghost++) {
        var sum_dy = 0.0;
        var sum_dy_centered = 0.0;
        for (var split = first_slot(ghost); split < first_slot(ghost + 1u); split++) {
            let slot = (split * p.channels + c) * PARTIAL_STRIDE;
            sum_dy += partials[slot];
            sum_dy_centered += partials[slot + 1u];
        }
        let first = (first_slot(ghost) * p.channels + c) * PARTIAL_STRIDE;
        let dgamma_ghost = sum_dy_centered * stats[stat_index(ghost, STAT_INVSTD, c)];
        partials[first + 2u] = sum_dy;
        partials[first + 3u] = dgamma_ghost;
        dbeta_total += sum_dy;
        dgamma_total += dgamma_ghost;
    }
    if !GROUP_NORM {
        dbeta[c] = dbeta_total;
        dgamma[c] = dgamma_total;
    }
}

// dβ or dγ (`term` 2 or 3) of the lane's ghost batch, for each channel of its group.
fn ghost_sum_of(lane: Lane, term: u32) -> F_V {
    let first = first_slot(lane.ghost) * p.channels;
    let c = (lane_channels(lane.group) + vec4<u32>(first)) * PARTIAL_STRIDE + vec4<u32>(term);
    return per_lane(partials[c.x], partials[c.y], partials[c.z], partials[c.w]);
}

// Applies finished sums, on the reduction's grid.
@compute @workgroup_size(WORKGROUP)
fn backward_dx(@builtin(local_invocation_index) local: u32,
               @builtin(workgroup_id) workgroup: vec3<u32>) {
    let lane = lane_of(local, workgroup, 0u);
    let g = lane.group;
    if g >= p.groups {
        return;
    }
    let invstd = stat_of(lane, STAT_INVSTD);
    let inv_m = 1.0 / p.count;
    let dbeta_g = ghost_sum_of(lane, 2u);
    let dgamma_g = ghost_sum_of(lane, 3u);
    backward_dx_walk(lane, gamma_of(g) * invstd, dbeta_g * inv_m, dgamma_g * invstd * inv_m);
}
