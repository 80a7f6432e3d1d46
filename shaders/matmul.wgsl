// Matrix product with an optional bias row, on strided views:
//
//   c[i, j] = Σ_k a[i, k]·b[k, j] + bias[j],  i < m, j < n, k < K
//   a[i, k] = a_data[i·a_row_stride + k·a_col_stride], likewise b; c is row-major m×n.
//
// Strides express transposes, so one kernel serves a Linear layer's forward (X·Wᵀ + b) and
// both backward products (dY·W, dYᵀ·X). Two schedules of the same sum, in the same k order:
//
// - `matmul`: each thread computes a TILE×TILE block of c straight from storage, reusing each
//   loaded value TILE times from registers. Fastest where storage loads are cached and barriers
//   are dear (lavapipe runs a workgroup on one CPU core).
// - `matmul_tiled`: a workgroup stages BLOCK×K_STEP tiles of a and b in workgroup memory, so
//   each value is loaded from storage once per workgroup instead of once per thread; each thread
//   then computes its TILE×TILE block from the staged tiles. The schedule for real GPUs.

const TILE: u32 = 4u;
// Threads per workgroup side of both kernels, and c's block per workgroup side in matmul_tiled.
const SIDE: u32 = 8u;
const BLOCK: u32 = 32u; // SIDE·TILE
const K_STEP: u32 = 16u;

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

@compute @workgroup_size(SIDE, SIDE)
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
    store(row0, col0, acc);
}

fn store(row0: u32, col0: u32, acc: array<array<f32, TILE>, TILE>) {
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

var<workgroup> a_tile: array<f32, BLOCK * K_STEP>; // a_tile[r·K_STEP + kk]
var<workgroup> b_tile: array<f32, K_STEP * BLOCK>; // b_tile[kk·BLOCK + c]

@compute @workgroup_size(SIDE, SIDE)
fn matmul_tiled(@builtin(workgroup_id) group: vec3<u32>,
                @builtin(local_invocation_id) local: vec3<u32>,
                @builtin(local_invocation_index) t: u32) {
    let block_row = group.y * BLOCK;
    let block_col = group.x * BLOCK;
    var acc: array<array<f32, TILE>, TILE>;
    for (var k0 = 0u; k0 < p.k; k0 += K_STEP) {
        // SIDE² threads stage BLOCK·K_STEP values of each operand; zeros past the edges.
        for (var e = t; e < BLOCK * K_STEP; e += SIDE * SIDE) {
            let r = e / K_STEP;
            let kk = e % K_STEP;
            let row = block_row + r;
            let k = k0 + kk;
            a_tile[e] = select(0.0, a[row * p.a_row_stride + k * p.a_col_stride],
                               row < p.m && k < p.k);
            let bk = e / BLOCK;
            let bc = e % BLOCK;
            let col = block_col + bc;
            b_tile[e] = select(0.0, b[(k0 + bk) * p.b_row_stride + col * p.b_col_stride],
                               col < p.n && k0 + bk < p.k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < K_STEP; kk++) {
            var av: array<f32, TILE>;
            var bv: array<f32, TILE>;
            for (var i = 0u; i < TILE; i++) {
                av[i] = a_tile[(local.y * TILE + i) * K_STEP + kk];
                bv[i] = b_tile[kk * BLOCK + local.x * TILE + i];
            }
            for (var i = 0u; i < TILE; i++) {
                for (var j = 0u; j < TILE; j++) {
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    store(block_row + local.y * TILE, block_col + local.x * TILE, acc);
}
