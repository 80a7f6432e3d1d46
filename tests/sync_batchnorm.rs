//! The pieces of synchronized BatchNorm on both backends against the float64 reference: a batch
//! split into slices, each reduced alone, the slices' statistics merged, each slice normalized
//! by the merged ones, and each slice's dx from the summed dβ and dγ, must give what BatchNorm
//! over the whole batch gives.

#[macro_use]
mod common;

use common::{assert_close, channel_data, normal};
use rand::RngExt;
use wgnorm::distributed::sync_bn::{merge_planes, update_running};
use wgnorm::ops::activation::{Activation, DropoutMask};
use wgnorm::ops::batchnorm::{
    Affine, BatchNormConfig, BatchNormForward, BatchNormGrads, BatchNormOps, BatchNormShape,
    BatchSums, Mode, RunningStats, stat,
};
use wgnorm::reference::batchnorm as reference;

const TOLERANCE: f64 = 1e-5;

/// A batch of `n` samples of `c` channels at `s` positions, around `offset`, cut after the
/// samples in `cuts`.
fn check_slices<B: BatchNormOps>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    (n, c, s): (usize, usize, usize),
    offset: f32,
    cuts: &[usize],
) {
    let shape = BatchNormShape::new(n, c, s);
    let x: Vec<f32> = channel_data(rng, n, c, s)
        .iter()
        .map(|v| v + offset)
        .collect();
    let dy = normal(rng, n * c * s, 0.0, 1.0);
    let gamma: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
    let beta = normal(rng, c, 0.0, 1.0);
    let config = BatchNormConfig::default();
    let eps = f64::from(config.eps());
    let whole = reference::forward_train(
        &x,
        shape,
        &gamma,
        &beta,
        &vec![0.0f32; c],
        &vec![1.0f32; c],
        eps,
        f64::from(config.momentum()),
    );
    let grads = reference::backward(&x, &dy, shape, &gamma, eps);

    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain([n])
        .collect();
    let slices: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let values = |v: &[f32], (first, rows): (usize, usize)| {
        v[first * c * s..(first + rows) * c * s].to_vec()
    };
    let affine = Affine::<B> {
        gamma: backend.upload(&gamma).unwrap(),
        beta: backend.upload(&beta).unwrap(),
    };

    // Each slice's statistics, merged.
    let mut gathered = Vec::new();
    let mut counts = Vec::new();
    for &slice in &slices {
        let part = BatchNormShape::new(slice.1, c, s);
        let mut running = RunningStats::<B> {
            mean: backend.upload(&vec![0.5; c]).unwrap(),
            var: backend.upload(&vec![2.0; c]).unwrap(),
        };
        let mut out = BatchNormForward::<B> {
            y: backend.filled(part.numel(), f32::NAN).unwrap(),
            stats: backend.filled(part.stats_len(), f32::NAN).unwrap(),
        };
        let x_part = backend.upload(&values(&x, slice)).unwrap();
        backend
            .batchnorm_partial_statistics(&x_part, part, &affine, &mut running, config, &mut out)
            .unwrap();
        assert_eq!(
            backend.download(&running.mean).unwrap(),
            vec![0.5; c],
            "running mean left alone"
        );
        assert_eq!(
            backend.download(&running.var).unwrap(),
            vec![2.0; c],
            "running var left alone"
        );
        gathered.extend(backend.download(&out.stats).unwrap());
        counts.push(part.per_channel() as u64);
    }
    let (merged, total) = merge_planes(&gathered, &counts, c, config.eps()).unwrap();
    assert_eq!(total, shape.per_channel() as u64);
    let plane = |p: usize| merged[p * c..(p + 1) * c].to_vec();
    assert_close("merged mean", &plane(stat::MEAN), &whole.mean, TOLERANCE);
    assert_close("merged var", &plane(stat::VAR), &whole.var, TOLERANCE);
    assert_close(
        "merged invstd",
        &plane(stat::INVSTD),
        &whole.invstd,
        TOLERANCE,
    );
    let (mut running_mean, mut running_var) = (vec![0.0; c], vec![1.0; c]);
    update_running(&merged, total, config, &mut running_mean, &mut running_var).unwrap();
    assert_close(
        "running mean",
        &running_mean,
        &whole.running_mean,
        TOLERANCE,
    );
    assert_close("running var", &running_var, &whole.running_var, TOLERANCE);

    // Each slice normalized by the merged statistics, and its share of dβ and dγ.
    let stats = backend.upload(&merged).unwrap();
    let (mut y, mut dbeta, mut dgamma) = (Vec::new(), vec![0.0f32; c], vec![0.0f32; c]);
    for &slice in &slices {
        let part = BatchNormShape::new(slice.1, c, s);
        let x_part = backend.upload(&values(&x, slice)).unwrap();
        let mut y_part = backend.filled(part.numel(), f32::NAN).unwrap();
        backend
            .batchnorm_apply(&x_part, part, &affine, &stats, None, &mut y_part)
            .unwrap();
        y.extend(backend.download(&y_part).unwrap());
        let mut own = BatchNormGrads::<B> {
            dx: backend.filled(part.numel(), f32::NAN).unwrap(),
            dgamma: backend.filled(c, f32::NAN).unwrap(),
            dbeta: backend.filled(c, f32::NAN).unwrap(),
        };
        let dy_part = backend.upload(&values(&dy, slice)).unwrap();
        backend
            .batchnorm_parameter_grads(
                &x_part,
                None,
                &dy_part,
                part,
                &affine.gamma,
                &stats,
                &mut own,
            )
            .unwrap();
        for (sum, v) in dbeta.iter_mut().zip(backend.download(&own.dbeta).unwrap()) {
            *sum += v;
        }
        for (sum, v) in dgamma
            .iter_mut()
            .zip(backend.download(&own.dgamma).unwrap())
        {
            *sum += v;
        }
    }
    assert_close("y", &y, &whole.y, TOLERANCE);
    assert_close("summed dβ", &dbeta, &grads.dbeta, TOLERANCE);
    assert_close("summed dγ", &dgamma, &grads.dgamma, 1e-4);

    // Each slice's dx from the whole batch's sums.
    let mut dx = Vec::new();
    for &slice in &slices {
        let part = BatchNormShape::new(slice.1, c, s);
        let x_part = backend.upload(&values(&x, slice)).unwrap();
        let dy_part = backend.upload(&values(&dy, slice)).unwrap();
        let mut dx_part = backend.filled(part.numel(), f32::NAN).unwrap();
        let sums = BatchSums {
            dbeta: &dbeta,
            dgamma: &dgamma,
            count: total,
        };
        backend
            .batchnorm_backward_input(
                &x_part,
                None,
                &dy_part,
                part,
                (&affine.gamma, &stats),
                sums,
                &mut dx_part,
            )
            .unwrap();
        dx.extend(backend.download(&dx_part).unwrap());
    }
    assert_close("dx", &dx, &grads.dx, 1e-4);
}

backend_test!(flat_features_in_uneven_slices, |backend, rng| {
    check_slices(backend, rng, (37, 6, 1), 0.0, &[12, 13]);
});

backend_test!(channels_with_positions_around_1e4, |backend, rng| {
    // One sample in a slice: statistics from its positions alone.
    check_slices(backend, rng, (9, 4, 7), 1e4, &[1, 5]);
});

backend_test!(
    a_fused_activation_and_dropout_draw_by_the_global_batch,
    |backend, rng| {
        check_activated_slice(backend, rng);
    }
);

/// Rows 8.. of a batch, normalized by the whole batch's statistics with a fused ReLU and
/// dropout, match those rows of the whole batch's pass.
fn check_activated_slice<B: BatchNormOps>(backend: &B, rng: &mut rand::rngs::StdRng) {
    let (n, c) = (20, 8);
    let shape = BatchNormShape::new(n, c, 1);
    let x = channel_data(rng, n, c, 1);
    let config = BatchNormConfig::default();
    let affine = Affine::<B> {
        gamma: backend.upload(&vec![1.2; c]).unwrap(),
        beta: backend.upload(&vec![0.1; c]).unwrap(),
    };
    let mask = DropoutMask::new(0.3, 5, 2, 9);
    let activation = |first_row: usize| Activation {
        relu: true,
        dropout: Some(mask.starting_at(first_row * c)),
    };
    // The whole batch in one pass, and its statistics.
    let mut running = RunningStats::<B> {
        mean: backend.filled(c, 0.0).unwrap(),
        var: backend.filled(c, 1.0).unwrap(),
    };
    let mut whole = BatchNormForward::<B> {
        y: backend.filled(n * c, f32::NAN).unwrap(),
        stats: backend.filled(shape.stats_len(), f32::NAN).unwrap(),
    };
    let x_whole = backend.upload(&x).unwrap();
    backend
        .batchnorm_activation_forward(
            Mode::Train,
            &x_whole,
            shape,
            &affine,
            &mut running,
            config,
            activation(0),
            &mut whole,
        )
        .unwrap();
    let expected: Vec<f64> = backend
        .download(&whole.y)
        .unwrap()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    // Rows 8.. alone, with those statistics and the mask drawn from row 8 of the batch.
    let part = BatchNormShape::new(n - 8, c, 1);
    let x_part = backend.upload(&x[8 * c..]).unwrap();
    let mut y = backend.filled(part.numel(), f32::NAN).unwrap();
    backend
        .batchnorm_apply(
            &x_part,
            part,
            &affine,
            &whole.stats,
            Some(activation(8)),
            &mut y,
        )
        .unwrap();
    assert_close(
        "activated slice",
        &backend.download(&y).unwrap(),
        &expected[8 * c..],
        1e-6,
    );

    // Behind the activation, dβ and dγ alone are those of the whole backward, bit for bit.
    let dy = backend.upload(&normal(rng, n * c, 0.0, 1.0)).unwrap();
    let grads = |parameters_only: bool| {
        let mut grads = BatchNormGrads::<B> {
            dx: backend.filled(n * c, f32::NAN).unwrap(),
            dgamma: backend.filled(c, f32::NAN).unwrap(),
            dbeta: backend.filled(c, f32::NAN).unwrap(),
        };
        let (activated, gamma) = (Some((&whole.y, activation(0))), &affine.gamma);
        match parameters_only {
            true => backend.batchnorm_parameter_grads(
                &x_whole,
                activated,
                &dy,
                shape,
                gamma,
                &whole.stats,
                &mut grads,
            ),
            false => backend.batchnorm_activation_backward(
                &x_whole,
                &whole.y,
                activation(0),
                &dy,
                shape,
                gamma,
                &whole.stats,
                &mut grads,
            ),
        }
        .unwrap();
        (
            backend.download(&grads.dbeta).unwrap(),
            backend.download(&grads.dgamma).unwrap(),
        )
    };
    assert_eq!(grads(true), grads(false));
}
