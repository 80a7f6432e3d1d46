//! `wgnorm eval`: test loss and accuracy of a saved model.

use std::path::PathBuf;

use clap::Args;

use super::{DataArgs, Device, DeviceArgs};
use wgnorm::checkpoint;
use wgnorm::data::mnist::{CLASSES, Mnist, PIXELS};
use wgnorm::graph::{Compute, Sequential, StepKey};
use wgnorm::ops::batchnorm::Mode;
use wgnorm::ops::data::{DeviceImages, IndexList};
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::{evaluate, inference_rows};
use wgnorm::{Dtype, Error, Result};

#[derive(Args)]
pub struct EvalArgs {
    /// A model.safetensors written by `wgnorm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// f16 stores the Linear weights and the activations in half precision (where the adapter
    /// has shader-f16; elsewhere f32 with a notice); arithmetic stays f32.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    dtype: Dtype,
    /// Also the accuracy on each class, named as the dataset names it.
    #[arg(long)]
    per_class: bool,
}

/// Correct predictions and images of one class of the test set.
#[derive(Clone, Copy, Default)]
struct ClassCount {
    correct: usize,
    images: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.device.check()?;
    let saved = load_mnist_model(&args.checkpoint)?;
    let data = args.data.load()?;
    let (totals, per_class, adapter) = match args.device.open()? {
        Device::Gpu(gpu) => {
            let (totals, per_class) = test_on(&gpu, &saved, &data, args.dtype, args.per_class)?;
            (totals, per_class, gpu.adapter().name.clone())
        }
        Device::Cpu(cpu) => {
            let (totals, per_class) = test_on(&cpu, &saved, &data, args.dtype, args.per_class)?;
            (totals, per_class, "cpu".to_string())
        }
    };
    let names = args.data.dataset().class_names();
    let accuracy = |count: &ClassCount| count.correct as f64 / count.images.max(1) as f64;
    if args.json {
        let mut json = serde_json::json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "adapter": adapter,
            "epochs_done": saved.epochs_done,
            "test_loss": totals.mean_loss(),
            "test_acc": totals.accuracy(),
            // A count, which the metrics buffer carries as a float.
            "images": totals.samples as u64,
        });
        if let Some(counts) = &per_class {
            json["per_class"] = (names.iter().zip(counts))
                .map(|(name, count)| {
                    serde_json::json!({
                        "class": name,
                        "acc": accuracy(count),
                        "correct": count.correct,
                        "images": count.images,
                    })
                })
                .collect();
        }
        println!("{json}");
    } else {
        println!(
            "test loss {:.4} acc {:.4} ({} images, {adapter})",
            totals.mean_loss(),
            totals.accuracy(),
            totals.samples
        );
        for (name, count) in names.iter().zip(per_class.iter().flatten()) {
            println!(
                "  {name:<12} acc {:.4} ({} of {})",
                accuracy(count),
                count.correct,
                count.images
            );
        }
    }
    Ok(())
}

/// The test set's loss totals, and with `per_class` each class's counts.
fn test_on<B: Compute>(
    backend: &B,
    saved: &checkpoint::ModelCheckpoint,
    data: &Mnist,
    dtype: Dtype,
    per_class: bool,
) -> Result<(LossTotals, Option<Vec<ClassCount>>)> {
    let dtype = super::storage_or_f32(backend, dtype, "evaluating");
    let mut model = Sequential::upload_for_inference(backend, &saved.spec, &saved.model, dtype)?;
    let images = backend.upload_images(&data.test.images, PIXELS, &data.test.labels)?;
    let index: Vec<u32> = (0..data.test.len() as u32).collect();
    let index = backend.upload_indices(&index)?;
    let totals = evaluate(backend, &mut model, &images, &index, data.test.len())?;
    let counts = match per_class {
        true => Some(class_counts(backend, &mut model, &images, &index, data)?),
        false => None,
    };
    Ok((totals, counts))
}

/// Each class's correct predictions (the first maximum of the logits, as the loss kernel and
/// `torch.argmax` take it) over the test set, gathered on the device as `evaluate` does.
fn class_counts<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    data: &Mnist,
) -> Result<Vec<ClassCount>> {
    let per_pass = inference_rows(backend, &model.spec)?;
    let no_dropout = StepKey { seed: 0, step: 0 };
    let mut counts = vec![ClassCount::default(); CLASSES];
    for (pass, labels) in data.test.labels.chunks(per_pass).enumerate() {
        let mut x = backend.scratch(labels.len() * PIXELS)?;
        let mut gathered_labels = backend.scratch(labels.len())?;
        backend.gather(images, index, pass * per_pass, &mut x, &mut gathered_labels)?;
        let (logits, _) = model.forward(backend, Mode::Eval, x, labels.len(), no_dropout)?;
        for (row, &label) in backend.download(&logits)?.chunks_exact(CLASSES).zip(labels) {
            let predicted =
                (0..CLASSES).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            let count = &mut counts[usize::from(label)];
            count.images += 1;
            count.correct += usize::from(predicted == usize::from(label));
        }
    }
    Ok(counts)
}

/// The model file at `path`, refused unless it takes MNIST images; a folder is pointed at the
/// model inside it.
pub fn load_mnist_model(path: &std::path::Path) -> Result<checkpoint::ModelCheckpoint> {
    if path.is_dir() {
        let inside = path.join(checkpoint::MODEL_FILE);
        return Err(Error::InvalidArgument(if inside.is_file() {
            format!(
                "--checkpoint {} is a folder; pass the model in it: {}",
                path.display(),
                inside.display()
            )
        } else {
            format!(
                "--checkpoint {} is a folder, and holds no {}; pass a model file",
                path.display(),
                checkpoint::MODEL_FILE
            )
        }));
    }
    let saved = checkpoint::load_model(path)?;
    if saved.spec.inputs() != PIXELS || saved.spec.classes() != CLASSES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: format!(
                "the model takes {} inputs into {} classes, MNIST's images have {PIXELS} pixels \
                 in {CLASSES} classes",
                saved.spec.inputs(),
                saved.spec.classes()
            ),
        });
    }
    Ok(saved)
}
