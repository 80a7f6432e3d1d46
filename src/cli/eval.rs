//! `wgnorm eval`: test loss and accuracy of a saved model.

use std::path::PathBuf;

use clap::Args;

use super::{DataArgs, Device, DeviceArgs};
use wgnorm::checkpoint;
use wgnorm::data::mnist::{CLASSES, Mnist, PIXELS};
use wgnorm::graph::{Compute, Sequential};
use wgnorm::ops::loss::LossTotals;
use wgnorm::train::evaluate;
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
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.device.check()?;
    let saved = load_mnist_model(&args.checkpoint)?;
    let data = args.data.load()?;
    let (totals, adapter) = match args.device.open()? {
        Device::Gpu(gpu) => (
            test_on(&gpu, &saved, &data, args.dtype)?,
            gpu.adapter().name.clone(),
        ),
        Device::Cpu(cpu) => (test_on(&cpu, &saved, &data, args.dtype)?, "cpu".to_string()),
    };
    if args.json {
        let json = serde_json::json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "adapter": adapter,
            "epochs_done": saved.epochs_done,
            "test_loss": totals.mean_loss(),
            "test_acc": totals.accuracy(),
            "images": totals.samples,
        });
        println!("{json}");
    } else {
        println!(
            "test loss {:.4} acc {:.4} ({} images, {adapter})",
            totals.mean_loss(),
            totals.accuracy(),
            totals.samples
        );
    }
    Ok(())
}

fn test_on<B: Compute>(
    backend: &B,
    saved: &checkpoint::ModelCheckpoint,
    data: &Mnist,
    dtype: Dtype,
) -> Result<LossTotals> {
    let dtype = super::storage_or_f32(backend, dtype, "evaluating");
    let mut model = Sequential::upload_for_inference(backend, &saved.spec, &saved.model, dtype)?;
    let images = backend.upload_images(&data.test.images, PIXELS, &data.test.labels)?;
    let index: Vec<u32> = (0..data.test.len() as u32).collect();
    let index = backend.upload_indices(&index)?;
    evaluate(backend, &mut model, &images, &index, data.test.len())
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
