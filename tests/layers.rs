//! Every layer's gradient two ways: the float64 reference formulas against central finite
//! differences of the float64 forward, and both backends' kernels against those references.
//! `tests/graph.rs` chains the same references through whole models.

#[macro_use]
mod common;

use common::{assert_close, gpu, keeps, linear_backward, linear_forward, normal, rng};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::backend::Backend;
use wgnorm::cpu::CpuBackend;
use wgnorm::graph::Compute;
use wgnorm::ops::activation::{Activation, ActivationOps, DropoutMask};
use wgnorm::ops::batchnorm::BatchNormShape;
use wgnorm::ops::loss::{LossTotals, metric};
use wgnorm::ops::optimizer::OptimizerParams;
use wgnorm::reference;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// ∂f/∂x_i by central differences with a step scaled to x_i.
fn finite_difference(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize) -> f64 {
    let h = 1e-6 * x[i].abs().max(1.0);
    let mut plus = x.to_vec();
    let mut minus = x.to_vec();
    plus[i] += h;
    minus[i] -= h;
    (f(&plus) - f(&minus)) / (2.0 * h)
}

/// Checks `analytic` = ∇f at x on every coordinate (the tensors here are small).
fn check_gradient(what: &str, f: &dyn Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64]) {
    assert_eq!(x.len(), analytic.len(), "{what}: length");
    for (i, &exact) in analytic.iter().enumerate() {
        let numeric = finite_difference(f, x, i);
        assert!(
            (numeric - exact).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "{what}[{i}]: analytic {exact} vs finite difference {numeric}"
        );
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn uniform(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn linear_gradients_match_finite_differences() {
    let mut rng = rng("linear_gradients_match_finite_differences");
    let (rows, inputs, outputs) = (3, 5, 4);
    let x = uniform(&mut rng, rows * inputs);
    let w = uniform(&mut rng, outputs * inputs);
    let b = uniform(&mut rng, outputs);
    let r = uniform(&mut rng, rows * outputs);
    let (dx, dw, db) = linear_backward(&x, &w, &r, rows, inputs, outputs);
    check_gradient(
        "linear dx",
        &|x| dot(&linear_forward(x, &w, &b, rows, inputs), &r),
        &x,
        &dx,
    );
    check_gradient(
        "linear dW",
        &|w| dot(&linear_forward(&x, w, &b, rows, inputs), &r),
        &w,
        &dw,
    );
    check_gradient(
        "linear db",
        &|b| dot(&linear_forward(&x, &w, b, rows, inputs), &r),
        &b,
        &db,
    );
}

/// Plain, and with ghost batches (whose statistics, and so gradients, are per run of samples).
#[test]
fn batchnorm_gradients_match_finite_differences() {
    let mut rng = rng("batchnorm_gradients_match_finite_differences");
    for shape in [
        BatchNormShape::new(4, 3, 1),
        BatchNormShape::new(6, 3, 1).with_ghost_batches(3),
        BatchNormShape::new(4, 2, 3).with_ghost_batches(2),
    ] {
        batchnorm_gradients(&mut rng, shape);
    }
}

fn batchnorm_gradients(rng: &mut StdRng, shape: BatchNormShape) {
    let x = uniform(rng, shape.numel());
    let gamma = uniform(rng, shape.c);
    let beta = uniform(rng, shape.c);
    let r = uniform(rng, shape.numel());
    let (zeros, ones) = (vec![0.0f64; shape.c], vec![1.0f64; shape.c]);
    let forward = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        reference::batchnorm::forward_train(x, shape, gamma, beta, &zeros, &ones, EPS, MOMENTUM).y
    };
    let grads = reference::batchnorm::backward(&x, &r, shape, &gamma, EPS);
    check_gradient(
        "bn dx",
        &|x| dot(&forward(x, &gamma, &beta), &r),
        &x,
        &grads.dx,
    );
    check_gradient(
        "bn dgamma",
        &|g| dot(&forward(&x, g, &beta), &r),
        &gamma,
        &grads.dgamma,
    );
    check_gradient(
        "bn dbeta",
        &|b| dot(&forward(&x, &gamma, b), &r),
        &beta,
        &grads.dbeta,
    );
}

/// LayerNorm of flat features (one group), GroupNorm of images, InstanceNorm (one channel per
/// group): the reference's statistics normalize each (sample, group), and its gradients match
/// finite differences of its forward.
#[test]
fn groupnorm_normalizes_each_group_and_its_gradients_match_finite_differences() {
    use reference::groupnorm::{self, Groups};
    let mut rng = rng("groupnorm_normalizes_each_group_and_its_gradients_match_finite_differences");
    for (samples, positions, channels, groups) in [(3, 1, 5, 1), (2, 3, 4, 2), (2, 4, 3, 3)] {
        let layout = Groups {
            samples,
            channels,
            groups,
        };
        let len = samples * positions * channels;
        let x = uniform(&mut rng, len);
        let (gamma, beta) = (uniform(&mut rng, channels), uniform(&mut rng, channels));
        let r = uniform(&mut rng, len);
        let (ones, zeros) = (vec![1.0f64; channels], vec![0.0f64; channels]);
        let plain = groupnorm::forward(&x, layout, &ones, &zeros, EPS);
        let per_group = positions * channels / groups;
        for (k, (mean, var)) in plain.mean.iter().zip(&plain.var).enumerate() {
            let (sample, group) = (k / groups, k % groups);
            let values: Vec<f64> = (0..positions)
                .flat_map(|p| (0..channels / groups).map(move |j| (p, j)))
                .map(|(p, j)| {
                    plain.y[(sample * positions + p) * channels + group * (channels / groups) + j]
                })
                .collect();
            assert_eq!(values.len(), per_group);
            let y_mean = values.iter().sum::<f64>() / per_group as f64;
            let y_var = values.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / per_group as f64;
            assert!(y_mean.abs() < 1e-12, "group {k}: mean {y_mean}");
            assert!(
                (y_var - var / (var + EPS)).abs() < 1e-12,
                "group {k}: var {y_var}"
            );
            assert!(mean.is_finite());
        }
        let forward = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            groupnorm::forward(x, layout, gamma, beta, EPS).y
        };
        let grads = groupnorm::backward(&x, &r, layout, &gamma, EPS);
        let what = format!("groupnorm {samples}x{positions}x{channels} in {groups} groups");
        check_gradient(
            &format!("{what} dx"),
            &|x| dot(&forward(x, &gamma, &beta), &r),
            &x,
            &grads.dx,
        );
        check_gradient(
            &format!("{what} dgamma"),
            &|g| dot(&forward(&x, g, &beta), &r),
            &gamma,
            &grads.dgamma,
        );
        check_gradient(
            &format!("{what} dbeta"),
            &|b| dot(&forward(&x, &gamma, b), &r),
            &beta,
            &grads.dbeta,
        );
    }
}

#[test]
fn relu_and_dropout_gradients_match_finite_differences() {
    let mut rng = rng("relu_and_dropout_gradients_match_finite_differences");
    // Away from ReLU's kink, where the derivative is defined.
    let x: Vec<f64> = uniform(&mut rng, 40)
        .into_iter()
        .map(|v| if v.abs() < 0.01 { 0.5 } else { v })
        .collect();
    let r = uniform(&mut rng, x.len());
    check_gradient(
        "relu dx",
        &|x| dot(&reference::activation::relu(x), &r),
        &x,
        &reference::activation::relu_backward(&x, &r),
    );
    let keep = keeps(
        &DropoutMask::new(0.3, rng.random(), 3, rng.random()),
        x.len(),
    );
    check_gradient(
        "dropout dx",
        &|x| dot(&reference::activation::dropout(x, &keep, 0.3), &r),
        &x,
        &reference::activation::dropout(&r, &keep, 0.3),
    );
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let mut rng = rng("cross_entropy_gradient_matches_finite_differences");
    let (rows, classes) = (5, 4);
    let logits: Vec<f64> = uniform(&mut rng, rows * classes)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    let labels: Vec<usize> = (0..rows).map(|_| rng.random_range(0..classes)).collect();
    let (_, grad, _) = reference::loss::softmax_cross_entropy(&logits, &labels, classes);
    check_gradient(
        "cross-entropy dlogits",
        &|z| reference::loss::softmax_cross_entropy(z, &labels, classes).0,
        &logits,
        &grad,
    );
}

/// Compares the change an update made, updated − before, with the reference's: the step is the
/// optimizer's output, small next to the parameter it is added to.
fn assert_step_close(what: &str, updated: &[f32], before: &[f32], reference: &[f64]) {
    let step: Vec<f32> = updated.iter().zip(before).map(|(a, b)| a - b).collect();
    let step_ref: Vec<f64> = reference
        .iter()
        .zip(before)
        .map(|(a, &b)| a - f64::from(b))
        .collect();
    assert_close(what, &step, &step_ref, 1e-4);
}

/// ReLU, dropout, cross-entropy and both optimizers on `backend` against the references.
fn elementwise_ops_match_references<B: Compute>(backend: &B, rng: &mut StdRng) {
    let len = 3000;
    let x = normal(rng, len, 0.0, 1.0);
    let dy = normal(rng, len, 0.0, 1.0);
    let xb = backend.upload(&x).unwrap();
    let dyb = backend.upload(&dy).unwrap();
    let mut out = backend.filled(len, f32::NAN).unwrap();

    backend.relu_forward(&xb, &mut out).unwrap();
    assert_close(
        "relu",
        &backend.download(&out).unwrap(),
        &reference::activation::relu(&x),
        1e-7,
    );
    backend.relu_backward(&xb, &dyb, &mut out).unwrap();
    assert_close(
        "relu dx",
        &backend.download(&out).unwrap(),
        &reference::activation::relu_backward(&x, &dy),
        1e-7,
    );

    let mask = DropoutMask::new(0.2, rng.random(), 3, rng.random());
    let keep = keeps(&mask, len);
    backend.dropout_forward(&mask, &xb, &mut out).unwrap();
    assert_close(
        "dropout",
        &backend.download(&out).unwrap(),
        &reference::activation::dropout(&x, &keep, 0.2),
        1e-7,
    );
    backend.dropout_backward(&mask, &dyb, &mut out).unwrap();
    assert_close(
        "dropout dx",
        &backend.download(&out).unwrap(),
        &reference::activation::dropout(&dy, &keep, 0.2),
        1e-7,
    );

    // ReLU then dropout in one pass is bit for bit the two passes one after the other.
    let fused = Activation {
        relu: true,
        dropout: Some(mask),
    };
    let mut relu_out = backend.filled(len, f32::NAN).unwrap();
    let mut two_passes = backend.filled(len, f32::NAN).unwrap();
    backend.relu_forward(&xb, &mut relu_out).unwrap();
    backend
        .dropout_forward(&mask, &relu_out, &mut two_passes)
        .unwrap();
    backend.activation_forward(fused, &xb, &mut out).unwrap();
    assert_eq!(
        backend.download(&out).unwrap(),
        backend.download(&two_passes).unwrap(),
        "relu+dropout"
    );
    backend
        .dropout_backward(&mask, &dyb, &mut relu_out)
        .unwrap();
    backend
        .relu_backward(&xb, &relu_out, &mut two_passes)
        .unwrap();
    backend
        .activation_backward(fused, Some(&xb), &dyb, &mut out)
        .unwrap();
    assert_eq!(
        backend.download(&out).unwrap(),
        backend.download(&two_passes).unwrap(),
        "relu+dropout dx"
    );

    let (rows, classes) = (300, 10);
    let logits = normal(rng, rows * classes, 0.0, 3.0);
    let labels: Vec<usize> = (0..rows).map(|_| rng.random_range(0..classes)).collect();
    let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let (loss, grad, correct) = reference::loss::softmax_cross_entropy(&logits, &labels, classes);
    let logits_b = backend.upload(&logits).unwrap();
    let labels_b = backend.upload(&label_values).unwrap();
    let mut dlogits = backend.filled(rows * classes, f32::NAN).unwrap();
    let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
    for _ in 0..2 {
        backend
            .softmax_cross_entropy(
                &logits_b,
                &labels_b,
                classes,
                Some(&mut dlogits),
                &mut metrics,
            )
            .unwrap();
    }
    assert_close("dlogits", &backend.download(&dlogits).unwrap(), &grad, 1e-6);
    let totals = LossTotals::from_metrics(&backend.download(&metrics).unwrap()).unwrap();
    assert!(
        (totals.mean_loss() - loss).abs() < 1e-6 * loss,
        "loss {} vs {loss}",
        totals.mean_loss()
    );
    assert_eq!(totals.correct, 2.0 * correct as f64);
    assert_eq!(totals.samples, 2.0 * rows as f64);

    // Weights of typical size: an f32 parameter rounds the added step to its own ulp.
    let param = normal(rng, len, 0.0, 0.05);
    let grad = normal(rng, len, 0.0, 1e-2);
    let m = normal(rng, len, 0.0, 1e-2);
    let v: Vec<f32> = normal(rng, len, 0.0, 1e-3).iter().map(|v| v * v).collect();
    let grad_b = backend.upload(&grad).unwrap();
    let t = 7;
    // Without weight decay, and with AdamW's decoupled decay / SGD's L2 decay.
    for weight_decay in [0.0, 0.1] {
        let mut param_b = backend.upload(&param).unwrap();
        let mut m_b = backend.upload(&m).unwrap();
        let mut v_b = backend.upload(&v).unwrap();
        let p = OptimizerParams::adam(len, 1e-3, 0.9, 0.999, 1e-8, t)
            .with_decoupled_decay(1e-3, weight_decay);
        backend
            .adam_update(&p, &mut param_b, &grad_b, &mut m_b, &mut v_b)
            .unwrap();
        let (param_ref, m_ref, v_ref) = reference::optimizer::adam(
            &param,
            &grad,
            &m,
            &v,
            1e-3,
            (0.9, 0.999),
            1e-8,
            weight_decay,
            t,
        );
        let updated = backend.download(&param_b).unwrap();
        assert_step_close("adam step", &updated, &param, &param_ref);
        assert_close("adam m", &backend.download(&m_b).unwrap(), &m_ref, 1e-6);
        assert_close("adam v", &backend.download(&v_b).unwrap(), &v_ref, 1e-6);

        let mut param_b = backend.upload(&param).unwrap();
        let mut buffer_b = backend.upload(&m).unwrap();
        let p = OptimizerParams::sgd(len, 0.05, 0.9).with_l2_decay(weight_decay);
        backend
            .sgd_update(&p, &mut param_b, &grad_b, &mut buffer_b)
            .unwrap();
        let (param_ref, buffer_ref) =
            reference::optimizer::sgd(&param, &grad, &m, 0.05, 0.9, weight_decay);
        let updated = backend.download(&param_b).unwrap();
        assert_step_close("sgd step", &updated, &param, &param_ref);
        assert_close(
            "sgd buffer",
            &backend.download(&buffer_b).unwrap(),
            &buffer_ref,
            1e-6,
        );
    }
}

backend_test!(elementwise_ops_match_references, |backend, rng| {
    elementwise_ops_match_references(backend, rng)
});

#[test]
fn dropout_masks_are_the_same_on_both_backends_and_differ_by_key() {
    let Some(gpu) = gpu() else { return };
    let len = 100_000;
    let ones = vec![1.0f32; len];
    let mask_of = |mask: &DropoutMask| {
        let mut out = gpu.filled(len, f32::NAN).unwrap();
        gpu.dropout_forward(mask, &gpu.upload(&ones).unwrap(), &mut out)
            .unwrap();
        let on_gpu = gpu.download(&out).unwrap();
        let mut on_cpu = CpuBackend.filled(len, f32::NAN).unwrap();
        CpuBackend
            .dropout_forward(mask, &CpuBackend.upload(&ones).unwrap(), &mut on_cpu)
            .unwrap();
        let on_cpu = on_cpu.to_vec();
        assert_eq!(on_gpu, on_cpu, "GPU and CPU masks differ for {mask:?}");
        on_cpu
    };
    let base = mask_of(&DropoutMask::new(0.2, 7, 3, 11));
    let kept = base.iter().filter(|&&v| v != 0.0).count() as f64 / len as f64;
    assert!((kept - 0.8).abs() < 0.01, "kept fraction {kept}");
    assert!(base.iter().all(|&v| v == 0.0 || v == 1.25));
    for other in [
        DropoutMask::new(0.2, 8, 3, 11),
        DropoutMask::new(0.2, 7, 4, 11),
        DropoutMask::new(0.2, 7, 3, 12),
    ] {
        let differing = mask_of(&other)
            .iter()
            .zip(&base)
            .filter(|(a, b)| a != b)
            .count();
        // Independent masks differ on 2·0.8·0.2 = 32% of elements.
        assert!(
            differing > len / 4,
            "{other:?} repeats the base mask ({differing} differ)"
        );
    }
}
