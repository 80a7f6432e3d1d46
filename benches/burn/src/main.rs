//! The reference experiment's MLP trained with Burn 0.22 on its wgpu backend, timed the way
//! `wgnorm bench` times wgnorm's epoch: 784 → Linear 128 → BatchNorm → ReLU → Dropout 0.2 →
//! Linear 10 (without BatchNorm with `--nobn`), Adam 1e-3, batch 32, the first 54,000 training
//! images reshuffled every epoch, the last 6,000 for validation.
//!
//! Burn tunes and compiles its kernels during the first epoch, so the epochs after it are the
//! steady state to compare; each epoch's training time and validation accuracy is printed, and
//! the fastest epoch after the first is the figure to use. Each batch is gathered on the host
//! and uploaded, as Burn's data loaders do (the 60,000 images as one tensor exceed what
//! software adapters such as lavapipe bind, 128 MiB).
//!
//!     cargo run --release --manifest-path benches/burn/Cargo.toml -- ../shared/data/mnist [--epochs 3] [--nobn]

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use burn::module::{Initializer, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};

const PIXELS: usize = 784;
const BATCH: usize = 32;
const TRAIN_ROWS: usize = 54_000;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    batchnorm: Option<BatchNorm>,
    dropout: Dropout,
    output: Linear,
}

impl Mlp {
    fn new(batchnorm: bool, device: &Device) -> Self {
        // Glorot-uniform weights and zero biases, as Keras and wgnorm initialize them.
        let linear = |inputs, outputs| {
            LinearConfig::new(inputs, outputs)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device)
        };
        let mut hidden = linear(PIXELS, 128);
        let mut output = linear(128, 10);
        for layer in [&mut hidden, &mut output] {
            if let Some(bias) = layer.bias.take() {
                layer.bias = Some(bias.map(|b| b.zeros_like()));
            }
        }
        Self {
            hidden,
            batchnorm: batchnorm.then(|| BatchNormConfig::new(128).init(device)),
            dropout: DropoutConfig::new(0.2).init(),
            output,
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.hidden.forward(x);
        let h = match &self.batchnorm {
            Some(batchnorm) => batchnorm.forward(h),
            None => h,
        };
        let h = burn::tensor::activation::relu(h);
        self.output.forward(self.dropout.forward(h))
    }
}

/// The values of a gzipped IDX file (after its header of `header` bytes).
fn idx(dir: &Path, name: &str, header: usize) -> Vec<u8> {
    let path = dir.join(format!("{name}.gz"));
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    bytes.split_off(header)
}

/// A permutation of 0..n from a xorshift generator (the order, not its source, matters here).
fn shuffled(n: usize, state: &mut u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        order.swap(i, (*state % (i as u64 + 1)) as usize);
    }
    order
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(Path::new) else {
        eprintln!("usage: wgnorm-burn-reference MNIST_DIR [--epochs N] [--nobn]");
        std::process::exit(2);
    };
    let epochs = args
        .iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |n| n.parse().expect("--epochs takes a number"));
    let batchnorm = !args.iter().any(|a| a == "--nobn");

    let images = idx(dir, "train-images-idx3-ubyte", 16);
    let labels = idx(dir, "train-labels-idx1-ubyte", 8);
    let rows = labels.len();
    let pixels: Vec<f32> = images.iter().map(|&b| f32::from(b) / 255.0).collect();
    let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();

    let device = Device::wgpu(Default::default()).autodiff();
    let batch_of = |rows_of_batch: &[usize]| {
        let mut x = Vec::with_capacity(rows_of_batch.len() * PIXELS);
        for &row in rows_of_batch {
            x.extend_from_slice(&pixels[row * PIXELS..(row + 1) * PIXELS]);
        }
        let y: Vec<i64> = rows_of_batch.iter().map(|&row| targets[row]).collect();
        (
            Tensor::<2>::from_data(TensorData::new(x, [rows_of_batch.len(), PIXELS]), &device),
            Tensor::<1, Int>::from_data(TensorData::new(y, [rows_of_batch.len()]), &device),
        )
    };
    let (x_val, y_val) = batch_of(&(TRAIN_ROWS..rows).collect::<Vec<_>>());

    let mut model = Mlp::new(batchnorm, &device);
    let mut optimizer = AdamConfig::new().with_epsilon(1e-7).init();
    let loss = CrossEntropyLossConfig::new().init(&device);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    println!(
        "Burn 0.22.1, wgpu backend, {} MLP, batch {BATCH}, {epochs} epochs",
        if batchnorm { "bn" } else { "nobn" }
    );
    for epoch in 1..=epochs {
        let order = shuffled(TRAIN_ROWS, &mut state);
        let started = Instant::now();
        let mut last = None;
        for batch in order.chunks(BATCH) {
            let (x, y) = batch_of(batch);
            let batch_loss = loss.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(batch_loss.backward(), &model);
            model = optimizer.step(1e-3, model, grads);
            last = Some(batch_loss);
        }
        // Reading the last loss waits for every step of the epoch.
        let final_loss = last.map_or(f32::NAN, |l| l.into_scalar::<f32>());
        let seconds = started.elapsed().as_secs_f64();
        let predictions = model
            .valid()
            .forward(x_val.clone())
            .argmax(1)
            .flatten::<1>(0, 1);
        let correct = predictions
            .equal(y_val.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        println!(
            "epoch {epoch}: training {seconds:.2} s ({:.2} ms per step), last loss {final_loss:.4}, \
             validation accuracy {:.2}%",
            1e3 * seconds / TRAIN_ROWS.div_ceil(BATCH) as f64,
            100.0 * correct as f64 / (rows - TRAIN_ROWS) as f64
        );
    }
}
