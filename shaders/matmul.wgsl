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
// - `matmul_vec4`: each thread computes a 16×16 block of c from vec4 loads, taken along
//   whichever dimension of each operand is contiguous in memory (fixed per pipeline by the
//   override constants A_K_CONTIGUOUS and B_K_CONTIGUOUS), four k values per round. Needs
//   4-aligned strides and sizes (`ops/matmul.rs` checks); the schedule for software rasterizers,
//   where every storage access is a per-lane load and a barrier is dear (lavapipe runs a
//   workgroup on one CPU core): a large block per thread loads each value for many products.
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
    // matmul_tiled's split of k: `splits` ranges of k_split values (a multiple of K_STEP), one
    // per workgroup layer. With more than one, each layer stores its partial block and row sums
    // in `partials` and `matmul_reduce_splits` adds them up in split order.
    k_split: u32,
    splits: u32,
    _pad0: u32,
    _pad1: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ROW_SUMS: u32 = 2u;
// Add to what out (and row_sums) hold instead of overwriting it. A pipeline constant, not a
// flag: a branch on a uniform in the stores made lavapipe's matmuls 10-20% slower.
override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(12) var<storage, read> a: array<A_T>;
@group(0) @binding(13) var<storage, read> b: array<B_T>;
@group(0) @binding(14) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<OUT_T>;
@group(0) @binding(27) var<storage, read_write> row_sums: array<f32>;
// Split s's block at [s·m·n + i·n + j], then its row sums at [splits·m·n + s·m + i].
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

// Whether the thread whose block of c starts at column col0 sums a's rows.
fn sums_rows(col0: u32) -> bool {
    return (p.flags & FLAG_ROW_SUMS) != 0u && col0 == 0u;
}

// Threads' blocks of c are 4×4 (TILE): `mat4x4` values whose rows and columns are named by
// constant indices. lavapipe keeps an array indexed by a variable in memory, even inside a loop
// of constant length, and that made `matmul_vec4` twice as slow.

// row r of block += a_col[r]·b_row: one k step of a block.
fn add_outer(block: mat4x4<f32>, a_col: vec4<f32>, b_row: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(fma(vec4(a_col.x), b_row, block[0]), fma(vec4(a_col.y), b_row, block[1]),
                  fma(vec4(a_col.z), b_row, block[2]), fma(vec4(a_col.w), b_row, block[3]));
}

@compute @workgroup_size(SIDE, SIDE)
fn matmul(@builtin(global_invocation_id) id: vec3<u32>) {
    let row0 = id.y * TILE;
    let col0 = id.x * TILE;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    // Rows and columns past the edge repeat the last one; their results are not stored.
    let quad = vec4(0u, 1u, 2u, 3u);
    let a_at = min(vec4(row0) + quad, vec4(p.m - 1u)) * p.a_row_stride;
    let b_at = min(vec4(col0) + quad, vec4(p.n - 1u)) * p.b_col_stride;
    var acc = mat4x4<f32>();
    let sums_here = sums_rows(col0);
    var sums = vec4<f32>();
    for (var kk = 0u; kk < p.k; kk++) {
        let a_k = a_at + kk * p.a_col_stride;
        let b_k = b_at + kk * p.b_row_stride;
        let a_col = vec4(f32(a[a_k.x]), f32(a[a_k.y]), f32(a[a_k.z]), f32(a[a_k.w]));
        let b_row = vec4(f32(b[b_k.x]), f32(b[b_k.y]), f32(b[b_k.z]), f32(b[b_k.w]));
        acc = add_outer(acc, a_col, b_row);
        if sums_here {
            sums += a_col;
        }
    }
    store_block(row0, col0, acc);
    if sums_here {
        store_sums(row0, sums);
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
    let row0 = block_row + local.y * TILE;
    let col0 = block_col + local.x * TILE;
    let split = group.z;
    let k_end = min((split + 1u) * p.k_split, p.k);
    let sums_here = sums_rows(col0);
    var sums = vec4<f32>();
    var acc = mat4x4<f32>();
    for (var k0 = split * p.k_split; k0 < k_end; k0 += K_STEP) {
        // SIDE² threads stage BLOCK·K_STEP values of each operand; zeros past the edges.
        for (var e = t; e < BLOCK * K_STEP; e += SIDE * SIDE) {
            let r = e / K_STEP;
            let kk = e % K_STEP;
            let row = block_row + r;
            let k = k0 + kk;
            a_tile[e] = select(0.0, f32(a[row * p.a_row_stride + k * p.a_col_stride]),
                               row < p.m && k < k_end);
            let bk = e / BLOCK;
            let bc = e % BLOCK;
            let col = block_col + bc;
            b_tile[e] = select(0.0, f32(b[(k0 + bk) * p.b_row_stride + col * p.b_col_stride]),
                               col < p.n && k0 + bk < k_end);
        }
        workgroupBarrier();
        let a_at = (local.y * TILE) * K_STEP;
        let b_at = local.x * TILE;
        for (var kk = 0u; kk < K_STEP; kk++) {
            let a_col = vec4(a_tile[a_at + kk], a_tile[a_at + K_STEP + kk],
                             a_tile[a_at + 2u * K_STEP + kk], a_tile[a_at + 3u * K_STEP + kk]);
            let b_k = kk * BLOCK + b_at;
            let b_row = vec4(b_tile[b_k], b_tile[b_k + 1u], b_tile[b_k + 2u], b_tile[b_k + 3u]);
            acc = add_outer(acc, a_col, b_row);
            // Past the last k the staged values are zeros, which leave the sums as they are.
            if sums_here {
                sums += a_col;
            }
        }
        workgroupBarrier();
    }
    if p.splits > 1u {
        store_partial_block(split, row0, col0, acc);
        if sums_here {
            store_partial_sums(split, row0, sums);
        }
        return;
    }
    store_block(row0, col0, acc);
    if sums_here {
        store_sums(row0, sums);
    }
}

// A split's block of c (no bias) in `partials`, the parts inside c. Kept apart from
// `store_block`: a branch to it there made lavapipe run `matmul_vec4` ten times slower.
fn store_partial_block(split: u32, row0: u32, col0: u32, block: mat4x4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let row = row0 + r;
        for (var c = 0u; c < 4u; c++) {
            if row < p.m && col0 + c < p.n {
                partials[(split * p.m + row) * p.n + col0 + c] = block[r][c];
            }
        }
    }
}

fn store_partial_sums(split: u32, row0: u32, sums: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        if row0 + r < p.m {
            partials[p.splits * p.m * p.n + split * p.m + row0 + r] = sums[r];
        }
    }
}

// c's block per thread of `matmul_vec4`: 4×4 blocks of 4×4.
const V_ROWS: u32 = 16u;
const V_COLS: u32 = 16u;
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

// Four column blocks of b at col0, col0 + 4, col0 + 8, col0 + 12.
fn b_blocks(col0: u32, k: u32) -> array<mat4x4<f32>, 4> {
    return array(b_block(col0, k), b_block(col0 + 4u, k), b_block(col0 + 8u, k),
                 b_block(col0 + 12u, k));
}

// acc += a(·, k + kk)·b(k + kk, ·), kk = 0..4 in order.
fn accumulate(acc: mat4x4<f32>, a: mat4x4<f32>, b: mat4x4<f32>) -> mat4x4<f32> {
    return add_outer(add_outer(add_outer(add_outer(acc, a[0], b[0]), a[1], b[1]), a[2], b[2]),
                     a[3], b[3]);
}

// One row of four blocks of c: acc[c] += a·b[c].
fn accumulate_row(acc: array<mat4x4<f32>, 4>, a: mat4x4<f32>, b: array<mat4x4<f32>, 4>)
    -> array<mat4x4<f32>, 4> {
    return array(accumulate(acc[0], a, b[0]), accumulate(acc[1], a, b[1]),
                 accumulate(acc[2], a, b[2]), accumulate(acc[3], a, b[3]));
}

// The sums of a 4-row block of a, advanced by its four k values in order.
fn add_rows(sums: vec4<f32>, a: mat4x4<f32>) -> vec4<f32> {
    return (((sums + a[0]) + a[1]) + a[2]) + a[3];
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
    // acc_r[c]: the 4×4 block of c at rows row0 + 4r, columns col0 + 4c.
    var acc0: array<mat4x4<f32>, 4>;
    var acc1: array<mat4x4<f32>, 4>;
    var acc2: array<mat4x4<f32>, 4>;
    var acc3: array<mat4x4<f32>, 4>;
    let sums_here = sums_rows(col0);
    // Sums of rows 0-3, 4-7, 8-11 and 12-15, k in increasing order.
    var sums = array<vec4<f32>, 4>();
    for (var k = 0u; k < p.k; k += 4u) {
        let a0 = a_block(row0, k);
        let a1 = a_block(row0 + 4u, k);
        let a2 = a_block(row0 + 8u, k);
        let a3 = a_block(row0 + 12u, k);
        let b = b_blocks(col0, k);
        acc0 = accumulate_row(acc0, a0, b);
        acc1 = accumulate_row(acc1, a1, b);
        acc2 = accumulate_row(acc2, a2, b);
        acc3 = accumulate_row(acc3, a3, b);
        if sums_here {
            sums = array(add_rows(sums[0], a0), add_rows(sums[1], a1), add_rows(sums[2], a2),
                         add_rows(sums[3], a3));
        }
    }
    if sums_here {
        store_sums(row0, sums[0]);
        store_sums(row0 + 4u, sums[1]);
        store_sums(row0 + 8u, sums[2]);
        store_sums(row0 + 12u, sums[3]);
    }
    store_block_row(row0, col0, acc0);
    store_block_row(row0 + 4u, col0, acc1);
    store_block_row(row0 + 8u, col0, acc2);
    store_block_row(row0 + 12u, col0, acc3);
}

fn store_sums(row0: u32, sums: vec4<f32>) {
    store_row_sum(row0, sums.x);
    store_row_sum(row0 + 1u, sums.y);
    store_row_sum(row0 + 2u, sums.z);
    store_row_sum(row0 + 3u, sums.w);
}

fn store_row_sum(row: u32, sum: f32) {
    if row < p.m {
        row_sums[row] = accumulated_sum(row, sum);
    }
}

// A row sum, plus what row_sums holds under ACCUMULATE.
fn accumulated_sum(row: u32, sum: f32) -> f32 {
    if ACCUMULATE {
        return row_sums[row] + sum;
    }
    return sum;
}

// Stores four 4×4 blocks of c side by side at (row0, col0), the parts inside c.
fn store_block_row(row0: u32, col0: u32, blocks: array<mat4x4<f32>, 4>) {
    store_block(row0, col0, blocks[0]);
    store_block(row0, col0 + 4u, blocks[1]);
    store_block(row0, col0 + 8u, blocks[2]);
    store_block(row0, col0 + 12u, blocks[3]);
}

fn store_block(row0: u32, col0: u32, block: mat4x4<f32>) {
    store_quad(row0, col0, block[0]);
    store_quad(row0 + 1u, col0, block[1]);
    store_quad(row0 + 2u, col0, block[2]);
    store_quad(row0 + 3u, col0, block[3]);
}

fn store_quad(row: u32, col0: u32, values: vec4<f32>) {
    if row >= p.m {
        return;
    }
    store_value(row, col0, values.x);
    store_value(row, col0 + 1u, values.y);
    store_value(row, col0 + 2u, values.z);
    store_value(row, col0 + 3u, values.w);
}

fn store_value(row: u32, col: u32, value: f32) {
    if col < p.n {
        var biased = value;
        if (p.flags & FLAG_BIAS) != 0u {
            biased += bias[col];
        }
        let at = row * p.n + col;
        if ACCUMULATE {
            biased += f32(out[at]);
        }
        out[at] = OUT_T(biased);
    }
}

// c (with the bias) and the row sums from matmul_tiled's partial results, the splits added in
// order: one thread per value of c, then one per row.
@compute @workgroup_size(WORKGROUP)
fn matmul_reduce_splits(@builtin(global_invocation_id) id: vec3<u32>,
                        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = thread_index(id, groups, WORKGROUP);
    let values = p.m * p.n;
    if i < values {
        var total = partials[i];
        for (var s = 1u; s < p.splits; s++) {
            total += partials[s * values + i];
        }
        if (p.flags & FLAG_BIAS) != 0u {
            total += bias[i % p.n];
        }
        if ACCUMULATE {
            total += f32(out[i]);
        }
        out[i] = OUT_T(total);
    } else if i < values + p.m && (p.flags & FLAG_ROW_SUMS) != 0u {
        let row = i - values;
        let sums_at = p.splits * values;
        var total = partials[sums_at + row];
        for (var s = 1u; s < p.splits; s++) {
            total += partials[sums_at + s * p.m + row];
        }
        row_sums[row] = accumulated_sum(row, total);
    }
}
