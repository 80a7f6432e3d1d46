// Matrix product with an optional bias row, on strided views, and optionally the row sums of a:
//
//   c[i, j] = Σ_k a[i, k]·b[k, j] + bias[j],  i < m, j < n, k < K
//   row_sums[i] = Σ_k a[i, k]
//   a[i, k] = a_data[i·a_row_stride + k·a_col_stride], likewise b; c is row-major m×n.
//
// With a = dYᵀ, the row sums are a Linear layer's bias gradient, formed from the values of a the
// weight gradient loads anyway: the threads of c's first column block add them up.
//
// a, b and c are stored as A_T, B_T and OUT_T (f32 or f16, defined ahead of this file); every
// product and sum is f32.
//
// Strides express transposes, so one kernel serves a Linear layer's forward (X·Wᵀ + b) and
// both backward products (dY·W, dYᵀ·X). Three schedules of the same sum, in the same k order
// (so all give identical results):
//
// - `matmul_vec4`: each thread computes a V_ROWS×V_COLS block of c from vec4 loads, taken along
//   whichever dimension of each operand is contiguous in memory (fixed per pipeline by the
//   override constants A_K_CONTIGUOUS and B_K_CONTIGUOUS), four k values per round. Needs
//   4-aligned strides and sizes (`ops/matmul.rs` checks); fastest where storage loads are cached
//   and barriers are dear (lavapipe runs a workgroup on one CPU core).
// - `matmul`: the same from scalar loads in TILE×TILE blocks, for any strides.
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
    // FLAG_BIAS: add bias[j] to column j; FLAG_ROW_SUMS: write row_sums.
    flags: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ROW_SUMS: u32 = 2u;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(12) var<storage, read> a: array<A_T>;
@group(0) @binding(13) var<storage, read> b: array<B_T>;
@group(0) @binding(14) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
@group(0) @binding(27) var<storage, read_write> row_sums: array<f32>;

// Whether the thread whose block of c starts at column col0 sums a's rows.
fn sums_rows(col0: u32) -> bool {
    return (p.flags & FLAG_ROW_SUMS) != 0u && col0 == 0u;
}

// Stores the sums of rows row0.. (those inside c).
fn store_row_sums(row0: u32, sums: array<f32, 8>, rows: u32) {
    for (var r = 0u; r < rows; r++) {
        if row0 + r < p.m {
            row_sums[row0 + r] = sums[r];
        }
    }
}

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
    let sums_here = sums_rows(col0);
    var sums: array<f32, 8>;
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, TILE>;
        var bv: array<f32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            av[t] = f32(a[a_at[t] + kk * p.a_col_stride]);
            bv[t] = f32(b[kk * p.b_row_stride + b_at[t]]);
        }
        for (var i = 0u; i < TILE; i++) {
            for (var j = 0u; j < TILE; j++) {
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
            }
        }
        if sums_here {
            for (var t = 0u; t < TILE; t++) {
                sums[t] += av[t];
            }
        }
    }
    store(row0, col0, acc);
    if sums_here {
        store_row_sums(row0, sums, TILE);
    }
}

fn store(row0: u32, col0: u32, acc: array<array<f32, TILE>, TILE>) {
    for (var i = 0u; i < TILE; i++) {
        let row = row0 + i;
        for (var j = 0u; j < TILE; j++) {
            let col = col0 + j;
            if row < p.m && col < p.n {
                var value = acc[i][j];
                if (p.flags & FLAG_BIAS) != 0u {
                    value += bias[col];
                }
                out[row * p.n + col] = OUT_T(value);
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
    let sums_here = sums_rows(block_col + local.x * TILE);
    var sums: array<f32, 8>;
    var acc: array<array<f32, TILE>, TILE>;
    for (var k0 = 0u; k0 < p.k; k0 += K_STEP) {
        // SIDE² threads stage BLOCK·K_STEP values of each operand; zeros past the edges.
        for (var e = t; e < BLOCK * K_STEP; e += SIDE * SIDE) {
            let r = e / K_STEP;
            let kk = e % K_STEP;
            let row = block_row + r;
            let k = k0 + kk;
            a_tile[e] = select(0.0, f32(a[row * p.a_row_stride + k * p.a_col_stride]),
                               row < p.m && k < p.k);
            let bk = e / BLOCK;
            let bc = e % BLOCK;
            let col = block_col + bc;
            b_tile[e] = select(0.0, f32(b[(k0 + bk) * p.b_row_stride + col * p.b_col_stride]),
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
            // Past the last k the staged values are zeros, which leave the sums as they are.
            if sums_here {
                for (var i = 0u; i < TILE; i++) {
                    sums[i] += av[i];
                }
            }
        }
        workgroupBarrier();
    }
    store(block_row + local.y * TILE, block_col + local.x * TILE, acc);
    if sums_here {
        store_row_sums(block_row + local.y * TILE, sums, TILE);
    }
}

const V_ROWS: u32 = 8u;
const V_COLS: u32 = 8u;
// true: a[i, k..k+4] is one vec4 (a_col_stride = 1); false: a[i..i+4, k] is (a_row_stride = 1).
override A_K_CONTIGUOUS: bool = true;
// true: b[k..k+4, j] is one vec4 (b_row_stride = 1); false: b[k, j..j+4] is (b_col_stride = 1).
override B_K_CONTIGUOUS: bool = false;
override V_GROUP: u32 = 64u;

@group(0) @binding(25) var<storage, read> a4: array<vec4<A_T>>;
@group(0) @binding(26) var<storage, read> b4: array<vec4<B_T>>;

// Column kk of the result holds a(row0 + r, k + kk) for r = 0..4: a 4×4 tile of a, transposed.
// Rows past the edge repeat the last row (quad); their results are not stored.
fn a_block(row0: u32, k: u32) -> mat4x4<f32> {
    if A_K_CONTIGUOUS {
        let last = p.m - 1u;
        return transpose(mat4x4(
            vec4<f32>(a4[(min(row0, last) * p.a_row_stride + k) / 4u]),
            vec4<f32>(a4[(min(row0 + 1u, last) * p.a_row_stride + k) / 4u]),
            vec4<f32>(a4[(min(row0 + 2u, last) * p.a_row_stride + k) / 4u]),
            vec4<f32>(a4[(min(row0 + 3u, last) * p.a_row_stride + k) / 4u])));
    }
    let row = min(row0, p.m - 4u);
    return mat4x4(
        vec4<f32>(a4[(k * p.a_col_stride + row) / 4u]),
        vec4<f32>(a4[((k + 1u) * p.a_col_stride + row) / 4u]),
        vec4<f32>(a4[((k + 2u) * p.a_col_stride + row) / 4u]),
        vec4<f32>(a4[((k + 3u) * p.a_col_stride + row) / 4u]));
}

// Column kk of the result holds b(k + kk, col0 + c) for c = 0..4.
fn b_block(col0: u32, k: u32) -> mat4x4<f32> {
    if B_K_CONTIGUOUS {
        let last = p.n - 1u;
        return transpose(mat4x4(
            vec4<f32>(b4[(min(col0, last) * p.b_col_stride + k) / 4u]),
            vec4<f32>(b4[(min(col0 + 1u, last) * p.b_col_stride + k) / 4u]),
            vec4<f32>(b4[(min(col0 + 2u, last) * p.b_col_stride + k) / 4u]),
            vec4<f32>(b4[(min(col0 + 3u, last) * p.b_col_stride + k) / 4u])));
    }
    let col = min(col0, p.n - 4u);
    return mat4x4(
        vec4<f32>(b4[(k * p.b_row_stride + col) / 4u]),
        vec4<f32>(b4[((k + 1u) * p.b_row_stride + col) / 4u]),
        vec4<f32>(b4[((k + 2u) * p.b_row_stride + col) / 4u]),
        vec4<f32>(b4[((k + 3u) * p.b_row_stride + col) / 4u]));
}

// acc[r] (row r of c's 4×4 block) += a(r, k + kk)·b(k + kk, ·), kk = 0..4 in order.
fn accumulate(acc: mat4x4<f32>, a: mat4x4<f32>, b: mat4x4<f32>) -> mat4x4<f32> {
    var out = acc;
    for (var r = 0u; r < 4u; r++) {
        var row = out[r];
        row = fma(vec4(a[0][r]), b[0], row);
        row = fma(vec4(a[1][r]), b[1], row);
        row = fma(vec4(a[2][r]), b[2], row);
        row = fma(vec4(a[3][r]), b[3], row);
        out[r] = row;
    }
    return out;
}

@compute @workgroup_size(V_GROUP)
fn matmul_vec4(@builtin(global_invocation_id) id: vec3<u32>,
               @builtin(num_workgroups) groups: vec3<u32>) {
    let thread = thread_index(id, groups, V_GROUP);
    let col_blocks = (p.n + V_COLS - 1u) / V_COLS;
    let row0 = (thread / col_blocks) * V_ROWS;
    let col0 = (thread % col_blocks) * V_COLS;
    if row0 >= p.m {
        return;
    }
    // Four 4×4 blocks of c: (rows 0-3, 4-7) × (columns 0-3, 4-7).
    var acc = array<mat4x4<f32>, 4>();
    let sums_here = sums_rows(col0);
    // Sums of rows 0-3 and 4-7, k in increasing order.
    var sums0 = vec4<f32>();
    var sums1 = vec4<f32>();
    for (var k = 0u; k < p.k; k += 4u) {
        let a0 = a_block(row0, k);
        let a1 = a_block(row0 + 4u, k);
        let b0 = b_block(col0, k);
        let b1 = b_block(col0 + 4u, k);
        acc[0] = accumulate(acc[0], a0, b0);
        acc[1] = accumulate(acc[1], a0, b1);
        acc[2] = accumulate(acc[2], a1, b0);
        acc[3] = accumulate(acc[3], a1, b1);
        if sums_here {
            sums0 = (((sums0 + a0[0]) + a0[1]) + a0[2]) + a0[3];
            sums1 = (((sums1 + a1[0]) + a1[1]) + a1[2]) + a1[3];
        }
    }
    if sums_here {
        let sums = array<f32, 8>(sums0.x, sums0.y, sums0.z, sums0.w,
                                 sums1.x, sums1.y, sums1.z, sums1.w);
        store_row_sums(row0, sums, V_ROWS);
    }
    for (var r = 0u; r < V_ROWS; r++) {
        let row = row0 + r;
        for (var c = 0u; c < V_COLS; c++) {
            let col = col0 + c;
            if row < p.m && col < p.n {
                var value = acc[(r / 4u) * 2u + c / 4u][r % 4u][c % 4u];
                if (p.flags & FLAG_BIAS) != 0u {
                    value += bias[col];
                }
                out[row * p.n + col] = OUT_T(value);
            }
        }
    }
}
