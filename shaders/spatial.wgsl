// What moves values across image positions, one thread per output value (im2col: per k×k of
// them), every output a gather (no atomics, so each sum adds its terms in one fixed order):
//
//   im2col:    out[(n, oy, ox), (c, ky, kx)] = x[n, oy·s + ky − p, ox·s + kx − p, c], 0 outside
//   col2im:    out[n, y, x, c] = Σ dy[(n, oy, ox), (c, ky, kx)] over the patches holding (y, x)
//   max_pool:  out[n, oy, ox, c] = max of the window (its first maximum in row-major order),
//              and with SAVE_TAPS pool_taps[n, oy, ox, c] = that maximum's tap ky·k + kx
//   max_pool_backward: out[n, y, x, c] = Σ dy[n, oy, ox, c] over windows whose saved tap
//              is (y, x)
//   avg_pool:  out[n, c] = mean of x[n, ·, ·, c];  avg_pool_backward: out[n, y, x, c] = dy[n, c]/(h·w)
//   transpose: out[b, j, i] = x[b, i, j] for row-major `height`×`width` matrices
//
// Images are channels-last (n, h, w, c). Sums run over (oy, ox) in increasing order, the order
// in which the CPU twin (src/ops/spatial/cpu.rs) scatters the same terms, so the backends
// agree exactly. x, dy and out are stored as X_T, DY_T and OUT_T; values are computed in f32.

struct SpatialParams {
    // Output values (threads that write).
    len: u32,
    channels: u32,
    // The input image's; the matrix's rows and columns for `transpose`.
    height: u32,
    width: u32,
    out_height: u32,
    out_width: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: SpatialParams;
@group(0) @binding(1) var<storage, read> x: array<X_T>;
@group(0) @binding(2) var<storage, read> dy: array<DY_T>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
// Where each window's maximum was, as its tap ky·k + kx (small integers, exact in f32): what
// the training forward leaves for the backward, so that it does not search the windows again.
@group(0) @binding(29) var<storage, read_write> pool_taps: array<f32>;

// Whether max_pool writes pool_taps (a pipeline constant: inference writes none).
override SAVE_TAPS: bool = false;

// (n, row, column, channel) of value `i` of a channels-last batch of rows×columns images.
fn image_coordinates(i: u32, rows: u32, columns: u32) -> vec4<u32> {
    let c = i % p.channels;
    let position = i / p.channels;
    let column = position % columns;
    let row = (position / columns) % rows;
    return vec4<u32>(position / (columns * rows), row, column, c);
}

fn input_index(n: u32, row: u32, column: u32, c: u32) -> u32 {
    return ((n * p.height + row) * p.width + column) * p.channels + c;
}

// The first and last output rows (or columns) whose window holds padded position `padded`,
// over an output of `extent`: oy·s ≤ padded < oy·s + k. Empty (first > last) if none.
fn windows_over(padded: u32, extent: u32) -> vec2<u32> {
    let first = select(0u, (padded + p.stride - p.kernel) / p.stride, padded + 1u >= p.kernel);
    let last = min(padded / p.stride, extent - 1u);
    return vec2<u32>(first, last);
}

// The tap ky·k + kx of the first maximum of window (n, oy, ox) in channel c, and its value.
fn window_max(n: u32, oy: u32, ox: u32, c: u32) -> vec2<f32> {
    var best = 0u;
    var best_value = f32(x[input_index(n, oy * p.stride, ox * p.stride, c)]);
    for (var ky = 0u; ky < p.kernel; ky++) {
        for (var kx = 0u; kx < p.kernel; kx++) {
            let value = f32(x[input_index(n, oy * p.stride + ky, ox * p.stride + kx, c)]);
            if value > best_value {
                best = ky * p.kernel + kx;
                best_value = value;
            }
        }
    }
    return vec2<f32>(f32(best), best_value);
}

// One thread per output position and channel, writing that channel's k×k taps, which lie
// side by side in the row: one thread per value spent most of its time finding its place.
@compute @workgroup_size(WORKGROUP)
fn im2col(@builtin(global_invocation_id) id: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    let area = p.kernel * p.kernel;
    if i >= p.len / area {
        return;
    }
    let c = i % p.channels;
    let row = i / p.channels;
    let ox = row % p.out_width;
    let oy = (row / p.out_width) % p.out_height;
    let n = row / (p.out_width * p.out_height);
    // Row `row`, columns (c, ky, kx): (row·channels + c)·k² + ky·k + kx.
    var at = i * area;
    for (var ky = 0u; ky < p.kernel; ky++) {
        // Unsigned, so a position in the top or left padding wraps past the image and fails.
        let iy = oy * p.stride + ky - p.padding;
        for (var kx = 0u; kx < p.kernel; kx++) {
            let ix = ox * p.stride + kx - p.padding;
            var value = 0.0;
            if iy < p.height && ix < p.width {
                value = f32(x[input_index(n, iy, ix, c)]);
            }
            out[at] = OUT_T(value);
            at++;
        }
    }
}

@compute @workgroup_size(WORKGROUP)
fn col2im(@builtin(global_invocation_id) id: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let at = image_coordinates(i, p.height, p.width);
    let padded = at.yz + vec2<u32>(p.padding);
    let rows = windows_over(padded.x, p.out_height);
    let columns = windows_over(padded.y, p.out_width);
    let patch_len = p.channels * p.kernel * p.kernel;
    var sum = 0.0;
    for (var oy = rows.x; oy <= rows.y; oy++) {
        let ky = padded.x - oy * p.stride;
        for (var ox = columns.x; ox <= columns.y; ox++) {
            let kx = padded.y - ox * p.stride;
            let row = (at.x * p.out_height + oy) * p.out_width + ox;
            sum += f32(dy[row * patch_len + (at.w * p.kernel + ky) * p.kernel + kx]);
        }
    }
    out[i] = OUT_T(sum);
}

@compute @workgroup_size(WORKGROUP)
fn max_pool(@builtin(global_invocation_id) id: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let at = image_coordinates(i, p.out_height, p.out_width);
    let max = window_max(at.x, at.y, at.z, at.w);
    out[i] = OUT_T(max.y);
    if SAVE_TAPS {
        pool_taps[i] = max.x;
    }
}

// Channels one max_pool_backward thread takes at its position (a pipeline constant per adapter
// class): a software rasterizer spends most of a thread on finding its position and windows,
// which the channels then share; a hardware GPU wants a thread per value.
override CHANNELS_PER_THREAD: u32 = 1u;

@compute @workgroup_size(WORKGROUP)
fn max_pool_backward(@builtin(global_invocation_id) id: vec3<u32>,
                     @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    let blocks = (p.channels + CHANNELS_PER_THREAD - 1u) / CHANNELS_PER_THREAD;
    if i >= p.len / p.channels * blocks {
        return;
    }
    let position = i / blocks;
    let first = (i % blocks) * CHANNELS_PER_THREAD;
    let at = image_coordinates(position * p.channels, p.height, p.width);
    let rows = windows_over(at.y, p.out_height);
    let columns = windows_over(at.z, p.out_width);
    for (var c = first; c < min(first + CHANNELS_PER_THREAD, p.channels); c++) {
        var sum = 0.0;
        for (var oy = rows.x; oy <= rows.y; oy++) {
            for (var ox = columns.x; ox <= columns.y; ox++) {
                let window = ((at.x * p.out_height + oy) * p.out_width + ox) * p.channels + c;
                let tap = (at.y - oy * p.stride) * p.kernel + at.z - ox * p.stride;
                if u32(pool_taps[window]) == tap {
                    sum += f32(dy[window]);
                }
            }
        }
        out[position * p.channels + c] = OUT_T(sum);
    }
}

@compute @workgroup_size(WORKGROUP)
fn avg_pool(@builtin(global_invocation_id) id: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let positions = p.height * p.width;
    let n = i / p.channels;
    let c = i % p.channels;
    var sum = 0.0;
    for (var s = 0u; s < positions; s++) {
        sum += f32(x[(n * positions + s) * p.channels + c]);
    }
    out[i] = OUT_T(sum / f32(positions));
}

@compute @workgroup_size(WORKGROUP)
fn avg_pool_backward(@builtin(global_invocation_id) id: vec3<u32>,
                     @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let positions = p.height * p.width;
    let n = i / (positions * p.channels);
    out[i] = OUT_T(f32(dy[n * p.channels + i % p.channels]) / f32(positions));
}

@compute @workgroup_size(WORKGROUP)
fn transpose(@builtin(global_invocation_id) id: vec3<u32>,
             @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let matrix = p.height * p.width;
    let b = i / matrix;
    let j = (i % matrix) / p.height;
    let row = i % p.height;
    out[i] = OUT_T(f32(x[b * matrix + row * p.width + j]));
}
