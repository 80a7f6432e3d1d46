// Optimizer updates of one parameter tensor from its gradient g, one thread per vector of
// VECTOR elements (four where the length allows), written as PyTorch writes them (torch.optim,
// single-tensor path), element by element the same at either width:
//
//   adam: m ← m + (1 − β1)·(g − m)          v ← β2·v + (1 − β2)·g²
//         θ ← θ·param_scale − step_size·m / (sqrt(v)/bias_correction2_sqrt + eps)
//         step_size = lr/(1 − β1^t), bias_correction2_sqrt = sqrt(1 − β2^t),
//         param_scale = 1 − lr·weight_decay (AdamW's decoupled decay; 1 without)  (from the host)
//   sgd:  g ← g + weight_decay·θ (L2)
//         b ← momentum·b + g                θ ← θ − lr·b      (b starts at 0, so b₁ = g)
//
// Moments below the smallest normal f32 are stored as 0. A weight whose input is always zero
// (MNIST's border pixels) sees g = 0 at every step, so its moments decay into the subnormal range
// and stay there (m·(1 − β1) rounds to 0 below 7e-45, so m never reaches 0 on its own), and on
// CPUs every operation on a subnormal is tens of times slower. A moment that small moves a
// parameter by less than 1e-32.
const MIN_NORMAL: f32 = 1.17549435e-38;

fn flushed(v: F_V) -> F_V {
    return select(v, F_V(0.0), abs(v) < F_V(MIN_NORMAL));
}

// 1 − β1 and 1 − β2 come from the host, computed in f64 as PyTorch does: in f32, 1 − β2 for
// β2 = 0.999 would be off by 1.3e-5 relative.
struct OptimizerParams {
    // Vectors in each tensor.
    len: u32,
    step_size: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    bias_correction2_sqrt: f32,
    momentum: f32,
    param_scale: f32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: OptimizerParams;
@group(0) @binding(17) var<storage, read_write> param: array<F_V>;
@group(0) @binding(18) var<storage, read> grad: array<F_V>;
@group(0) @binding(19) var<storage, read_write> moment1: array<F_V>;
@group(0) @binding(20) var<storage, read_write> moment2: array<F_V>;

@compute @workgroup_size(WORKGROUP)
fn adam(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    // Each value loaded once, rather than trusting the compiler to merge two loads of a
    // read-write buffer.
    let g = grad[i];
    let m_old = moment1[i];
    let m = flushed(m_old + p.one_minus_beta1 * (g - m_old));
    let v = flushed(p.beta2 * moment2[i] + p.one_minus_beta2 * g * g);
    moment1[i] = m;
    moment2[i] = v;
    param[i] = param[i] * p.param_scale
        - p.step_size * m / (sqrt(v) / p.bias_correction2_sqrt + F_V(p.eps));
}

@compute @workgroup_size(WORKGROUP)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>,
       @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    if i >= p.len {
        return;
    }
    let theta = param[i];
    let b = flushed(p.momentum * moment1[i] + (grad[i] + p.weight_decay * theta));
    moment1[i] = b;
    param[i] = theta - p.step_size * b;
}
