//! BatchNorm on both backends against the float64 reference, on seeded random inputs.
//! Outputs are poisoned with NaN before every call, so an element a kernel forgets to write
//! shows up as an error.

#[macro_use]
mod common;

use common::{
    assert_close, assert_close_to_terms, channel_data, gpu, norm, normal, normwise_error, rng,
};
use rand::RngExt;
use wgnorm::cpu::CpuBackend;
use wgnorm::gpu::{AdapterRequest, GpuBackend, ReductionWalk, Tuning};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape, Mode,
    RunningStats, plan_row_chunks, stat,
};
use wgnorm::ops::loss::LossOps;
use wgnorm::reference::batchnorm as reference;
use wgnorm::{Backend, Dtype};

const FORWARD_TOLERANCE: f64 = 1e-5;
const BACKWARD_TOLERANCE: f64 = 1e-4;

/// One problem: inputs on the host.
struct Case {
    shape: BatchNormShape,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

impl Case {
    fn random(rng: &mut rand::rngs::StdRng, n: usize, c: usize, s: usize) -> Self {
        Case {
            shape: BatchNormShape::new(n, c, s),
            x: channel_data(rng, n, c, s),
            dy: normal(rng, n * c * s, 0.0, 1.0),
            gamma: (0..c).map(|_| rng.random_range(0.5..1.5)).collect(),
            beta: normal(rng, c, 0.0, 1.0),
            running_mean: normal(rng, c, 0.0, 1.0),
            running_var: (0..c).map(|_| rng.random_range(0.5..2.0)).collect(),
        }
    }

    /// x, γ and β, and the running statistics, on `backend`.
    fn upload<B: BatchNormOps>(&self, backend: &B) -> (B::Buffer, Affine<B>, RunningStats<B>) {
        let affine = Affine::<B> {
            gamma: backend.upload(&self.gamma).unwrap(),
            beta: backend.upload(&self.beta).unwrap(),
        };
        let running = RunningStats::<B> {
            mean: backend.upload(&self.running_mean).unwrap(),
            var: backend.upload(&self.running_var).unwrap(),
        };
        (backend.upload(&self.x).unwrap(), affine, running)
    }

    /// The same problem with training statistics over `ghost_batches` ghost batches.
    fn in_ghost_batches(self, ghost_batches: usize) -> Self {
        Case {
            shape: self.shape.with_ghost_batches(ghost_batches),
            ..self
        }
    }
}

/// Where element i's training statistics are: ghost batch · C + channel.
fn statistic_of(shape: BatchNormShape, i: usize) -> usize {
    let ghost = i / (shape.c * shape.s) / shape.ghost_rows();
    ghost * shape.c + (i / shape.s) % shape.c
}

/// Runs train forward, backward and eval forward of `case` on `backend` and checks every output
/// against the reference.
fn check<B: BatchNormOps>(backend: &B, case: &Case) -> wgnorm::Result<()> {
    let shape = case.shape;
    let config = BatchNormConfig::default();
    let label = format!("{} {shape:?}", backend.describe());
    let poisoned = |len| backend.filled(len, f32::NAN);
    let x = backend.upload(&case.x)?;
    let affine = Affine::<B> {
        gamma: backend.upload(&case.gamma)?,
        beta: backend.upload(&case.beta)?,
    };
    let mut running = RunningStats::<B> {
        mean: backend.upload(&case.running_mean)?,
        var: backend.upload(&case.running_var)?,
    };

    let mut forward = BatchNormForward::<B> {
        y: poisoned(shape.numel())?,
        stats: poisoned(shape.stats_len())?,
    };
    backend.batchnorm_forward(
        Mode::Train,
        &x,
        shape,
        &affine,
        &mut running,
        config,
        &mut forward,
    )?;
    let expected = reference::forward_train(
        &case.x,
        shape,
        &case.gamma,
        &case.beta,
        &case.running_mean,
        &case.running_var,
        config.eps() as f64,
        config.momentum() as f64,
    );
    let stats = backend.download(&forward.stats)?;
    // A plane of every ghost batch's statistics, ghost-major as the reference has them.
    let plane = |p: usize| -> Vec<f32> {
        (stats.chunks_exact(stat::PLANES * shape.c))
            .flat_map(|block| &block[p * shape.c..(p + 1) * shape.c])
            .copied()
            .collect()
    };
    assert_close(
        &format!("{label} y"),
        &backend.download(&forward.y)?,
        &expected.y,
        FORWARD_TOLERANCE,
    );
    assert_close(
        &format!("{label} mean"),
        &plane(stat::MEAN),
        &expected.mean,
        FORWARD_TOLERANCE,
    );
    assert_close(
        &format!("{label} var"),
        &plane(stat::VAR),
        &expected.var,
        FORWARD_TOLERANCE,
    );
    assert_close(
        &format!("{label} invstd"),
        &plane(stat::INVSTD),
        &expected.invstd,
        FORWARD_TOLERANCE,
    );
    // (1 − momentum)·running + momentum·mean: the two terms can cancel (seen at N=17, C=1).
    let running_terms: Vec<f64> = (case.running_mean.iter().enumerate())
        .map(|(c, &r)| {
            let ghost_means = expected.mean[c..].iter().step_by(shape.c);
            let mean = ghost_means.map(|m| m.abs()).sum::<f64>() / shape.ghost_batches as f64;
            (1.0 - config.momentum() as f64) * (r as f64).abs() + config.momentum() as f64 * mean
        })
        .collect();
    assert_close_to_terms(
        &format!("{label} running mean"),
        &backend.download(&running.mean)?,
        &expected.running_mean,
        norm(&running_terms),
        FORWARD_TOLERANCE,
    );
    assert_close(
        &format!("{label} running var"),
        &backend.download(&running.var)?,
        &expected.running_var,
        FORWARD_TOLERANCE,
    );

    let dy = backend.upload(&case.dy)?;
    let mut grads = BatchNormGrads::<B> {
        dx: poisoned(shape.numel())?,
        dgamma: poisoned(shape.c)?,
        dbeta: poisoned(shape.c)?,
    };
    backend.batchnorm_backward(&x, &dy, shape, &affine.gamma, &forward.stats, &mut grads)?;
    let expected = reference::backward(&case.x, &case.dy, shape, &case.gamma, config.eps() as f64);
    let terms = cancelling_terms(
        case,
        &reference::moments(&case.x, shape).1,
        config.eps() as f64,
    );
    assert_close_to_terms(
        &format!("{label} dx"),
        &backend.download(&grads.dx)?,
        &expected.dx,
        terms,
        BACKWARD_TOLERANCE,
    );
    let (dgamma_terms, dbeta_terms) = sum_terms(case, config.eps() as f64);
    assert_close_to_terms(
        &format!("{label} dgamma"),
        &backend.download(&grads.dgamma)?,
        &expected.dgamma,
        dgamma_terms,
        BACKWARD_TOLERANCE,
    );
    assert_close_to_terms(
        &format!("{label} dbeta"),
        &backend.download(&grads.dbeta)?,
        &expected.dbeta,
        dbeta_terms,
        BACKWARD_TOLERANCE,
    );

    let mut fresh = RunningStats::<B> {
        mean: backend.upload(&case.running_mean)?,
        var: backend.upload(&case.running_var)?,
    };
    let mut eval = BatchNormForward::<B> {
        y: poisoned(shape.numel())?,
        stats: poisoned(shape.stats_len())?,
    };
    backend.batchnorm_forward(
        Mode::Eval,
        &x,
        shape,
        &affine,
        &mut fresh,
        config,
        &mut eval,
    )?;
    let expected = reference::forward_eval(
        &case.x,
        shape,
        &case.gamma,
        &case.beta,
        &case.running_mean,
        &case.running_var,
        config.eps() as f64,
    );
    assert_close(
        &format!("{label} eval y"),
        &backend.download(&eval.y)?,
        &expected,
        FORWARD_TOLERANCE,
    );
    assert_eq!(
        backend.download(&fresh.mean)?,
        case.running_mean,
        "{label}: eval changed the running mean"
    );
    Ok(())
}

/// ‖Σ_c |dy·x̂|‖ and ‖Σ_c |dy|‖: the sizes of the sums whose results are dγ and dβ, which can
/// cancel when a channel has few values.
fn sum_terms(case: &Case, eps: f64) -> (f64, f64) {
    let shape = case.shape;
    let (mean, var) = reference::moments(&case.x, shape);
    let mut dgamma = vec![0.0; shape.c];
    let mut dbeta = vec![0.0; shape.c];
    for (i, (&x, &g)) in case.x.iter().zip(&case.dy).enumerate() {
        let (k, c) = (statistic_of(shape, i), (i / shape.s) % shape.c);
        let xhat = (x as f64 - mean[k]) / (var[k] + eps).sqrt();
        dgamma[c] += (g as f64 * xhat).abs();
        dbeta[c] += (g as f64).abs();
    }
    (norm(&dgamma), norm(&dbeta))
}

/// ‖γ·invstd·(dy − mean(dy))‖ (the mean over each statistic's values): the size of the terms
/// whose difference is dx.
fn cancelling_terms(case: &Case, var: &[f64], eps: f64) -> f64 {
    let shape = case.shape;
    let m = shape.per_channel() as f64;
    let mut mean_dy = vec![0.0; shape.c * shape.ghost_batches];
    for (i, &g) in case.dy.iter().enumerate() {
        mean_dy[statistic_of(shape, i)] += g as f64 / m;
    }
    let terms: Vec<f64> = case
        .dy
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let (k, c) = (statistic_of(shape, i), (i / shape.s) % shape.c);
            case.gamma[c] as f64 / (var[k] + eps).sqrt() * (g as f64 - mean_dy[k])
        })
        .collect();
    norm(&terms)
}

const ROWS: [usize; 6] = [2, 3, 17, 256, 1000, 65537];
const CHANNELS: [usize; 4] = [1, 7, 128, 513];

fn all_2d<B: BatchNormOps>(backend: &B, test: &str) {
    let mut rng = rng(test);
    for n in ROWS {
        for c in CHANNELS {
            check(backend, &Case::random(&mut rng, n, c, 1)).unwrap();
        }
    }
}

fn all_nchw<B: BatchNormOps>(backend: &B, test: &str) {
    let mut rng = rng(test);
    for s in [49, 784] {
        for n in [2, 3, 17, 256] {
            for c in [1, 7, 128] {
                check(backend, &Case::random(&mut rng, n, c, s)).unwrap();
            }
        }
    }
    check(backend, &Case::random(&mut rng, 65537, 1, 49)).unwrap();
    check(backend, &Case::random(&mut rng, 1000, 7, 784)).unwrap();
}

/// A constant channel (variance 0: y = β, dx finite) and a channel at mean 1e4 with spread 1e-2
/// beside ordinary ones: in scalars, and in vectors of four channels (4 channels, S = 1) or of
/// four positions (S = 784) on the GPU.
fn hard_channels<B: BatchNormOps>(backend: &B, test: &str) {
    let mut rng = rng(test);
    for (n, c, s) in [
        (1000, 3, 1),
        (1000, 4, 1),
        (65537, 4, 1),
        (17, 3, 49),
        (17, 3, 784),
    ] {
        let mut case = Case::random(&mut rng, n, c, s);
        let spread = normal(&mut rng, n * s, 0.0, 1.0);
        for row in 0..n {
            for j in 0..s {
                case.x[(row * c) * s + j] = 2.5;
                case.x[(row * c + 1) * s + j] = 1e4 + 1e-2 * spread[row * s + j];
            }
        }
        check(backend, &case).unwrap();
        let (x, affine, mut running) = case.upload(backend);
        let out = backend
            .batchnorm_forward_new(
                Mode::Train,
                &x,
                case.shape,
                &affine,
                &mut running,
                BatchNormConfig::default(),
            )
            .unwrap();
        let y = backend.download(&out.y).unwrap();
        for row in 0..n {
            for j in 0..s {
                assert_eq!(
                    y[(row * c) * s + j],
                    case.beta[0],
                    "constant channel: y must equal beta"
                );
            }
        }
    }
}

/// Ghost batches: statistics per run of N/G samples, as 2-D batches (scalars and vectors of
/// four channels) and NCHW (vectors of four positions and scalars); on the GPU both finished one
/// after another by one dispatch (up to 1 MiB and 16 ghost batches) and spread over the grid
/// with one or several splits each (the last four); dγ and dβ summed over them, the running
/// statistics from their mean.
fn ghost_batches<B: BatchNormOps>(backend: &B, test: &str) {
    let mut rng = rng(test);
    for (n, c, s, ghosts) in [
        (64, 7, 1, 8),
        (96, 4, 1, 3),
        (256, 128, 1, 8),
        (32, 3, 49, 4),
        (16, 8, 784, 2),
        (8192, 16, 1, 2),
        (65536, 4, 1, 16),
        (256, 128, 1, 32),
        (131072, 4, 1, 4),
        (64, 16, 784, 4),
        (1024, 300, 1, 512),
    ] {
        let case = Case::random(&mut rng, n, c, s).in_ghost_batches(ghosts);
        check(backend, &case).unwrap();
    }
    // Ghost batches that do not divide the batch are refused, naming both.
    let case = Case::random(&mut rng, 10, 3, 1).in_ghost_batches(4);
    let (x, affine, mut running) = case.upload(backend);
    let err = backend
        .batchnorm_forward_new(Mode::Train, &x, case.shape, &affine, &mut running, {
            BatchNormConfig::default()
        })
        .err()
        .expect("10 samples in 4 ghost batches");
    assert!(
        err.to_string()
            .contains("cannot split 10 samples into 4 ghost batches"),
        "{err}"
    );
}

fn rejects_bad_calls<B: BatchNormOps>(backend: &B) {
    let shape = BatchNormShape::new(1, 4, 1);
    let x = backend.upload(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let affine = Affine::<B> {
        gamma: backend.filled(4, 1.0).unwrap(),
        beta: backend.filled(4, 0.0).unwrap(),
    };
    let mut running = RunningStats::<B> {
        mean: backend.filled(4, 0.0).unwrap(),
        var: backend.filled(4, 1.0).unwrap(),
    };
    let config = BatchNormConfig::default();
    let err = backend
        .batchnorm_forward_new(Mode::Train, &x, shape, &affine, &mut running, config)
        .err()
        .expect("m = 1 in training must be refused");
    assert!(
        err.to_string().contains("more than 1 value per channel"),
        "{err}"
    );
    backend
        .batchnorm_forward_new(Mode::Eval, &x, shape, &affine, &mut running, config)
        .expect("eval with one sample is fine");

    let wrong = BatchNormShape::new(2, 4, 1);
    let err = backend
        .batchnorm_forward_new(Mode::Train, &x, wrong, &affine, &mut running, config)
        .err()
        .expect("x of 4 values for an 8-value shape must be refused");
    assert!(
        err.to_string().contains("x has 4 values, expected 8"),
        "{err}"
    );
}

backend_test!(matches_reference_on_2d_shapes, |backend, rng| all_2d(
    backend,
    "matches_reference_on_2d_shapes"
));
backend_test!(matches_reference_on_nchw_shapes, |backend, rng| all_nchw(
    backend,
    "matches_reference_on_nchw_shapes"
));
backend_test!(
    handles_constant_and_far_from_zero_channels,
    |backend, rng| hard_channels(backend, "handles_constant_and_far_from_zero_channels")
);
backend_test!(rejects_bad_calls, |backend, rng| rejects_bad_calls(backend));
backend_test!(ghost_batches_match_the_reference, |backend, rng| {
    ghost_batches(backend, "ghost_batches_match_the_reference")
});

/// The chunked path on every adapter: a backend of its own plans with a binding limit of 64 KiB,
/// so x is bound in aligned chunks of rows; the results match the reference all the same, and
/// a sample larger than the limit is refused naming it.
#[test]
fn gpu_chunks_inputs_beyond_the_binding_limit() {
    if gpu().is_none() {
        return;
    }
    let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    backend.set_max_binding_for_tests(64 << 10);
    let limits = backend.limits();
    let shape = BatchNormShape::new(300, 129, 1);
    let chunks = plan_row_chunks(
        shape,
        Dtype::F32,
        backend.max_binding(),
        limits.min_storage_buffer_offset_alignment as u64,
    )
    .unwrap();
    assert!(chunks.len() > 1, "{chunks:?}");
    let mut rng = rng("gpu_chunks_inputs_beyond_the_binding_limit");
    for (n, c, s) in [(300, 129, 1), (65, 300, 1), (200, 4, 64)] {
        check(&backend, &Case::random(&mut rng, n, c, s)).unwrap();
    }
    // Chunks of whole ghost batches: four of 32 samples (16 KiB each), and one of 50 (50 KiB).
    for (n, c, s, ghosts) in [(256, 128, 1, 8), (200, 4, 64, 4)] {
        let case = Case::random(&mut rng, n, c, s).in_ghost_batches(ghosts);
        check(&backend, &case).unwrap();
    }
    let too_wide = BatchNormShape::new(2, 3, 10_000);
    let x = backend.upload(&vec![1.0; too_wide.numel()]).unwrap();
    let affine = Affine {
        gamma: backend.filled(3, 1.0).unwrap(),
        beta: backend.filled(3, 0.0).unwrap(),
    };
    let mut running = RunningStats {
        mean: backend.filled(3, 0.0).unwrap(),
        var: backend.filled(3, 1.0).unwrap(),
    };
    let err = backend
        .batchnorm_forward_new(
            Mode::Train,
            &x,
            too_wide,
            &affine,
            &mut running,
            Default::default(),
        )
        .err()
        .expect("a 120 kB sample over a 64 KiB limit");
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

/// Grids of either adapter class on whichever adapter runs the tests: a backend of its own
/// walks x in both orders, with one and with eight channels per workgroup where samples have
/// positions, on 2-D and NCHW shapes, one and several splits per channel, and the hard channels.
#[test]
fn gpu_grids_of_every_adapter_class_match_the_reference() {
    if gpu().is_none() {
        return;
    }
    let backend = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    for reduction_walk in [ReductionWalk::Interleaved, ReductionWalk::Contiguous] {
        for lanes_c_spatial in [1, 8] {
            backend.set_tuning(Tuning {
                reduction_walk,
                lanes_c_spatial,
                ..backend.tuning()
            });
            let test = format!("{reduction_walk:?} walk, {lanes_c_spatial} spatial channels");
            let mut rng = rng(&test);
            for (n, c, s) in [
                (3, 7, 1),
                (256, 128, 1),
                (4099, 64, 1),
                (65537, 4, 1),
                (17, 3, 784),
                (256, 7, 49),
                (1000, 2, 784),
            ] {
                check(&backend, &Case::random(&mut rng, n, c, s))
                    .unwrap_or_else(|e| panic!("{test}: {e}"));
            }
            hard_channels(&backend, &test);
        }
    }
}

/// Keras' conventions through the config: momentum 0.01 on the new value, eps 1e-3, and the
/// biased batch variance entering the running variance.
/// γ = 1 and β = 0, running mean 0.5 and variance 2, for `channels` channels.
fn identity_affine_and_running<B: BatchNormOps>(
    backend: &B,
    channels: usize,
) -> (Affine<B>, RunningStats<B>) {
    let affine = Affine::<B> {
        gamma: backend.filled(channels, 1.0).unwrap(),
        beta: backend.filled(channels, 0.0).unwrap(),
    };
    let running = RunningStats::<B> {
        mean: backend.filled(channels, 0.5).unwrap(),
        var: backend.filled(channels, 2.0).unwrap(),
    };
    (affine, running)
}

fn keras_conventions<B: BatchNormOps>(backend: &B, rng: &mut rand::rngs::StdRng) {
    let shape = BatchNormShape::new(9, 5, 1);
    let x = channel_data(rng, shape.n, shape.c, shape.s);
    let config = BatchNormConfig::new(1e-3, 0.01, false).unwrap();
    let (gamma, beta) = (vec![1.0f32; shape.c], vec![0.0f32; shape.c]);
    let (r_mean, r_var) = (vec![0.5f32; shape.c], vec![2.0f32; shape.c]);
    let (affine, mut running) = identity_affine_and_running(backend, shape.c);
    let xb = backend.upload(&x).unwrap();
    let out = backend
        .batchnorm_forward_new(Mode::Train, &xb, shape, &affine, &mut running, config)
        .unwrap();
    let (mean, var) = reference::moments(&x, shape);
    let expected_var: Vec<f64> = var.iter().map(|v| 0.99 * 2.0 + 0.01 * v).collect();
    let expected_mean: Vec<f64> = mean.iter().map(|m| 0.99 * 0.5 + 0.01 * m).collect();
    let what = backend.describe();
    assert_close(
        &format!("{what} biased running var"),
        &backend.download(&running.var).unwrap(),
        &expected_var,
        1e-6,
    );
    assert_close(
        &format!("{what} running mean"),
        &backend.download(&running.mean).unwrap(),
        &expected_mean,
        1e-6,
    );
    let y = reference::forward_train(&x, shape, &gamma, &beta, &r_mean, &r_var, 1e-3, 0.01).y;
    assert_close(
        &format!("{what} y with eps 1e-3"),
        &backend.download(&out.y).unwrap(),
        &y,
        1e-5,
    );
}

backend_test!(follows_keras_conventions_when_asked, |backend, rng| {
    keras_conventions(backend, rng)
});

/// A channel whose batch holds a NaN or an infinity keeps its running statistics, and the
/// channels beside it update as usual: on one split per channel and on several.
fn non_finite_channels<B: BatchNormOps>(backend: &B, rng: &mut rand::rngs::StdRng) {
    for n in [8, 100_000] {
        let shape = BatchNormShape::new(n, 3, 1);
        let mut x = channel_data(rng, shape.n, shape.c, shape.s);
        x[3 * shape.c] = f32::NAN;
        x[(n / 2) * shape.c + 2] = f32::INFINITY;
        let (affine, mut running) = identity_affine_and_running(backend, shape.c);
        let xb = backend.upload(&x).unwrap();
        let config = BatchNormConfig::default();
        backend
            .batchnorm_forward_new(Mode::Train, &xb, shape, &affine, &mut running, config)
            .unwrap();
        let (mean, var) = (
            backend.download(&running.mean).unwrap(),
            backend.download(&running.var).unwrap(),
        );
        let what = format!("{} n = {n}", backend.describe());
        for channel in [0, 2] {
            assert_eq!(mean[channel], 0.5, "{what}: channel {channel} mean");
            assert_eq!(var[channel], 2.0, "{what}: channel {channel} var");
        }
        let finite: Vec<f32> = x.iter().skip(1).step_by(shape.c).copied().collect();
        let one = BatchNormShape::new(n, 1, 1);
        let (batch_mean, batch_var) = reference::moments(&finite, one);
        let unbiased = n as f64 / (n as f64 - 1.0);
        assert_close(
            &format!("{what}: channel 1 mean"),
            &mean[1..2],
            &[0.9 * 0.5 + 0.1 * batch_mean[0]],
            1e-6,
        );
        assert_close(
            &format!("{what}: channel 1 var"),
            &var[1..2],
            &[0.9 * 2.0 + 0.1 * batch_var[0] * unbiased],
            1e-6,
        );
    }
}

backend_test!(non_finite_channels_keep_running_stats, |backend, rng| {
    non_finite_channels(backend, rng)
});

/// f16 storage at the edge of its range: values near ±6e4 (whose squares f16 could not hold)
/// and a channel constant at 65504, the largest f16. The statistics are summed in f32, so they
/// match the float64 reference within the f32 tolerance, and the constant channel's variance is
/// 0 and its output β.
#[test]
fn gpu_f16_statistics_hold_at_the_f16_range_limits() {
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    let mut rng = rng("gpu_f16_range_limits");
    let shape = BatchNormShape::new(512, 3, 1);
    // f16 spacing is 32 between 32768 and 65504, so these are exact.
    let x: Vec<f32> = (0..shape.n)
        .flat_map(|_| {
            let step = rng.random_range(-50..=50) as f32 * 32.0;
            [60000.0 + step, 65504.0, -60000.0 - step]
        })
        .collect();
    let (gamma, beta) = (vec![1.5f32; 3], vec![0.25f32; 3]);
    let (r_mean, r_var) = (vec![0.0f32; 3], vec![1.0f32; 3]);
    let affine = Affine::<GpuBackend> {
        gamma: gpu.upload(&gamma).unwrap(),
        beta: gpu.upload(&beta).unwrap(),
    };
    let mut running = RunningStats::<GpuBackend> {
        mean: gpu.upload(&r_mean).unwrap(),
        var: gpu.upload(&r_var).unwrap(),
    };
    let config = BatchNormConfig::default();
    let mut forward = BatchNormForward::<GpuBackend> {
        y: gpu.scratch_as(shape.numel(), Dtype::F16).unwrap(),
        stats: gpu.scratch(shape.stats_len()).unwrap(),
    };
    let xb = gpu.upload_as(&x, Dtype::F16).unwrap();
    gpu.batchnorm_forward(
        Mode::Train,
        &xb,
        shape,
        &affine,
        &mut running,
        config,
        &mut forward,
    )
    .unwrap();
    let want = reference::forward_train(
        &x,
        shape,
        &gamma,
        &beta,
        &r_mean,
        &r_var,
        config.eps() as f64,
        config.momentum() as f64,
    );
    let stats = gpu.download(&forward.stats).unwrap();
    let plane = |p: usize| &stats[p * 3..(p + 1) * 3];
    assert_close(
        "f16 range mean",
        plane(stat::MEAN),
        &want.mean,
        FORWARD_TOLERANCE,
    );
    assert_close(
        "f16 range var",
        plane(stat::VAR),
        &want.var,
        FORWARD_TOLERANCE,
    );
    assert_eq!(plane(stat::VAR)[1], 0.0, "the constant channel's variance");
    let running_var = gpu.download(&running.var).unwrap();
    assert_close(
        "f16 range running var",
        &running_var,
        &want.running_var,
        FORWARD_TOLERANCE,
    );
    let y = gpu.download(&forward.y).unwrap();
    assert!(
        y.iter().skip(1).step_by(3).all(|&v| v == 0.25),
        "constant channel: y = β"
    );
    let y_error = normwise_error(&y, &want.y);
    assert!(y_error < 2e-3, "f16 range y: {y_error:.2e}");
}

/// f16 storage of x, y, dy and dx: every value is rounded once to f16 (relative error ≤ 2⁻¹¹
/// ≈ 4.9e-4) and all arithmetic is f32. Documented tolerance: against the float64 reference on
/// the f16-rounded inputs, y and dx within 2e-3 normwise, the statistics and dγ, dβ (kept in
/// f32) within the f32 tolerances.
#[test]
fn gpu_f16_storage_stays_within_the_documented_tolerance() {
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    let mut rng = rng("gpu_f16_storage");
    for (n, c, s) in [(1000, 128, 1), (64, 7, 49), (3, 5, 1)] {
        let case = Case::random(&mut rng, n, c, s);
        let shape = case.shape;
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let (x16, dy16) = (round(&case.x), round(&case.dy));
        let x = gpu.upload_as(&case.x, Dtype::F16).unwrap();
        let dy = gpu.upload_as(&case.dy, Dtype::F16).unwrap();
        let affine = Affine::<GpuBackend> {
            gamma: gpu.upload(&case.gamma).unwrap(),
            beta: gpu.upload(&case.beta).unwrap(),
        };
        let mut running = RunningStats::<GpuBackend> {
            mean: gpu.upload(&case.running_mean).unwrap(),
            var: gpu.upload(&case.running_var).unwrap(),
        };
        let config = BatchNormConfig::default();
        let mut forward = BatchNormForward::<GpuBackend> {
            y: gpu.scratch_as(shape.numel(), Dtype::F16).unwrap(),
            stats: gpu.scratch(shape.stats_len()).unwrap(),
        };
        gpu.batchnorm_forward(
            Mode::Train,
            &x,
            shape,
            &affine,
            &mut running,
            config,
            &mut forward,
        )
        .unwrap();
        let mut grads = BatchNormGrads::<GpuBackend> {
            dx: gpu.scratch_as(shape.numel(), Dtype::F16).unwrap(),
            dgamma: gpu.scratch(c).unwrap(),
            dbeta: gpu.scratch(c).unwrap(),
        };
        gpu.batchnorm_backward(&x, &dy, shape, &affine.gamma, &forward.stats, &mut grads)
            .unwrap();
        let want = reference::forward_train(
            &x16,
            shape,
            &case.gamma,
            &case.beta,
            &case.running_mean,
            &case.running_var,
            config.eps() as f64,
            config.momentum() as f64,
        );
        let want_grads = reference::backward(&x16, &dy16, shape, &case.gamma, config.eps() as f64);
        let label = format!("f16 {shape:?}");
        let y = gpu.download(&forward.y).unwrap();
        let y_error = normwise_error(&y, &want.y);
        assert!(y_error < 2e-3, "{label} y: {y_error:.2e}");
        assert!(
            y_error > 1e-5,
            "{label} y was not stored as f16: {y_error:.2e}"
        );
        let stats = gpu.download(&forward.stats).unwrap();
        assert_close(
            &format!("{label} mean"),
            &stats[stat::MEAN * c..(stat::MEAN + 1) * c],
            &want.mean,
            FORWARD_TOLERANCE,
        );
        let dx_error = normwise_error(&gpu.download(&grads.dx).unwrap(), &want_grads.dx);
        assert!(dx_error < 2e-3, "{label} dx: {dx_error:.2e}");
        assert_close(
            &format!("{label} dgamma"),
            &gpu.download(&grads.dgamma).unwrap(),
            &want_grads.dgamma,
            BACKWARD_TOLERANCE,
        );
    }
}

#[test]
fn f16_buffers_are_refused_where_no_kernel_can_take_them() {
    assert!(!CpuBackend.supports(Dtype::F16));
    let err = CpuBackend
        .upload_as(&[1.0], Dtype::F16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpu cannot store F16"), "{err}");
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    // The loss has no f16 variant: f16 logits are refused by name, not misread.
    let logits = gpu.upload_as(&[0.0; 6], Dtype::F16).unwrap();
    let labels = gpu.upload(&[0.0, 1.0]).unwrap();
    let mut metrics = gpu.filled(wgnorm::ops::loss::metric::LEN, 0.0).unwrap();
    let err = gpu
        .softmax_cross_entropy(&logits, &labels, 3, None, &mut metrics)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("softmax_cross_entropy cannot take a F16 buffer as x"),
        "{err}"
    );
}
