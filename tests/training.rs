//! Whole training steps and short runs on the real MNIST files: GPU-vs-CPU parity of a step
//! (loss, every gradient, every updated parameter), and a short run that learns.

mod common;

use common::{assert_close, gpu, norm, shared_mnist};
use wgnorm::Backend;
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{self, CLASSES, Mnist, PIXELS};
use wgnorm::graph::{
    BatchNorm, Compute, HostModel, Init, LayerSpec, MNIST_IMAGE, ModelSpec, Sequential, StepKey,
};
use wgnorm::ops::batchnorm::{BatchNormConfig, Mode};
use wgnorm::ops::loss::{LossTotals, metric};
use wgnorm::optim::{Optimizer, OptimizerConfig};
use wgnorm::train::{TrainConfig, Trainer, batches, epoch_order, split_point};

fn load() -> Option<Mnist> {
    shared_mnist().map(|dir| mnist::load(&dir).unwrap())
}

fn spec(batchnorm: bool) -> ModelSpec {
    ModelSpec::reference_mlp(batchnorm)
}

/// What one step produced, downloaded: the batch's loss totals, each gradient, each parameter
/// after the update.
struct StepResult {
    totals: LossTotals,
    grads: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
}

/// `steps` training steps on consecutive batches of the first training images.
fn run_steps<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    optimizer: OptimizerConfig,
    data: &Mnist,
    rows: usize,
    steps: usize,
) -> Vec<StepResult> {
    let host = HostModel::initial(spec, Init::Keras, 5);
    let mut model = Sequential::upload(backend, spec, &host).unwrap();
    let lens: Vec<usize> = spec.params().iter().map(|p| p.len()).collect();
    let mut opt = Optimizer::new(backend, optimizer, &lens).unwrap();
    let images = backend
        .upload_images(&data.train.images, PIXELS, &data.train.labels)
        .unwrap();
    let order: Vec<u32> = (0..(rows * steps) as u32).collect();
    let index = backend.upload_indices(&order).unwrap();
    (0..steps)
        .map(|step| {
            let mut x = backend.scratch(rows * PIXELS).unwrap();
            let mut labels = backend.scratch(rows).unwrap();
            backend
                .gather(&images, &index, step * rows, &mut x, &mut labels)
                .unwrap();
            let key = StepKey::new(9, step as u64);
            let (logits, tape) = model.forward(backend, Mode::Train, x, rows, key).unwrap();
            let mut dlogits = backend.scratch(rows * CLASSES).unwrap();
            let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
            backend
                .softmax_cross_entropy(&logits, &labels, CLASSES, Some(&mut dlogits), &mut metrics)
                .unwrap();
            let grads = model.backward(backend, tape, dlogits).unwrap();
            opt.step(backend, model.params_mut().unwrap(), &grads)
                .unwrap();
            StepResult {
                totals: LossTotals::from_metrics(&backend.download(&metrics).unwrap()).unwrap(),
                grads: grads.iter().map(|g| backend.download(g).unwrap()).collect(),
                params: (model.download(backend).unwrap().params(spec).unwrap())
                    .into_iter()
                    .map(<[f32]>::to_vec)
                    .collect(),
            }
        })
        .collect()
}

fn f64s(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// Whether parameter `name` is the bias of a layer that a BatchNorm follows.
fn feeds_batchnorm(spec: &ModelSpec, name: &str) -> bool {
    let Some(layer) = name.strip_suffix(".bias") else {
        return false;
    };
    let nodes = spec.nodes();
    let at = nodes.iter().position(|node| node.name == layer).unwrap();
    matches!(nodes.get(at + 1), Some(node) if node.layer == LayerSpec::BatchNorm(BatchNorm))
}

#[test]
fn gpu_and_cpu_training_steps_agree() {
    let Some(gpu) = gpu() else { return };
    let Some(data) = load() else { return };
    let cnn_bn = ModelSpec::from_arch(
        "conv8k3p1,bn,relu,maxpool2,conv16k3p1,bn,relu,maxpool2,flatten,fc32,bn,relu,dropout0.2,fc10",
        MNIST_IMAGE,
        BatchNormConfig::default(),
    )
    .unwrap();
    for (spec, optimizer) in [
        (spec(true), OptimizerConfig::adam(1e-3)),
        (spec(false), OptimizerConfig::adam(1e-3)),
        (spec(true), OptimizerConfig::sgd(0.05, 0.9)),
        (cnn_bn, OptimizerConfig::adam(1e-3)),
    ] {
        let cpu = run_steps(&CpuBackend, &spec, optimizer, &data, 32, 3);
        let on_gpu = run_steps(gpu, &spec, optimizer, &data, 32, 3);
        let arch = spec.arch();
        let mut noise: Vec<Vec<bool>> = (spec.params().iter())
            .map(|p| vec![false; p.len()])
            .collect();
        for (step, (c, g)) in cpu.iter().zip(&on_gpu).enumerate() {
            let what = |name: &str| format!("step {step} {name} ({arch}, {optimizer:?})");
            let loss_error = (g.totals.loss_sum - c.totals.loss_sum).abs() / c.totals.loss_sum;
            assert!(loss_error < 1e-4, "{}: {loss_error:.2e}", what("loss"));
            assert_eq!(g.totals.samples, 32.0);
            for (i, param) in spec.params().iter().enumerate() {
                let (gg, cg) = (&g.grads[i], &c.grads[i]);
                if feeds_batchnorm(&spec, &param.name) {
                    // BatchNorm removes any shift, so this bias's true gradient is exactly 0 and
                    // both backends hold rounding noise: small next to its weight's gradient
                    // (the parameter before it; a convolution's bias sums over every position
                    // of the batch, 25,088 terms here, hence 1e-3). Adam turns noise into steps of about ±lr, so
                    // its values cannot agree either; each backend must still stay within
                    // Adam's bound of lr per step.
                    let weight_grad = norm(&f64s(&c.grads[i - 1]));
                    for grad in [gg, cg] {
                        assert!(
                            norm(&f64s(grad)) < 1e-3 * weight_grad,
                            "{}",
                            what(&format!("{} grad", param.name))
                        );
                    }
                    for params in [&g.params[i], &c.params[i]] {
                        let bound = 1.01e-3 * (step + 1) as f32;
                        assert!(
                            params.iter().all(|v| v.abs() <= bound),
                            "{}",
                            what(&param.name)
                        );
                    }
                    continue;
                }
                assert_close(&what(&format!("{} grad", param.name)), gg, &f64s(cg), 1e-4);
                if !feeds_batchnorm(&spec, &param.name.replace(".weight", ".bias")) {
                    assert_close(&what(&param.name), &g.params[i], &f64s(&c.params[i]), 1e-4);
                    continue;
                }
                // The same for a weight BatchNorm follows, one entry at a time: where an input
                // feature is the same across the batch (an image border that is 0 in every
                // MNIST digit, seen through a convolution), BatchNorm makes the true gradient
                // 0 again, and Adam turns each backend's rounding noise into steps of ±lr.
                // Those entries, once touched by noise, are held to Adam's bound instead (entries
                // whose gradient is exactly 0 on both, an input that is 0, stay compared).
                let rms = norm(&f64s(cg)) / (cg.len() as f64).sqrt();
                for ((noisy, c), g) in noise[i].iter_mut().zip(cg).zip(gg) {
                    let exact_zero = *c == 0.0 && *g == 0.0;
                    *noisy |= f64::from(c.abs()) < 1e-3 * rms && !exact_zero;
                }
                let (mut gpu_kept, mut cpu_kept) = (Vec::new(), Vec::new());
                for (k, &noisy) in noise[i].iter().enumerate() {
                    let (gv, cv) = (g.params[i][k], c.params[i][k]);
                    if noisy {
                        let bound = 2.02e-3 * (step + 1) as f32;
                        assert!((gv - cv).abs() <= bound, "{}", what(&param.name));
                    } else {
                        gpu_kept.push(gv);
                        cpu_kept.push(f64::from(cv));
                    }
                }
                let noisy = noise[i].iter().filter(|&&n| n).count();
                assert!(
                    noisy * 10 < noise[i].len(),
                    "{}: {noisy} noisy",
                    what(&param.name)
                );
                assert_close(&what(&param.name), &gpu_kept, &cpu_kept, 1e-4);
            }
        }
    }
}

/// Trains `epochs` on the first `limit` images and returns (per-epoch train losses, test).
fn short_run<B: Compute>(
    backend: &B,
    data: &Mnist,
    batchnorm: bool,
    activations: wgnorm::Dtype,
) -> (Vec<f64>, LossTotals) {
    let config = TrainConfig {
        spec: spec(batchnorm),
        init: Init::Keras,
        optimizer: OptimizerConfig::adam(1e-3),
        epochs: 2,
        batch_size: 32,
        val_split: 0.1,
        seed: 3,
        train_limit: Some(2048),
        activations,
        drop_last: false,
        lr_schedule: wgnorm::train::LrSchedule::Constant,
        warmup_epochs: 0,
        patience: None,
        log_grad_norms: None,
    };
    let mut trainer = Trainer::new(backend, config, data).unwrap();
    let mut reports = 0;
    let mut losses = Vec::new();
    for _ in 0..2 {
        let record = trainer
            .train_epoch(&mut |_, _| {
                reports += 1;
                Ok(())
            })
            .unwrap();
        assert!(record.val_acc.is_some(), "validation ran");
        losses.push(record.train_loss);
    }
    assert_eq!(reports, 2 * 64, "one report per step");
    (losses, trainer.test().unwrap())
}

fn a_short_run_learns<B: Compute>(backend: &B, data: &Mnist) -> f64 {
    let (losses, test) = short_run(backend, data, true, wgnorm::Dtype::F32);
    // An untrained 10-class model scores ln 10 ≈ 2.30 and 10%.
    assert!(losses[0] < 2.0, "first epoch loss {}", losses[0]);
    assert!(losses[1] < losses[0], "loss did not fall: {losses:?}");
    assert!(test.accuracy() > 0.85, "test accuracy {}", test.accuracy());
    assert_eq!(test.samples, 10_000.0);
    test.accuracy()
}

#[test]
fn a_short_cpu_run_learns() {
    let Some(data) = load() else { return };
    a_short_run_learns(&CpuBackend, &data);
}

#[test]
fn a_short_gpu_run_learns_and_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let Some(data) = load() else { return };
    let on_gpu = a_short_run_learns(gpu, &data);
    let on_cpu = a_short_run_learns(&CpuBackend, &data);
    assert!(
        (on_gpu - on_cpu).abs() <= 0.003,
        "test accuracy {on_gpu} on the GPU, {on_cpu} on the CPU"
    );
}

/// f16 hidden activations (f32 everything else) train to the f32 run's test accuracy within
/// the documented 0.5 points, and do change the computation.
#[test]
fn f16_activations_train_within_half_a_point_of_f32() {
    let Some(gpu) = common::gpu_with_f16() else {
        return;
    };
    let Some(data) = load() else { return };
    let (losses32, test32) = short_run(gpu, &data, true, wgnorm::Dtype::F32);
    let (losses16, test16) = short_run(gpu, &data, true, wgnorm::Dtype::F16);
    assert_ne!(
        losses16, losses32,
        "the f16 run computed exactly the f32 one"
    );
    assert!(
        (test16.accuracy() - test32.accuracy()).abs() <= 0.005,
        "test accuracy {} with f16 activations, {} with f32",
        test16.accuracy(),
        test32.accuracy()
    );
    // The CPU has no f16 storage: the model refuses instead of silently using f32.
    let spec = ModelSpec::reference_mlp(true);
    let mut model = Sequential::upload(
        &CpuBackend,
        &spec,
        &HostModel::initial(&spec, Init::Keras, 0),
    )
    .unwrap();
    model.activations = wgnorm::Dtype::F16;
    let x = CpuBackend.upload(&vec![0.5; 2 * 784]).unwrap();
    let key = StepKey::new(0, 0);
    let err = model
        .forward(&CpuBackend, Mode::Eval, x, 2, key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot store F16 activations"), "{err}");
}

#[test]
fn the_split_and_batches_follow_keras() {
    assert_eq!(split_point(60_000, 0.1), 54_000);
    assert_eq!(split_point(60_000, 0.0), 60_000);
    let plan = batches(54_000, 32, false);
    assert_eq!(plan.len(), 1688);
    assert_eq!(plan[1687], (53_984, 16), "the last partial batch is kept");
    assert_eq!(batches(65, 32, false).len(), 3, "Keras keeps the last row");
    assert_eq!(
        batches(65, 32, true),
        [(0, 32), (32, 32)],
        "drop_last skips it"
    );
    assert_eq!(batches(64, 32, true).len(), 2, "no partial batch to drop");
    let first = epoch_order(1, 0, 1000);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>(), "a permutation");
    assert_ne!(first, epoch_order(1, 1, 1000), "reshuffled every epoch");
    assert_eq!(
        first,
        epoch_order(1, 0, 1000),
        "a function of (seed, epoch)"
    );
}

/// The loss flags the first step whose batch loss is not finite, on the device, so that a
/// diverging run is named exactly however rarely the host reads the metrics.
fn flags_the_first_non_finite_step<B: Compute>(backend: &B) {
    let labels = backend.upload(&[0.0, 1.0]).unwrap();
    let mut metrics = backend.filled(metric::LEN, 0.0).unwrap();
    for logits in [
        [0.5, 0.1, 0.2, 0.3],
        [f32::NAN, 0.0, 0.0, 0.0],
        [f32::INFINITY, 0.0, 1.0, 2.0],
    ] {
        let logits = backend.upload(&logits).unwrap();
        backend
            .softmax_cross_entropy(&logits, &labels, 2, None, &mut metrics)
            .unwrap();
    }
    let values = backend.download(&metrics).unwrap();
    assert_eq!(values[metric::CALLS], 3.0, "{}", backend.describe());
    let totals = LossTotals::from_metrics(&values).unwrap();
    assert_eq!(
        totals.first_non_finite_step,
        Some(2),
        "{}",
        backend.describe()
    );
}

#[test]
fn both_backends_flag_the_first_non_finite_step() {
    flags_the_first_non_finite_step(&CpuBackend);
    if let Some(gpu) = gpu() {
        flags_the_first_non_finite_step(gpu);
    }
}
