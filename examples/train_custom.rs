//! A custom MLP, 784 → 256 → BN → 128 → BN → 10, trained on MNIST through wgnorm's model API.
//! The same generic code runs on the GPU or, where there is none, on the CPU backend.
//!
//!     cargo run --release --example train_custom -- [MNIST_DIR] [--device cpu|gpu] [--train-images N]
//!
//! MNIST_DIR defaults to data/mnist; the files are downloaded there (SHA-256 verified) if
//! missing. MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0).

use std::path::PathBuf;

use wgnorm::Dtype;
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{self, Mnist, PIXELS};
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::{Compute, Init, ModelSpec};
use wgnorm::model::Classifier;
use wgnorm::optim::OptimizerConfig;

const BATCH: usize = 64;
const EPOCHS: usize = 1;

fn pixels(split: &mnist::Split, rows: std::ops::Range<usize>) -> Vec<f32> {
    split.images[rows.start * PIXELS..rows.end * PIXELS]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect()
}

fn labels(split: &mnist::Split, rows: std::ops::Range<usize>) -> Vec<u32> {
    split.labels[rows].iter().map(|&l| u32::from(l)).collect()
}

/// Trains, evaluates, saves and reloads. Nothing here depends on the backend.
fn train<B: Compute>(backend: &B, data: &Mnist, train_images: usize) -> anyhow::Result<()> {
    let spec = ModelSpec::mlp(PIXELS, &[256, 128], 10, true, 0.2)?;
    let mut model = Classifier::new(backend, &spec, OptimizerConfig::adam(1e-3), Init::Keras, 7)?;
    // Whole batches only: a last batch of one row cannot be batch-normalized.
    let steps = train_images / BATCH;
    for epoch in 1..=EPOCHS {
        for step in 0..steps {
            let rows = step * BATCH..(step + 1) * BATCH;
            model.train_batch_slices(
                backend,
                &pixels(&data.train, rows.clone()),
                &labels(&data.train, rows),
            )?;
        }
        let totals = model.take_totals(backend)?;
        println!(
            "epoch {epoch}: train loss {:.4}, train accuracy {:.4}",
            totals.mean_loss(),
            totals.accuracy()
        );
    }
    let test = 0..data.test.len();
    let result = model.evaluate(
        backend,
        &pixels(&data.test, test.clone()),
        &labels(&data.test, test.clone()),
    )?;
    println!(
        "test loss {:.4}, test accuracy {:.4}",
        result.mean_loss(),
        result.accuracy()
    );

    // Save, load into a new model, and check it predicts exactly the same.
    let dir = std::env::temp_dir().join(format!("wgnorm-train-custom-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("custom.safetensors");
    model.save(backend, &path, Dtype::F32)?;
    let mut loaded = Classifier::load(backend, &path, OptimizerConfig::adam(1e-3), 7)?;
    let sample = pixels(&data.test, 0..1000);
    let (before, after) = (
        model.predict(backend, &sample)?,
        loaded.predict(backend, &sample)?,
    );
    let same = before.iter().zip(&after).filter(|(a, b)| a == b).count();
    std::fs::remove_dir_all(&dir)?;
    println!(
        "saved and reloaded: {same} of {} predictions identical",
        before.len()
    );
    Ok(())
}

const USAGE: &str = "usage: train_custom [MNIST_DIR] [--device auto|gpu|cpu] [--train-images N]

MNIST_DIR (default data/mnist) is downloaded into, SHA-256 verified, where files are missing.
--device auto takes a GPU adapter if there is one, else the CPU backend.
--train-images trains on the first N of the 60,000 training images (default 54000).";

/// The example's arguments.
struct Options {
    dir: PathBuf,
    device: String,
    train_images: usize,
}

/// Parses the arguments; `None` when --help was asked for.
fn options() -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        dir: PathBuf::from("data/mnist"),
        device: "auto".to_string(),
        train_images: 54_000,
    };
    let mut dir_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--device" => options.device = value("--device")?,
            "--train-images" => {
                let count = value("--train-images")?;
                options.train_images = count
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--train-images takes a count, got '{count}'"))?;
            }
            flag if flag.starts_with('-') => anyhow::bail!("unknown flag '{flag}'\n\n{USAGE}"),
            _ if dir_given => anyhow::bail!("one MNIST_DIR only, got a second: '{arg}'"),
            dir => {
                options.dir = PathBuf::from(dir);
                dir_given = true;
            }
        }
    }
    Ok(Some(options))
}

fn main() -> anyhow::Result<()> {
    let Some(options) = options()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let mirrors: Vec<String> = wgnorm::data::download::mirrors(mnist::Dataset::Mnist)
        .iter()
        .map(|m| m.to_string())
        .collect();
    wgnorm::data::download::ensure(mnist::Dataset::Mnist, &options.dir, &mirrors)?;
    let data = mnist::load(&options.dir)?;
    let train_images = options.train_images;
    anyhow::ensure!(
        (BATCH..=data.train.len()).contains(&train_images),
        "--train-images must lie in {BATCH}..={}",
        data.train.len()
    );
    match options.device.as_str() {
        "cpu" => train(&CpuBackend, &data, train_images),
        "gpu" | "auto" => match GpuBackend::new(&AdapterRequest::default()) {
            Ok(gpu) => {
                println!("training on {}", gpu.adapter());
                train(&gpu, &data, train_images)
            }
            Err(e) if options.device == "auto" => {
                println!("no GPU ({e}); training on the CPU backend");
                train(&CpuBackend, &data, train_images)
            }
            Err(e) => Err(e.into()),
        },
        other => anyhow::bail!("--device takes auto, gpu or cpu, got '{other}'"),
    }
}
