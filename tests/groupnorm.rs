//! GroupNorm, LayerNorm and InstanceNorm on both backends against the float64 reference, on
//! seeded random inputs. Outputs are poisoned with NaN before every call, so an element
//! a kernel forgets to write shows up as an error.

#[macro_use]
mod common;

use common::{assert_close, assert_close_to_terms, normal, normwise_error, rng};
use rand::RngExt;
use wgnorm::gpu::GpuBackend;
use wgnorm::ops::batchnorm::{Affine, BatchNormForward, BatchNormGrads, stat};
use wgnorm::ops::groupnorm::{GroupNormOps, GroupNormShape};
use wgnorm::reference::groupnorm::{self as reference, Groups};
use wgnorm::{Backend, Dtype};

const EPS: f32 = 1e-5;
const FORWARD_TOLERANCE: f64 = 1e-5;
const BACKWARD_TOLERANCE: f64 = 1e-4;

/// One problem: inputs on the host, each channel with a mean and spread of its own.
struct Case {
    shape: GroupNormShape,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Case {
    fn random(rng: &mut rand::rngs::StdRng, shape: GroupNormShape) -> Self {
        let c = shape.channels;
        let params: Vec<(f32, f32)> = (0..c)
            .map(|_| (rng.random_range(-3.0..3.0), rng.random_range(0.5..2.0)))
            .collect();
        let unit = normal(rng, shape.numel(), 0.0, 1.0);
        let x = unit
            .iter()
            .enumerate()
            .map(|(i, &z)| params[i % c].0 + params[i % c].1 * z)
            .collect();
        Case {
            shape,
            x,
            dy: normal(rng, shape.numel(), 0.0, 1.0),
            gamma: (0..c).map(|_| rng.random_range(0.5..1.5)).collect(),
            beta: normal(rng, c, 0.0, 1.0),
        }
    }

    fn groups(&self) -> Groups {
        Groups {
            samples: self.shape.samples,
            channels: self.shape.channels,
            groups: self.shape.groups,
        }
    }

    fn affine<B: Backend>(&self, backend: &B) -> Affine<B> {
        Affine {
            gamma: backend.upload(&self.gamma).unwrap(),
            beta: backend.upload(&self.beta).unwrap(),
        }
    }
}

/// A plane of the statistics, (sample, group) in order as the reference has them.
fn plane(stats: &[f32], groups: usize, p: usize) -> Vec<f32> {
    (stats.chunks_exact(stat::PLANES * groups))
        .flat_map(|block| &block[p * groups..(p + 1) * groups])
        .copied()
        .collect()
}

/// ‖invstd·(dy·γ − its mean over the statistic's values)‖: the size of the terms whose
/// difference is dx, and ‖Σ|dy·x̂|‖, ‖Σ|dy|‖ per channel, those of dγ and dβ.
fn cancelling_terms(case: &Case) -> [f64; 3] {
    let groups = case.groups();
    let (mean, var) = reference::moments(&case.x, groups);
    let per_sample = case.x.len() / groups.samples;
    let group_channels = groups.channels / groups.groups;
    let statistic =
        |i: usize| (i / per_sample) * groups.groups + (i % groups.channels) / group_channels;
    let m = case.shape.per_group() as f64;
    let scaled = |i: usize| case.dy[i] as f64 * case.gamma[i % groups.channels] as f64;
    let mut mean_scaled = vec![0.0; mean.len()];
    for i in 0..case.x.len() {
        mean_scaled[statistic(i)] += scaled(i) / m;
    }
    let (mut dx, mut dgamma, mut dbeta) =
        (0.0, vec![0.0; groups.channels], vec![0.0; groups.channels]);
    for i in 0..case.x.len() {
        let (k, c) = (statistic(i), i % groups.channels);
        let invstd = 1.0 / (var[k] + EPS as f64).sqrt();
        dx += (invstd * (scaled(i) - mean_scaled[k])).powi(2);
        dgamma[c] += (case.dy[i] as f64 * (case.x[i] as f64 - mean[k]) * invstd).abs();
        dbeta[c] += (case.dy[i] as f64).abs();
    }
    [dx.sqrt(), common::norm(&dgamma), common::norm(&dbeta)]
}

/// Forward and backward of `case` on `backend`, every output against the reference.
fn check<B: GroupNormOps>(backend: &B, case: &Case) {
    let shape = case.shape;
    let label = format!("{} {shape:?}", backend.describe());
    let poisoned = |len| backend.filled(len, f32::NAN).unwrap();
    let x = backend.upload(&case.x).unwrap();
    let affine = case.affine(backend);
    let mut forward = BatchNormForward::<B> {
        y: poisoned(shape.numel()),
        stats: poisoned(shape.stats_len()),
    };
    backend
        .groupnorm_forward(&x, shape, &affine, EPS, &mut forward)
        .unwrap();
    let expected = reference::forward(&case.x, case.groups(), &case.gamma, &case.beta, EPS as f64);
    let y = backend.download(&forward.y).unwrap();
    assert_close(&format!("{label} y"), &y, &expected.y, FORWARD_TOLERANCE);
    let stats = backend.download(&forward.stats).unwrap();
    for (name, p, want) in [
        ("mean", stat::MEAN, &expected.mean),
        ("var", stat::VAR, &expected.var),
        ("invstd", stat::INVSTD, &expected.invstd),
    ] {
        let got = plane(&stats, shape.groups, p);
        assert_close(&format!("{label} {name}"), &got, want, FORWARD_TOLERANCE);
    }

    let dy = backend.upload(&case.dy).unwrap();
    let mut grads = BatchNormGrads::<B> {
        dx: poisoned(shape.numel()),
        dgamma: poisoned(shape.channels),
        dbeta: poisoned(shape.channels),
    };
    backend
        .groupnorm_backward(&x, &dy, shape, &affine.gamma, &forward.stats, &mut grads)
        .unwrap();
    let want = reference::backward(&case.x, &case.dy, case.groups(), &case.gamma, EPS as f64);
    let [dx_terms, dgamma_terms, dbeta_terms] = cancelling_terms(case);
    for (name, got, want, terms) in [
        ("dx", &grads.dx, &want.dx, dx_terms),
        ("dgamma", &grads.dgamma, &want.dgamma, dgamma_terms),
        ("dbeta", &grads.dbeta, &want.dbeta, dbeta_terms),
    ] {
        let got = backend.download(got).unwrap();
        let what = format!("{label} {name}");
        assert_close_to_terms(&what, &got, want, terms, BACKWARD_TOLERANCE);
    }
}

/// LayerNorm on features (the MLP's place), GroupNorm and InstanceNorm on images (the CNN's),
/// from the smallest groups to a batch whose dγ and dβ are summed over many splits of rows.
fn shapes() -> Vec<GroupNormShape> {
    vec![
        GroupNormShape::layer_norm(32, 1, 128),
        GroupNormShape::layer_norm(2, 1, 7),
        GroupNormShape::layer_norm(3, 1, 2),
        GroupNormShape::new(17, 1, 128, 32),
        GroupNormShape::layer_norm(5, 49, 16),
        GroupNormShape::new(1, 49, 16, 4),
        GroupNormShape::new(17, 49, 16, 4),
        GroupNormShape::new(4, 784, 8, 2),
        GroupNormShape::new(3, 49, 6, 3),
        GroupNormShape::instance_norm(8, 49, 16),
        GroupNormShape::instance_norm(3, 2, 5),
        GroupNormShape::instance_norm(2, 196, 32),
        GroupNormShape::new(64, 784, 16, 8),
    ]
}

backend_test!(matches_reference, |backend, rng| {
    for shape in shapes() {
        check(backend, &Case::random(rng, shape));
    }
});

// More samples than a grid dimension may have workgroups (65,535 on most adapters): the GPU
// finishes runs of samples per workgroup, so it takes them as the CPU does.
backend_test!(matches_reference_beyond_the_grid_limit, |backend, rng| {
    check(
        backend,
        &Case::random(rng, GroupNormShape::new(70_000, 2, 4, 2)),
    );
});

// A constant group (variance 0: y = β, dx finite) and a group at mean 1e4 with spread 1e-2
// beside an ordinary one, in every sample.
backend_test!(
    holds_on_constant_and_ill_conditioned_groups,
    |backend, rng| {
        for (positions, channels) in [(1, 12), (49, 6), (784, 3)] {
            let shape = GroupNormShape::new(9, positions, channels, 3);
            let mut case = Case::random(rng, shape);
            let group_channels = channels / 3;
            let spread = normal(rng, case.x.len(), 0.0, 1.0);
            for (i, x) in case.x.iter_mut().enumerate() {
                match (i % channels) / group_channels {
                    0 => *x = 2.5,
                    1 => *x = 1e4 + 1e-2 * spread[i],
                    _ => {}
                }
            }
            check(backend, &case);
            let x = backend.upload(&case.x).unwrap();
            let mut out = BatchNormForward::<_> {
                y: backend.filled(shape.numel(), f32::NAN).unwrap(),
                stats: backend.filled(shape.stats_len(), f32::NAN).unwrap(),
            };
            let affine = case.affine(backend);
            backend
                .groupnorm_forward(&x, shape, &affine, EPS, &mut out)
                .unwrap();
            let y = backend.download(&out.y).unwrap();
            for (i, &value) in y.iter().enumerate() {
                if (i % channels) / group_channels == 0 {
                    assert_eq!(value, case.beta[i % channels], "constant group: y = beta");
                }
            }
        }
    }
);

backend_test!(refuses_bad_shapes_and_lengths, |backend, rng| {
    let case = Case::random(rng, GroupNormShape::layer_norm(2, 1, 6));
    let x = backend.upload(&case.x).unwrap();
    let affine = case.affine(backend);
    let forward = |shape: GroupNormShape| {
        let mut out = BatchNormForward::<_> {
            y: backend.scratch(12).unwrap(),
            stats: backend.scratch(shape.stats_len()).unwrap(),
        };
        backend
            .groupnorm_forward(&x, shape, &affine, EPS, &mut out)
            .unwrap_err()
            .to_string()
    };
    let err = forward(GroupNormShape::new(2, 1, 6, 4));
    assert!(
        err.contains("cannot split 6 channels into 4 groups"),
        "{err}"
    );
    let err = forward(GroupNormShape::instance_norm(2, 1, 6));
    assert!(err.contains("more than 1 value per group"), "{err}");
    let err = forward(GroupNormShape::layer_norm(3, 1, 6));
    assert!(err.contains("x has 12 values, expected 18"), "{err}");
    let err = forward(GroupNormShape::layer_norm(2, 1, 0));
    assert!(err.contains("non-empty"), "{err}");
    let mut out = BatchNormForward::<_> {
        y: backend.scratch(12).unwrap(),
        stats: backend.scratch(10).unwrap(),
    };
    let shape = GroupNormShape::layer_norm(2, 1, 6);
    let err = backend
        .groupnorm_forward(&x, shape, &affine, 0.0, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("GroupNorm eps must be a positive"), "{err}");
});

/// f16 storage of x, y, dy and dx: each value is rounded once to f16 and all arithmetic is f32,
/// so against the reference on the rounded inputs y and dx are within 2e-3, the statistics and
/// dγ, dβ (kept in f32) within the f32 tolerances.
#[test]
fn gpu_f16_storage_stays_within_the_documented_tolerance() {
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    let mut rng = rng("groupnorm_f16_storage");
    for shape in [
        GroupNormShape::layer_norm(32, 1, 128),
        GroupNormShape::new(8, 49, 16, 4),
        GroupNormShape::instance_norm(4, 49, 8),
    ] {
        let case = Case::random(&mut rng, shape);
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let (x16, dy16) = (round(&case.x), round(&case.dy));
        let x = gpu.upload_as(&case.x, Dtype::F16).unwrap();
        let dy = gpu.upload_as(&case.dy, Dtype::F16).unwrap();
        let affine = case.affine(gpu);
        let mut forward = BatchNormForward::<GpuBackend> {
            y: gpu.scratch_as(shape.numel(), Dtype::F16).unwrap(),
            stats: gpu.scratch(shape.stats_len()).unwrap(),
        };
        gpu.groupnorm_forward(&x, shape, &affine, EPS, &mut forward)
            .unwrap();
        let mut grads = BatchNormGrads::<GpuBackend> {
            dx: gpu.scratch_as(shape.numel(), Dtype::F16).unwrap(),
            dgamma: gpu.scratch(shape.channels).unwrap(),
            dbeta: gpu.scratch(shape.channels).unwrap(),
        };
        gpu.groupnorm_backward(&x, &dy, shape, &affine.gamma, &forward.stats, &mut grads)
            .unwrap();
        let groups = case.groups();
        let want = reference::forward(&x16, groups, &case.gamma, &case.beta, EPS as f64);
        let want_grads = reference::backward(&x16, &dy16, groups, &case.gamma, EPS as f64);
        let label = format!("f16 {shape:?}");
        let y_error = normwise_error(&gpu.download(&forward.y).unwrap(), &want.y);
        assert!(y_error < 2e-3, "{label} y: {y_error:.2e}");
        assert!(
            y_error > 1e-5,
            "{label} y was not stored as f16: {y_error:.2e}"
        );
        let stats = gpu.download(&forward.stats).unwrap();
        let mean = plane(&stats, shape.groups, stat::MEAN);
        assert_close(
            &format!("{label} mean"),
            &mean,
            &want.mean,
            FORWARD_TOLERANCE,
        );
        let dx_error = normwise_error(&gpu.download(&grads.dx).unwrap(), &want_grads.dx);
        assert!(dx_error < 2e-3, "{label} dx: {dx_error:.2e}");
        for (name, got, want) in [
            ("dgamma", &grads.dgamma, &want_grads.dgamma),
            ("dbeta", &grads.dbeta, &want_grads.dbeta),
        ] {
            let got = gpu.download(got).unwrap();
            assert_close(&format!("{label} {name}"), &got, want, BACKWARD_TOLERANCE);
        }
    }
}
