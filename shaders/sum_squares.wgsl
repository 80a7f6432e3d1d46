// The sum of the squares of a buffer's values, into one slot of `out`: what the squared L2 norm
// of a gradient is, for logging gradient norms during training without reading the gradients
// back. One workgroup: each thread sums every WORKGROUP-th value in f32, then the threads' sums
// are added in a tree.
//
//   out[slot] = Σ x[i]²

struct SumSquaresParams {
    len: u32,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: SumSquaresParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn sum_squares(@builtin(local_invocation_index) local: u32) {
    var sum = 0.0;
    for (var i = local; i < p.len; i += WORKGROUP) {
        sum += x[i] * x[i];
    }
    partial[local] = sum;
    for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if local < stride {
            partial[local] += partial[local + stride];
        }
    }
    if local == 0u {
        out[p.slot] = partial[0];
    }
}
