//! `wgnorm eval`: test loss and accuracy of a saved model.

use std::path::PathBuf;

use clap::Args;

use super::{DataArgs, Device, DeviceArgs};
use wgnorm::checkpoint;
use wgnorm::data::mnist::{CLASSES, Mnist, PIXELS};
use wgnorm::data::shift::Shift;
use wgnorm::graph::{Compute, Sequential};
use wgnorm::ops::data::{DeviceImages, IndexList};
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::{
    Passes, Rows, batch_statistics_over, evaluate, evaluate_with_batch_statistics,
};
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
    /// Also the test accuracy with each BatchNorm normalizing every batch of B test images by
    /// the batch's own statistics, as in training (dropout off; a last partial batch left
    /// out): how far the running statistics are from what training normalized with. A model
    /// trained with ghost batches of K is normalized over each ghost batch of K, as in
    /// training; K must divide B.
    #[arg(long, value_name = "B")]
    batch_stats: Option<usize>,
    /// Shift the test images first: brightness:D adds D to every pixel (in [0, 1]),
    /// contrast:F scales every pixel by F; clamped to [0, 1].
    #[arg(long, value_parser = super::parse_shift)]
    shift: Option<Shift>,
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
    if args.batch_stats.is_some() && !saved.spec.has_batchnorm() {
        return Err(Error::InvalidArgument(format!(
            "--batch-stats has no effect: {} has no BatchNorm layer",
            args.checkpoint.display()
        )));
    }
    let mut data = args.data.load()?;
    if let Some(shift) = args.shift {
        shift.apply(&mut data.test.images);
    }
    let asked = Asked {
        dtype: args.dtype,
        per_class: args.per_class,
        batch_stats: args.batch_stats,
    };
    let (scores, adapter) = match args.device.open()? {
        Device::Gpu(gpu) => {
            let scores = test_on(&gpu, &saved, &data, asked)?;
            (scores, gpu.adapter().name.clone())
        }
        Device::Cpu(cpu) => (test_on(&cpu, &saved, &data, asked)?, "cpu".to_string()),
    };
    let Scores {
        totals,
        per_class,
        batch_stats,
    } = scores;
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
        if let Some(shift) = args.shift {
            json["shift"] = shift.to_string().into();
        }
        if let (Some(batch), Some(stats)) = (args.batch_stats, batch_stats) {
            json["batch_stats"] = serde_json::json!({
                "batch": batch,
                "ghost_batch": saved.spec.batchnorm_config().virtual_batch(),
                "test_loss": stats.mean_loss(),
                "test_acc": stats.accuracy(),
                "images": stats.samples as u64,
            });
        }
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
        if let (Some(batch), Some(stats)) = (args.batch_stats, batch_stats) {
            println!(
                "with batch statistics over {}: test loss {:.4} acc {:.4} ({} images)",
                batch_statistics_over(&saved.spec, batch),
                stats.mean_loss(),
                stats.accuracy(),
                stats.samples
            );
        }
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

/// What `eval` measures besides the test loss and accuracy.
#[derive(Clone, Copy)]
struct Asked {
    dtype: Dtype,
    per_class: bool,
    batch_stats: Option<usize>,
}

/// The test set's loss totals, each class's counts and the totals with batch statistics, where
/// asked.
struct Scores {
    totals: LossTotals,
    per_class: Option<Vec<ClassCount>>,
    batch_stats: Option<LossTotals>,
}

fn test_on<B: Compute>(
    backend: &B,
    saved: &checkpoint::ModelCheckpoint,
    data: &Mnist,
    asked: Asked,
) -> Result<Scores> {
    let dtype = super::storage_or_f32(backend, asked.dtype, "evaluating");
    let mut model = Sequential::upload_for_inference(backend, &saved.spec, &saved.model, dtype)?;
    let images = backend.upload_images(&data.test.images, PIXELS, &data.test.labels)?;
    let index: Vec<u32> = (0..data.test.len() as u32).collect();
    let index = backend.upload_indices(&index)?;
    let totals = evaluate(backend, &mut model, &images, &index, data.test.len())?;
    let per_class = match asked.per_class {
        true => Some(class_counts(backend, &mut model, &images, &index, data)?),
        false => None,
    };
    let batch_stats = match asked.batch_stats {
        Some(batch) => Some(evaluate_with_batch_statistics(
            backend,
            &mut model,
            &images,
            &index,
            data.test.len(),
            batch,
        )?),
        None => None,
    };
    Ok(Scores {
        totals,
        per_class,
        batch_stats,
    })
}

/// Each class's correct predictions over the test set: the predicted classes (the first
/// maximum of the logits, as the loss kernel and `torch.argmax` take it) found on the device
/// in the passes `evaluate` makes, compared with the labels here.
fn class_counts<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    index: &IndexList<B>,
    data: &Mnist,
) -> Result<Vec<ClassCount>> {
    let source = Rows::Indexed { images, index };
    let passes = Passes::inference(backend, &model.spec, source, data.test.len())?;
    let mut counts = vec![ClassCount::default(); CLASSES];
    for (predicted, &label) in passes
        .classes(backend, model)?
        .iter()
        .zip(&data.test.labels)
    {
        let count = &mut counts[usize::from(label)];
        count.images += 1;
        count.correct += usize::from(*predicted == usize::from(label));
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
