// What every kernel shares, placed ahead of each shader file when wgnorm compiles it. The Rust
// side reads the same constants (`WORKGROUP` and `FINALIZE_WORKGROUP` in src/gpu/pipeline.rs;
// tests/shaders.rs checks that they agree).

// Threads per workgroup of the reduction and elementwise kernels.
const WORKGROUP: u32 = 256u;

// Threads per workgroup of the per-channel kernels that finish a reduction.
const FINALIZE_WORKGROUP: u32 = 64u;

// The thread's number in a grid of workgroups of `group` threads that the launcher folded into
// two dimensions when one would exceed the adapter's workgroup-count limit.
fn thread_index(id: vec3<u32>, groups: vec3<u32>, group: u32) -> u32 {
    return id.x + id.y * groups.x * group;
}

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

// Whether dropout keeps `element` of a tensor under the mask keyed by `key` (see
// shaders/activation.wgsl); threshold 0 keeps every element.
fn dropout_keeps(key: vec2<u32>, threshold: u32, element: u32) -> bool {
    return threshold == 0u || lowbias32(key.x ^ lowbias32(key.y ^ element)) >= threshold;
}
