// Elementwise activations, forward and backward, one thread per element: ReLU, dropout, or
// ReLU then dropout in one pass (a `Relu, Dropout` pair of layers in training), as flags,
// optionally on the sum of x and a second input, the addend s (a residual connection's
// shortcut added before the activation, or a plain elementwise sum):
//
//   forward:  y  = keep·scale·act(x + s)   act(v) = max(v, 0) with ReLU, else v
//   backward: dx = keep·scale·dy·[x + s > 0 or no ReLU]
//   dropout:  scale = 1/(1 − p), keep = bits(element) ≥ threshold, threshold = round(p·2³²)
//             bits(e) = lowbias32(key.x ^ lowbias32(key.y ^ e))   (shaders/prelude.wgsl)
//   without dropout: threshold = 0 (every element kept) and scale = 1, so y is act(x + s) exactly.
//   without an addend: s is not read nor added (not even as 0, which would turn −0 into +0),
//             so y is keep·scale·act(x) bit for bit.
//
// The same dx reaches x and the addend, so the backward pass writes it once. It reads x and the
// addend only with ReLU.
//
// x, the addend, dy and out are stored as X_T, ADDEND_T, DY_T and OUT_T (f32 or f16, defined
// ahead of this file); values are computed in f32.
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
    // 1: ReLU before the dropout; 0: dropout alone. Without ReLU the backward pass reads no x.
    relu: u32,
    // 1: the activation's input is x + addend; 0: x alone, and the addend is not read.
    addend: u32,
    // The global batch's index of element 0: a data-parallel rank's slice draws its mask by
    // each element's place in the whole batch.
    first_element: u32,
}

@group(0) @binding(0) var<uniform> p: ActivationParams;
@group(0) @binding(1) var<storage, read> x: array<X_T>;
@group(0) @binding(2) var<storage, read> dy: array<DY_T>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
@group(0) @binding(30) var<storage, read> addend: array<ADDEND_T>;

fn keeps(element: u32) -> bool {
    return dropout_keeps(vec2<u32>(p.key_x, p.key_y), p.threshold, p.first_element + element);
}

// What the activation receives at element i: x, or x + addend when the pass sums.
fn activation_input(i: u32) -> f32 {
    var value = f32(x[i]);
    if p.addend == 1u {
        value += f32(addend[i]);
    }
    return value;
}

@compute @workgroup_size(WORKGROUP)
fn forward(@builtin(global_invocation_id) id: vec3<u32>,
           @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        let value = activation_input(i);
        let activated = select(value, max(value, 0.0), p.relu == 1u);
        out[i] = OUT_T(select(0.0, activated * p.scale, keeps(i)));
    }
}

@compute @workgroup_size(WORKGROUP)
fn backward(@builtin(global_invocation_id) id: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i < p.len {
        let passes = keeps(i) && (p.relu == 0u || activation_input(i) > 0.0);
        out[i] = OUT_T(select(0.0, f32(dy[i]) * p.scale, passes));
    }
}
