//! The model-level API: the same code trains on both backends, refuses bad arguments by name,
//! and saves and loads.

mod common;

use wgnorm::Backend;
use wgnorm::Dtype;
use wgnorm::cpu::CpuBackend;
use wgnorm::graph::{Compute, Init, ModelSpec};
use wgnorm::model::Classifier;
use wgnorm::optim::OptimizerConfig;

fn spec() -> ModelSpec {
    ModelSpec::mlp(6, &[12, 8], 3, true, 0.2).unwrap()
}

/// Rows whose class is the index of the largest of their first three values.
fn batch(step: usize) -> (Vec<f32>, Vec<u32>) {
    let rows = 16;
    let x: Vec<f32> = (0..rows * 6)
        .map(|i| (((i + step * 31) * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let labels = x
        .chunks_exact(6)
        .map(|row| {
            (0..3)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0) as u32
        })
        .collect();
    (x, labels)
}

/// Trains `steps` steps; returns the accuracy on an unseen batch and its logits.
fn train<B: Compute>(backend: &B, optimizer: OptimizerConfig, steps: usize) -> (f64, Vec<f32>) {
    let mut model = Classifier::new(backend, &spec(), optimizer, Init::Keras, 3).unwrap();
    for step in 0..steps {
        let (x, labels) = batch(step);
        model.train_batch_slices(backend, &x, &labels).unwrap();
    }
    assert_eq!(model.steps(), steps as u64);
    let totals = model.take_totals(backend).unwrap();
    assert_eq!(totals.samples, steps as f64 * 16.0);
    let (x, labels) = batch(1000);
    let accuracy = model.evaluate(backend, &x, &labels).unwrap().accuracy();
    let logits = model.logits(backend, backend.upload(&x).unwrap()).unwrap();
    (accuracy, backend.download(&logits).unwrap())
}

#[test]
fn the_same_code_learns_on_the_cpu_and_the_gpu_alike() {
    let (cpu_accuracy, _) = train(&CpuBackend, OptimizerConfig::adam(1e-2), 300);
    assert!(cpu_accuracy >= 0.8, "CPU accuracy {cpu_accuracy}");
    let Some(gpu) = common::gpu() else { return };
    let (gpu_accuracy, _) = train(gpu, OptimizerConfig::adam(1e-2), 300);
    assert!(gpu_accuracy >= 0.8, "GPU accuracy {gpu_accuracy}");
    // A few SGD steps in, both hold the same model (Adam's first steps move each weight by
    // about ±lr whatever the gradient's size, so rounding can flip a near-zero one).
    let sgd = OptimizerConfig::sgd(0.1, 0.9);
    let (_, cpu_logits) = train(&CpuBackend, sgd, 3);
    let (_, gpu_logits) = train(gpu, sgd, 3);
    let worst = cpu_logits
        .iter()
        .zip(&gpu_logits)
        .map(|(c, g)| (c - g).abs() / c.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "CPU and GPU logits differ by {worst}");
}

#[test]
fn bad_batches_are_refused_naming_the_problem() {
    let backend = CpuBackend;
    let mut model = Classifier::new(
        &backend,
        &spec(),
        OptimizerConfig::adam(1e-3),
        Init::Keras,
        0,
    )
    .unwrap();
    let err = model
        .train_batch_slices(&backend, &[0.0; 11], &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x has 11 values") && err.contains("6 inputs"),
        "{err}"
    );
    let err = model
        .train_batch_slices(&backend, &[0.0; 12], &[0, 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 3 is outside 0..3"), "{err}");
    let err = model.predict(&backend, &[]).unwrap_err().to_string();
    assert!(err.contains("positive multiple of 6"), "{err}");
    assert_eq!(model.steps(), 0, "a refused batch is not a step");
}

#[test]
fn a_saved_model_loads_with_identical_predictions() {
    let backend = CpuBackend;
    let mut model = Classifier::new(
        &backend,
        &spec(),
        OptimizerConfig::adam(1e-2),
        Init::Torch,
        5,
    )
    .unwrap();
    for step in 0..20 {
        let (x, labels) = batch(step);
        model.train_batch_slices(&backend, &x, &labels).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    model.save(&backend, &path, Dtype::F32).unwrap();
    let mut loaded = Classifier::load(&backend, &path, OptimizerConfig::adam(1e-2), 5).unwrap();
    assert_eq!(loaded.spec(), model.spec());
    let (x, _) = batch(99);
    let want = backend
        .download(&model.logits(&backend, backend.upload(&x).unwrap()).unwrap())
        .unwrap();
    let got = backend
        .download(
            &loaded
                .logits(&backend, backend.upload(&x).unwrap())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(got, want);
}

/// Trains `steps` more steps from `first_step` on; the logits of an unseen batch after them.
fn continue_training<B: Compute>(
    backend: &B,
    model: &mut Classifier<B>,
    first_step: usize,
    steps: usize,
) -> Vec<f32> {
    for step in first_step..first_step + steps {
        let (x, labels) = batch(step);
        model.train_batch_slices(backend, &x, &labels).unwrap();
    }
    let (x, _) = batch(500);
    backend
        .download(&model.logits(backend, backend.upload(&x).unwrap()).unwrap())
        .unwrap()
}

/// A checkpoint holds the optimizer's state, step count, learning rate and seed: a resumed
/// model takes exactly the steps the uninterrupted one takes (bit for bit on the CPU, whose
/// ops run in a fixed order; within rounding on the GPU).
fn resume_continues_exactly<B: Compute>(backend: &B, exact: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Classifier::new(
        backend,
        &spec(),
        OptimizerConfig::adam(1e-2),
        Init::Keras,
        7,
    )
    .unwrap();
    continue_training(backend, &mut model, 0, 10);
    model.set_lr(3e-3).unwrap();
    model.save_checkpoint(backend, dir.path()).unwrap();
    let uninterrupted = continue_training(backend, &mut model, 10, 10);

    let mut resumed = Classifier::resume(backend, dir.path()).unwrap();
    assert_eq!(resumed.steps(), 10);
    assert_eq!(resumed.optimizer(), OptimizerConfig::adam(3e-3));
    let continued = continue_training(backend, &mut resumed, 10, 10);
    if exact {
        assert_eq!(continued, uninterrupted);
    } else {
        let worst = (continued.iter().zip(&uninterrupted))
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "resumed logits differ by {worst}");
    }
    // A fresh model with the same seed but without the saved state does not take those steps.
    let mut fresh = Classifier::new(
        backend,
        &spec(),
        OptimizerConfig::adam(3e-3),
        Init::Keras,
        7,
    )
    .unwrap();
    assert_ne!(
        continue_training(backend, &mut fresh, 10, 10),
        uninterrupted
    );
}

#[test]
fn a_resumed_classifier_continues_exactly_on_the_cpu() {
    resume_continues_exactly(&CpuBackend, true);
}

#[test]
fn a_resumed_classifier_continues_on_the_gpu() {
    let Some(gpu) = common::gpu() else { return };
    resume_continues_exactly(gpu, false);
}

#[test]
fn a_bad_learning_rate_is_refused_and_the_old_one_kept() {
    let backend = CpuBackend;
    let mut model = Classifier::new(
        &backend,
        &spec(),
        OptimizerConfig::sgd(0.1, 0.9),
        Init::Keras,
        0,
    )
    .unwrap();
    let err = model.set_lr(f64::NAN).unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");
    assert_eq!(model.optimizer(), OptimizerConfig::sgd(0.1, 0.9));
}
