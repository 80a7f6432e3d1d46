// Batch gather from a dataset kept on the device as bytes:
//
//   out[r, j]   = byte_scale[images[index[first + r]·row_len + j]]   (byte_scale[b] = b/255)
//   labels[r]   = all_labels[index[first + r]]
//
// `images` packs four bytes per u32, little-endian. The 256-entry `byte_scale` table comes
// from the host, so the conversion is exactly the CPU twin's (WGSL division is not exact).
//
// Where rows are whole words (row_len a multiple of 4), each thread converts one word: four
// values of one row from one load and one index division, where a thread per value loads and
// divides four times (on lavapipe every load is a per-lane loop of a few cycles).

struct GatherParams {
    rows: u32,
    row_len: u32,
    first: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(21) var<storage, read> images: array<u32>;
@group(0) @binding(22) var<storage, read> index: array<u32>;
@group(0) @binding(23) var<storage, read> byte_scale: array<f32>;
@group(0) @binding(24) var<storage, read> all_labels: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
@group(0) @binding(15) var<storage, read_write> labels: array<f32>;

// Rows are whole u32 words: one thread per word of the output.
override WHOLE_WORDS: bool = false;

@compute @workgroup_size(WORKGROUP)
fn gather(@builtin(global_invocation_id) id: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let t = thread_index(id, groups, WORKGROUP);
    if WHOLE_WORDS {
        let i = t * 4u;
        if i >= p.rows * p.row_len {
            return;
        }
        let r = i / p.row_len;
        let j = i - r * p.row_len;
        let source_row = index[p.first + r];
        let word = images[(source_row * p.row_len + j) / 4u];
        out[i] = byte_scale[word & 0xffu];
        out[i + 1u] = byte_scale[(word >> 8u) & 0xffu];
        out[i + 2u] = byte_scale[(word >> 16u) & 0xffu];
        out[i + 3u] = byte_scale[word >> 24u];
        if j == 0u {
            labels[r] = all_labels[source_row];
        }
        return;
    }
    let i = t;
    if i >= p.rows * p.row_len {
        return;
    }
    let r = i / p.row_len;
    let j = i % p.row_len;
    let source_row = index[p.first + r];
    let byte_at = source_row * p.row_len + j;
    let value8 = (images[byte_at / 4u] >> (8u * (byte_at % 4u))) & 0xffu;
    out[i] = byte_scale[value8];
    if j == 0u {
        labels[r] = all_labels[source_row];
    }
}
