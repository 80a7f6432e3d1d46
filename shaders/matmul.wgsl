// Matrix product with an optional bias row, on strided views:
//
//   c[i, j] = Σ_k a[i, k]·b[k, j] + bias[j],  i < m, j < n, k < K
//   a[i, k] = a_data[i·a_row_stride + k·a_col_stride], likewise b; c is row-major m×n.
//
// Strides express transposes, so one kernel serves a Linear layer's forward (X·Wᵀ + b) and
// both backward products (dY·W, dYᵀ·X). Each thread computes a TILE×TILE block of c, reusing
// each loaded a and b value TILE times from registers.

const TILE: u32 = 4u;

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_row_stride: u32,
    a_col_stride: u32,
    b_row_stride: u32,
    b_col_stride: u32,
    // 1: add bias[j] to column j.
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(12) var<storage, read> a: array<f32>;
@group(0) @binding(13) var<storage, read> b: array<f32>;
@group(0) @binding(14) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(8, 8)
fn matmul(@builtin(global_invocation_id) id: vec3<u32>) {
    let row0 = id.y * TILE;
    let col0 = id.x * TILE;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    var acc: array<array<f32, TILE>, TILE>;
    var a_at: array<u32, TILE>;
    var b_at: array<u32, TILE>;
    // Rows and columns past the edge repeat the last one; their results are not stored.
    for (var t = 0u; t < TILE; t++) {
        a_at[t] = min(row0 + t, p.m - 1u) * p.a_row_stride;
        b_at[t] = min(col0 + t, p.n - 1u) * p.b_col_stride;
    }
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, TILE>;
        var bv: array<f32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            av[t] = a[a_at[t] + kk * p.a_col_stride];
            bv[t] = b[kk * p.b_row_stride + b_at[t]];
        }
        for (var i = 0u; i < TILE; i++) {
            for (var j = 0u; j < TILE; j++) {
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < TILE; i++) {
        let row = row0 + i;
        for (var j = 0u; j < TILE; j++) {
            let col = col0 + j;
            if row < p.m && col < p.n {
                var value = acc[i][j];
                if p.has_bias == 1u {
                    value += bias[col];
                }
                out[row * p.n + col] = value;
            }
        }
    }
}
