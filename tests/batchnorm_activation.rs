//! BatchNorm with the ReLU (and dropout) after it in its own pass, against the separate passes:
//! the fused forward and backward give the same values bit for bit, on both backends, on every
//! path of the kernels (vectors of channels, of positions, scalars, several splits, chunks of
//! rows beyond the binding limit).

#[macro_use]
mod common;

use common::{assert_close, gpu, normal, rng};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::Backend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::Compute;
use wgnorm::ops::activation::{Activation, DropoutMask};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats,
};

/// (N, C, S) shapes on every path: vectors of four channels (one split, and several), scalars,
/// vectors of four positions.
const SHAPES: [(usize, usize, usize); 4] = [(32, 128, 1), (2048, 256, 1), (37, 5, 1), (8, 6, 12)];

fn bits<B: Backend>(backend: &B, buffer: &B::Buffer) -> Vec<u32> {
    let values = backend.download(buffer).unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that each pair of buffers holds the same bits.
fn assert_same_bits<B: Backend>(backend: &B, case: &str, pairs: &[(&str, &B::Buffer, &B::Buffer)]) {
    for &(name, got, want) in pairs {
        assert_eq!(bits(backend, got), bits(backend, want), "{case}: {name}");
    }
}

/// Running statistics at PyTorch's initial values (mean 0, variance 1).
fn initial_running<B: Backend>(backend: &B, c: usize) -> RunningStats<B> {
    RunningStats {
        mean: backend.filled(c, 0.0).unwrap(),
        var: backend.filled(c, 1.0).unwrap(),
    }
}

fn forward_output<B: Backend>(backend: &B, shape: BatchNormShape) -> BatchNormForward<B> {
    BatchNormForward {
        y: backend.filled(shape.numel(), f32::NAN).unwrap(),
        stats: backend.filled(shape.stats_len(), f32::NAN).unwrap(),
    }
}

fn grads<B: Backend>(backend: &B, shape: BatchNormShape) -> BatchNormGrads<B> {
    BatchNormGrads {
        dx: backend.filled(shape.numel(), f32::NAN).unwrap(),
        dgamma: backend.filled(shape.c, f32::NAN).unwrap(),
        dbeta: backend.filled(shape.c, f32::NAN).unwrap(),
    }
}

/// The fused passes against BatchNorm then the activation (and the activation's backward then
/// BatchNorm's), in `mode`, with and without dropout.
fn fused_equals_separate<B: Compute>(
    backend: &B,
    rng: &mut StdRng,
    (n, c, s): (usize, usize, usize),
) {
    let shape = BatchNormShape::new(n, c, s);
    let x = backend
        .upload(&normal(rng, shape.numel(), 0.3, 1.0))
        .unwrap();
    let dy = backend
        .upload(&normal(rng, shape.numel(), 0.0, 1.0))
        .unwrap();
    let affine = Affine {
        gamma: backend.upload(&normal(rng, c, 1.0, 0.2)).unwrap(),
        beta: backend.upload(&normal(rng, c, 0.0, 0.2)).unwrap(),
    };
    let config = BatchNormConfig::default();
    let masks = [
        None,
        Some(DropoutMask::new(0.2, rng.random(), 2, rng.random())),
    ];
    for (mode, dropout) in [Mode::Train, Mode::Eval]
        .into_iter()
        .flat_map(|mode| masks.map(move |mask| (mode, mask)))
    {
        let case = format!("{n}x{c}x{s}, {mode:?}, dropout {}", dropout.is_some());
        let activation = Activation {
            relu: true,
            dropout,
        };
        let (mut running_separate, mut running_fused) =
            (initial_running(backend, c), initial_running(backend, c));
        let mut normalized = forward_output(backend, shape);
        let mut separate = backend.filled(shape.numel(), f32::NAN).unwrap();
        backend
            .batchnorm_forward(
                mode,
                &x,
                shape,
                &affine,
                &mut running_separate,
                config,
                &mut normalized,
            )
            .unwrap();
        backend
            .activation_forward(activation, &normalized.y, &mut separate)
            .unwrap();
        let mut fused = forward_output(backend, shape);
        backend
            .batchnorm_activation_forward(
                mode,
                &x,
                shape,
                &affine,
                &mut running_fused,
                config,
                activation,
                &mut fused,
            )
            .unwrap();
        assert_same_bits(
            backend,
            &case,
            &[
                ("y", &fused.y, &separate),
                ("stats", &fused.stats, &normalized.stats),
                ("running var", &running_fused.var, &running_separate.var),
            ],
        );
        if mode == Mode::Eval {
            continue;
        }
        let mut dy_normalized = backend.filled(shape.numel(), f32::NAN).unwrap();
        backend
            .activation_backward(activation, Some(&normalized.y), &dy, &mut dy_normalized)
            .unwrap();
        let mut want = grads(backend, shape);
        backend
            .batchnorm_backward(
                &x,
                &dy_normalized,
                shape,
                &affine.gamma,
                &normalized.stats,
                &mut want,
            )
            .unwrap();
        let mut got = grads(backend, shape);
        backend
            .batchnorm_activation_backward(
                &x,
                &fused.y,
                activation,
                &dy,
                shape,
                &affine.gamma,
                &fused.stats,
                &mut got,
            )
            .unwrap();
        assert_same_bits(
            backend,
            &case,
            &[
                ("dx", &got.dx, &want.dx),
                ("dgamma", &got.dgamma, &want.dgamma),
                ("dbeta", &got.dbeta, &want.dbeta),
            ],
        );
    }
}

backend_test!(
    fused_activation_equals_the_separate_passes,
    |backend, rng| {
        for shape in SHAPES {
            fused_equals_separate(backend, rng, shape);
        }
    }
);

/// The fused forward (training, with dropout) and backward on host data: y, dx, dγ, dβ.
fn fused_on(backend: &GpuBackend, shape: BatchNormShape, [x, dy]: [&[f32]; 2]) -> [Vec<f32>; 4] {
    let (x, dy) = (backend.upload(x).unwrap(), backend.upload(dy).unwrap());
    let c = shape.c;
    let affine = Affine {
        gamma: backend.filled(c, 1.5).unwrap(),
        beta: backend.filled(c, 0.25).unwrap(),
    };
    let mut running = initial_running(backend, c);
    let activation = Activation {
        relu: true,
        dropout: Some(DropoutMask::new(0.3, 11, 2, 5)),
    };
    let mut out = forward_output(backend, shape);
    backend
        .batchnorm_activation_forward(
            Mode::Train,
            &x,
            shape,
            &affine,
            &mut running,
            BatchNormConfig::default(),
            activation,
            &mut out,
        )
        .unwrap();
    let mut got = grads(backend, shape);
    let gamma = &affine.gamma;
    backend
        .batchnorm_activation_backward(
            &x, &out.y, activation, &dy, shape, gamma, &out.stats, &mut got,
        )
        .unwrap();
    [&out.y, &got.dx, &got.dgamma, &got.dbeta].map(|buffer| backend.download(buffer).unwrap())
}

/// Dropout draws by element of the whole tensor, also where the rows are bound in chunks: the
/// chunked passes give what the whole tensor in one binding gives (to rounding: the chunks
/// reduce in another order), where a mask drawn by element of the chunk would differ in a
/// third of the values.
#[test]
fn gpu_fused_activation_in_chunks_of_rows_draws_the_same_mask() {
    if gpu().is_none() {
        return;
    }
    let whole = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    let chunked = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    chunked.set_max_binding_for_tests(64 << 10);
    let rng = &mut rng("gpu_fused_activation_in_chunks_of_rows");
    for (n, c, s) in [(300, 128, 1), (200, 4, 64)] {
        let shape = BatchNormShape::new(n, c, s);
        let x = normal(rng, shape.numel(), 0.3, 1.0);
        let dy = normal(rng, shape.numel(), 0.0, 1.0);
        let got = fused_on(&chunked, shape, [&x, &dy]);
        let want = fused_on(&whole, shape, [&x, &dy]);
        for ((name, got), want) in ["y", "dx", "dgamma", "dbeta"].iter().zip(&got).zip(&want) {
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            assert_close(&format!("{n}x{c}x{s}: {name}"), got, &want, 1e-4);
        }
    }
}

backend_test!(fusing_anything_but_a_relu_is_refused, |backend, rng| {
    let shape = BatchNormShape::new(4, 4, 1);
    let x = backend
        .upload(&normal(rng, shape.numel(), 0.0, 1.0))
        .unwrap();
    let affine = Affine {
        gamma: backend.filled(4, 1.0).unwrap(),
        beta: backend.filled(4, 0.0).unwrap(),
    };
    let mut running = initial_running(backend, 4);
    let mut out = forward_output(backend, shape);
    let dropout_alone = Activation::dropout(DropoutMask::new(0.5, 1, 2, 3));
    let err = backend
        .batchnorm_activation_forward(
            Mode::Train,
            &x,
            shape,
            &affine,
            &mut running,
            BatchNormConfig::default(),
            dropout_alone,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("not dropout"), "{err}");
    let short = backend.filled(3, 1.0).unwrap();
    let err = backend
        .batchnorm_activation_backward(
            &x,
            &short,
            Activation::RELU,
            &x,
            shape,
            &affine.gamma,
            &out.stats,
            &mut grads(backend, shape),
        )
        .unwrap_err();
    assert!(err.to_string().contains("activated output"), "{err}");
});
