// Elementwise activations, forward and backward, one thread per element:
//
//   relu:    y = max(x, 0)                 dx = dy·[x > 0]
//   dropout: y = x·keep·scale              dx = dy·keep·scale,   scale = 1/(1 − p)
//            keep = bits(element) ≥ threshold, threshold = round(p·2³²)
//            bits(e) = lowbias32(key.x ^ lowbias32(key.y ^ e))
//
// x, dy and out are stored as X_T, DY_T and OUT_T (f32 or f16, defined ahead of this file);
// values are computed in f32.
//
// The key is derived on the host from (seed, layer, step), so a mask is a pure function of
// (seed, layer, step, element): the backward pass recomputes it instead of storing it, and the
// CPU twin (src/ops/activation/cpu.rs) draws the very same masks. The keep test is on integers,
// so no float rounding can make the two backends disagree.

struct ActivationParams {
    len: u32,
    threshold: u32,
    key_x: u32,
    key_y: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: ActivationParams;
@group(0) @binding(1) var<storage, read> x: array<X_T>;
@group(0) @binding(2) var<storage, read> dy: array<DY_T>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;

// A 32-bit integer hash with good avalanche (Chris Wellons' "lowbias32"); a bijection on u32.
fn lowbias32(value: u32) -> u32 {
    var h = value;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn keeps(element: u32) -> bool {
    return lowbias32(p.key_x ^ lowbias32(p.key_y ^ element)) >= p.threshold;
}

@compute @workgroup_size(WORKGROUP)
fn relu_forward(@builtin(global_invocation_id) id: vec3<u32>,
                @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        out[i] = OUT_T(max(f32(x[i]), 0.0));
    }
}

@compute @workgroup_size(WORKGROUP)
fn relu_backward(@builtin(global_invocation_id) id: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        out[i] = OUT_T(select(0.0, f32(dy[i]), f32(x[i]) > 0.0));
    }
}

@compute @workgroup_size(WORKGROUP)
fn dropout_forward(@builtin(global_invocation_id) id: vec3<u32>,
                   @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        out[i] = OUT_T(select(0.0, f32(x[i]) * p.scale, keeps(i)));
    }
}

@compute @workgroup_size(WORKGROUP)
fn dropout_backward(@builtin(global_invocation_id) id: vec3<u32>,
                    @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        out[i] = OUT_T(select(0.0, f32(dy[i]) * p.scale, keeps(i)));
    }
}
