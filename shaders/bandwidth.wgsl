// The streaming ceiling `wgnorm bench` measures beside a buffer copy: out = a·x + b over vectors
// of four, several per thread, each thread's vectors a whole grid apart so that neighbouring
// threads read neighbouring memory. It is the most an elementwise shader moves on an adapter;
// the BatchNorm kernels are judged against it.

// Vectors each thread streams.
const VECTORS_PER_THREAD: u32 = 4u;

struct StreamParams {
    // Vectors of four in x and out.
    len: u32,
    a: f32,
    b: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: StreamParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP)
fn stream(@builtin(global_invocation_id) id: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let threads = groups.x * groups.y * WORKGROUP;
    var i = thread_index(id, groups, WORKGROUP);
    for (var k = 0u; k < VECTORS_PER_THREAD; k++) {
        if i < p.len {
            out[i] = p.a * x[i] + p.b;
        }
        i += threads;
    }
}
