//! Batched inference (`train::Passes`) and what runs through it: the argmax kernel against its
//! reference on both backends, recalibration's running statistics against the float64 mean of
//! its passes' batch statistics, recalibration's device memory staying that of one pass, and
//! scores with batch statistics of models trained with ghost batches.

#[macro_use]
mod common;

use common::{assert_close, linear_forward, normal};
use rand::RngExt;
use rand::rngs::StdRng;
use wgnorm::Backend;
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::{
    BatchNorm, Compute, Dropout, HostModel, Init, LayerSpec, Linear, ModelSpec, Relu, SampleShape,
    Sequential,
};
use wgnorm::ops::batchnorm::{BatchNormConfig, BatchNormShape};
use wgnorm::ops::data::DeviceImages;
use wgnorm::ops::loss::LossOps;
use wgnorm::reference;
use wgnorm::train::{
    Recalibration, batch_statistics_over, epoch_order, evaluate_with_batch_statistics, recalibrate,
};

const FEATURES: usize = 6;
const HIDDEN: usize = 5;
const CLASSES: usize = 3;

/// Logits with ties for the largest value in every third row and NaN in a few, so that which
/// maximum wins is tested, not only where it is.
fn logits_with_ties(rng: &mut StdRng, rows: usize, classes: usize) -> Vec<f32> {
    let mut logits = normal(rng, rows * classes, 0.0, 2.0);
    for (r, row) in logits.chunks_exact_mut(classes).enumerate() {
        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if r % 3 == 0 {
            let first = rng.random_range(0..classes - 1);
            let second = rng.random_range(first + 1..classes);
            (row[first], row[second]) = (top + 1.0, top + 1.0);
        }
        if r % 17 == 5 {
            row[rng.random_range(0..classes)] = f32::NAN;
        }
    }
    logits
}

backend_test!(argmax_matches_the_reference, |backend, rng| {
    // Rows past one workgroup, and a class count that is not a power of two.
    let (rows, classes) = (700, 10);
    let logits = logits_with_ties(rng, rows, classes);
    let mut predicted = backend.filled(rows, -1.0).unwrap();
    let logits_buffer = backend.upload(&logits).unwrap();
    backend
        .argmax(&logits_buffer, classes, &mut predicted)
        .unwrap();
    let got: Vec<usize> = (backend.download(&predicted).unwrap().iter())
        .map(|&class| class as usize)
        .collect();
    assert_eq!(got, reference::loss::argmax(&logits, classes));
    // Row 0 holds a tie, which goes to the first maximum, as the loss's correct count takes it.
    let row = &logits[..classes];
    let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(row.iter().filter(|&&v| v == top).count(), 2);
    assert_eq!(Some(got[0]), row.iter().position(|&v| v == top));
});

/// `rows` images of FEATURES random bytes with random labels, on `backend` and as bytes.
fn random_images<B: Compute>(
    backend: &B,
    rng: &mut StdRng,
    rows: usize,
) -> (DeviceImages<B>, Vec<u8>) {
    let pixels: Vec<u8> = (0..rows * FEATURES).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..rows)
        .map(|_| rng.random_range(0..CLASSES as u8))
        .collect();
    let images = backend.upload_images(&pixels, FEATURES, &labels).unwrap();
    (images, pixels)
}

/// BatchNorm on the inputs → Linear → BatchNorm → ReLU → dropout → Linear, with BatchNorm's
/// training statistics over ghost batches of `ghost` where given.
fn spec(ghost: Option<usize>) -> ModelSpec {
    let config = match ghost {
        Some(samples) => BatchNormConfig::default()
            .with_virtual_batch(samples)
            .unwrap(),
        None => BatchNormConfig::default(),
    };
    let layers = vec![
        LayerSpec::BatchNorm(BatchNorm),
        Linear { outputs: HIDDEN }.into(),
        LayerSpec::BatchNorm(BatchNorm),
        LayerSpec::Relu(Relu),
        Dropout { p: 0.3 }.into(),
        Linear { outputs: CLASSES }.into(),
    ];
    ModelSpec::new(SampleShape::Flat(FEATURES), layers, config).unwrap()
}

/// One training-mode BatchNorm over `x` (`rows` × `channels`) in f64: its output, and the
/// statistics its running update takes in (the ghost batches' mean mean and mean unbiased
/// variance).
fn batchnorm_pass(
    x: &[f64],
    rows: usize,
    channels: usize,
    ghosts: usize,
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let shape = BatchNormShape::new(rows, channels, 1).with_ghost_batches(ghosts);
    let zeros = vec![0.0f64; channels];
    // Momentum 1 from zero running statistics leaves exactly the batch's contribution.
    let f = reference::batchnorm::forward_train(x, shape, gamma, beta, &zeros, &zeros, 1e-5, 1.0);
    (f.y, f.running_mean, f.running_var)
}

/// Recalibration over 40 passes of 8 rows against the float64 mean of the same passes' batch
/// statistics, computed here from the same shuffled rows.
fn recalibration_matches_the_f64_mean<B: Compute>(
    backend: &B,
    rng: &mut StdRng,
    ghost: Option<usize>,
) {
    let (rows, batch, batches, seed) = (400, 8, 40, 11);
    // No dropout reaches a BatchNorm here: the mask follows the second one.
    let spec = spec(ghost);
    let (images, pixels) = random_images(backend, rng, rows);
    let host = HostModel::initial(&spec, Init::Torch, 3);
    let mut model = Sequential::upload(backend, &spec, &host).unwrap();
    let plan = Recalibration {
        batches,
        batch_size: batch,
        seed,
    };
    recalibrate(backend, &mut model, &images, rows, plan).unwrap();
    let recalibrated = model.download(backend).unwrap();

    let p = host.params(&spec).unwrap();
    assert_eq!(
        (p[0].len(), p[2].len(), p[4].len()),
        (FEATURES, HIDDEN * FEATURES, HIDDEN)
    );
    let ghosts = batch / ghost.unwrap_or(batch);
    let order = epoch_order(seed, 0, rows);
    let mut sums = [
        vec![0.0; FEATURES],
        vec![0.0; FEATURES],
        vec![0.0; HIDDEN],
        vec![0.0; HIDDEN],
    ];
    for pass in order.chunks_exact(batch).take(batches) {
        let x: Vec<f64> = pass
            .iter()
            .flat_map(|&i| {
                let i = i as usize;
                pixels[i * FEATURES..(i + 1) * FEATURES].iter()
            })
            .map(|&byte| f64::from(byte) / 255.0)
            .collect();
        let (y, mean, var) = batchnorm_pass(&x, batch, FEATURES, ghosts, p[0], p[1]);
        let w: Vec<f64> = p[2].iter().map(|&v| f64::from(v)).collect();
        let b: Vec<f64> = p[3].iter().map(|&v| f64::from(v)).collect();
        let h = linear_forward(&y, &w, &b, batch, FEATURES);
        let (_, hidden_mean, hidden_var) = batchnorm_pass(&h, batch, HIDDEN, ghosts, p[4], p[5]);
        for (sum, values) in sums.iter_mut().zip([mean, var, hidden_mean, hidden_var]) {
            for (s, v) in sum.iter_mut().zip(values) {
                *s += v / batches as f64;
            }
        }
    }
    let running = |name: &str| recalibrated.tensor(name).unwrap();
    let got = [
        running("0.running_mean"),
        running("0.running_var"),
        running("2.running_mean"),
        running("2.running_var"),
    ];
    let names = ["input mean", "input var", "hidden mean", "hidden var"];
    for ((name, got), want) in names.iter().zip(got).zip(&sums) {
        assert_close(name, got, want, 1e-5);
    }
    // The counts of training batches are the model's own.
    for layer in ["0", "2"] {
        assert_eq!(recalibrated.batches_tracked(layer).unwrap(), 0);
    }
}

backend_test!(
    recalibration_is_the_f64_mean_of_its_batches,
    |backend, rng| {
        recalibration_matches_the_f64_mean(backend, rng, None);
    }
);

backend_test!(ghost_batch_recalibration_is_the_f64_mean, |backend, rng| {
    recalibration_matches_the_f64_mean(backend, rng, Some(4));
});

/// Each pass is submitted before the next is recorded, so the passes reuse one pass's buffers:
/// 40 passes create no more device buffers than 4. A device of its own, so that no other test
/// creates buffers meanwhile.
#[test]
fn recalibration_keeps_device_buffers_flat() {
    if common::gpu().is_none() {
        return;
    }
    let gpu = GpuBackend::new(&AdapterRequest::from_flag_or_env(None)).unwrap();
    let rng = &mut common::rng("recalibration_keeps_device_buffers_flat");
    let rows = 2000;
    let (images, _) = random_images(&gpu, rng, rows);
    let spec = spec(None);
    let mut model =
        Sequential::upload(&gpu, &spec, &HostModel::initial(&spec, Init::Torch, 1)).unwrap();
    let mut buffers_after = |batches| {
        let plan = Recalibration {
            batches,
            batch_size: 32,
            seed: 5,
        };
        recalibrate(&gpu, &mut model, &images, rows, plan).unwrap();
        gpu.device_buffers().unwrap()
    };
    // The first run fills the pool; the second meets the first's buffers released.
    buffers_after(4);
    let four = buffers_after(4);
    let forty = buffers_after(40);
    assert_eq!(
        forty,
        four,
        "40 passes created {} buffers more",
        forty - four
    );
}

/// Loss and accuracy with batch statistics of `host` under `spec` over `rows` images.
fn batch_statistics_score<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    host: &HostModel,
    images: &DeviceImages<B>,
    rows: usize,
    batch: usize,
) -> wgnorm::Result<wgnorm::ops::loss::LossTotals> {
    let mut model = Sequential::upload(backend, spec, host).unwrap();
    let order: Vec<u32> = (0..rows as u32).collect();
    let index = backend.upload_indices(&order).unwrap();
    evaluate_with_batch_statistics(backend, &mut model, images, &index, rows, batch)
}

backend_test!(
    ghost_batch_models_are_scored_over_their_ghost_batches,
    |backend, rng| {
        let rows = 96;
        let (images, _) = random_images(backend, rng, rows);
        let ghost = spec(Some(4));
        let plain = spec(None);
        let host = HostModel::initial(&ghost, Init::Torch, 2);
        // A model trained with ghost batches of 4, scored in batches of 16, is normalized over
        // each run of 4 rows, as training normalized it: as the same weights without ghost batches
        // are in batches of 4.
        let over_ghosts =
            batch_statistics_score(backend, &ghost, &host, &images, rows, 16).unwrap();
        let over_fours = batch_statistics_score(backend, &plain, &host, &images, rows, 4).unwrap();
        let over_sixteen =
            batch_statistics_score(backend, &plain, &host, &images, rows, 16).unwrap();
        assert_eq!(over_ghosts.samples, rows as f64);
        let relative = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(
            relative(over_ghosts.loss_sum, over_fours.loss_sum) < 1e-5,
            "{over_ghosts:?} against {over_fours:?}"
        );
        assert!((over_ghosts.correct - over_fours.correct).abs() <= 1.0);
        assert!(
            relative(over_ghosts.loss_sum, over_sixteen.loss_sum) > 1e-3,
            "statistics over 16 rows give the same loss as over 4: the test cannot tell them apart"
        );
        assert_eq!(
            batch_statistics_over(&ghost, 16),
            "ghost batches of 4 (in batches of 16)"
        );
        assert_eq!(batch_statistics_over(&plain, 16), "batches of 16");
        // A batch that the ghost batch does not divide is refused, naming both.
        let err = batch_statistics_score(backend, &ghost, &host, &images, rows, 6)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batches of 6") && err.contains("ghost batches of 4"),
            "{err}"
        );
    }
);
