//! The optimizer step over many parameters: one update over arenas gives what an update per
//! tensor gives, and moments that decay below the smallest normal f32 are stored as 0.

#[macro_use]
mod common;

use common::{gpu, normal, rng};
use wgnorm::Backend;
use wgnorm::graph::Compute;
use wgnorm::ops::optimizer::{OptimizerOps, OptimizerParams};
use wgnorm::optim::{Optimizer, OptimizerConfig};

/// Lengths on and off the vectors of four and the arena's alignment.
const LENS: [usize; 5] = [100, 7, 64, 1, 300];

fn host_tensors(rng: &mut rand::rngs::StdRng, scale: f32) -> Vec<Vec<f32>> {
    LENS.iter()
        .map(|&len| normal(rng, len, 0.0, scale))
        .collect()
}

/// Three Adam steps, and three SGD steps with momentum, on parameters in an arena (gradients in
/// another) against the same steps on separate buffers, tensor by tensor.
fn arena_steps_equal_separate_steps<B: Compute>(backend: &B, rng: &mut rand::rngs::StdRng) {
    for config in [OptimizerConfig::adam(1e-2), OptimizerConfig::sgd(0.1, 0.9)] {
        let params = host_tensors(rng, 0.1);
        let slices: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        let mut in_arena = backend.upload_arena(&slices).unwrap();
        let mut separate: Vec<B::Buffer> =
            params.iter().map(|p| backend.upload(p).unwrap()).collect();
        let mut arena_optimizer = Optimizer::new(backend, config, &LENS).unwrap();
        let mut separate_optimizer = Optimizer::new(backend, config, &LENS).unwrap();
        for _ in 0..3 {
            let grads = host_tensors(rng, 1.0);
            let grad_slices: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let grads_arena = backend.upload_arena(&grad_slices).unwrap();
            let grads_separate: Vec<B::Buffer> =
                grads.iter().map(|g| backend.upload(g).unwrap()).collect();
            arena_optimizer
                .step(backend, in_arena.iter_mut().collect(), &grads_arena)
                .unwrap();
            separate_optimizer
                .step(backend, separate.iter_mut().collect(), &grads_separate)
                .unwrap();
        }
        let bits = |buffers: &[B::Buffer]| -> Vec<Vec<u32>> {
            let refs: Vec<&B::Buffer> = buffers.iter().collect();
            (backend.download_many(&refs).unwrap().into_iter())
                .map(|values| values.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&in_arena), bits(&separate), "{config:?}: parameters");
        assert_eq!(
            arena_optimizer.download(backend).unwrap(),
            separate_optimizer.download(backend).unwrap(),
            "{config:?}: state"
        );
    }
}

backend_test!(an_update_over_arenas_equals_updates, |backend, rng| {
    arena_steps_equal_separate_steps(backend, rng)
});

/// Whether every value is 0 or a normal f32.
fn none_subnormal(values: &[f32]) -> bool {
    values.iter().all(|&v| v == 0.0 || v.is_normal())
}

/// A weight whose gradient is always 0 has moments that decay geometrically; none is ever
/// stored subnormal: below the smallest normal f32 a moment is stored as 0 (a GPU that flushes
/// subnormals may instead leave it where its decrement underflows, a normal value), and the
/// parameter does not move.
fn subnormal_moments_become_zero<B: OptimizerOps>(backend: &B) {
    let tiny = f32::MIN_POSITIVE * 1.05;
    let len = 8;
    let mut param = backend.filled(len, 0.25).unwrap();
    let grad = backend.filled(len, 0.0).unwrap();
    let mut m = backend.filled(len, tiny).unwrap();
    let mut v = backend.filled(len, f32::MIN_POSITIVE).unwrap();
    let p = OptimizerParams::adam(len, 1e-3, 0.9, 0.999, 1e-8, 2000);
    for _ in 0..3 {
        backend
            .adam_update(&p, &mut param, &grad, &mut m, &mut v)
            .unwrap();
        let moments = [backend.download(&m).unwrap(), backend.download(&v).unwrap()];
        assert!(moments.iter().all(|m| none_subnormal(m)), "{moments:?}");
    }
    assert_eq!(backend.download(&param).unwrap(), vec![0.25; len]);

    let mut momentum = backend.filled(len, tiny).unwrap();
    let p = OptimizerParams::sgd(len, 0.1, 0.5);
    backend
        .sgd_update(&p, &mut param, &grad, &mut momentum)
        .unwrap();
    let momentum = backend.download(&momentum).unwrap();
    assert!(none_subnormal(&momentum), "{momentum:?}");
}

backend_test!(subnormal_moments_are_stored_as_zero, |backend, rng| {
    subnormal_moments_become_zero(backend)
});

#[test]
fn the_gpu_takes_the_arena_path() {
    let Some(backend) = gpu() else {
        return;
    };
    let arena = backend.scratch_arena(&LENS).unwrap();
    let views: Vec<_> = arena.iter().collect();
    let span = backend
        .arena_span(&views)
        .expect("an arena's views form a span");
    let align = backend.limits().min_storage_buffer_offset_alignment as usize / 4;
    assert!(span.len() >= LENS.iter().sum::<usize>());
    assert_eq!(span.len() % align.max(4), 0, "{}", span.len());
    // Out of order, or from two arenas, they do not.
    assert!(backend.arena_span(&[views[1], views[0]]).is_none());
    let other = backend.scratch_arena(&LENS).unwrap();
    assert!(backend.arena_span(&[views[0], &other[1]]).is_none());
    let _ = rng("the_gpu_takes_the_arena_path");
}
