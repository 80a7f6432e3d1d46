//! `wgnorm recalibrate`: a saved model's BatchNorm running statistics recomputed as equal-weight
//! averages over training batches (PreciseBN), with its accuracy before and after.

use std::path::PathBuf;

use clap::Args;

use super::eval::load_mnist_model;
use super::{DataArgs, Device, DeviceArgs};
use wgnorm::checkpoint::{self, MODEL_FILE};
use wgnorm::data::mnist::{Mnist, PIXELS, Split};
use wgnorm::data::shift::Shift;
use wgnorm::graph::{Compute, Sequential};
use wgnorm::ops::data::DeviceImages;
use wgnorm::train::{Recalibration, evaluate, recalibrate, split_point};
use wgnorm::{Dtype, Error, Result};

#[derive(Args)]
pub struct RecalibrateArgs {
    /// A model.safetensors written by `wgnorm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Training batches whose statistics are averaged.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// The fraction of the training images held out for validation, as in training: the last
    /// part, whose accuracy is reported; the batches come from the rest.
    #[arg(long, default_value_t = 0.1)]
    val_split: f64,
    /// Shuffles the training images the batches are drawn from.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder to write the recalibrated model.safetensors into; one already there is kept.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object instead of lines of text.
    #[arg(long)]
    json: bool,
    /// Shift every image first (training, validation and test): brightness:D adds D to every
    /// pixel (in [0, 1]), contrast:F scales every pixel by F; clamped to [0, 1]. The statistics
    /// are then re-estimated on shifted images, as on data that moved after training.
    #[arg(long, value_parser = super::parse_shift)]
    shift: Option<Shift>,
}

/// Validation (where the split holds any) and test accuracy of one model.
#[derive(Clone, Copy)]
struct Scores {
    validation: Option<f64>,
    test: f64,
}

pub fn run(args: RecalibrateArgs) -> Result<()> {
    args.device.check()?;
    if !(0.0..1.0).contains(&args.val_split) {
        return Err(Error::InvalidArgument(format!(
            "--val-split must lie in [0, 1), got {}",
            args.val_split
        )));
    }
    let saved = load_mnist_model(&args.checkpoint)?;
    if !saved.spec.has_batchnorm() {
        return Err(Error::InvalidArgument(format!(
            "{} has no BatchNorm layer: there are no running statistics to recalibrate",
            args.checkpoint.display()
        )));
    }
    let target = args.out.join(MODEL_FILE);
    if args.out.exists() && !args.out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {} is a file, not a folder",
            args.out.display()
        )));
    }
    if target.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; choose another --out",
            target.display()
        )));
    }
    let mut data = args.data.load()?;
    if let Some(shift) = args.shift {
        shift.apply(&mut data.train.images);
        shift.apply(&mut data.test.images);
    }
    let train_rows = split_point(data.train.len(), args.val_split);
    let plan = Recalibration {
        batches: args.batches,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    plan.check(train_rows)?;
    let (before, after, model) = match args.device.open()? {
        Device::Gpu(gpu) => recalibrate_on(&gpu, &saved, &data, train_rows, plan)?,
        Device::Cpu(cpu) => recalibrate_on(&cpu, &saved, &data, train_rows, plan)?,
    };
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;
    checkpoint::save_model(&target, &saved.spec, &model, saved.epochs_done, Dtype::F32)?;
    if args.json {
        let json = serde_json::json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "out": target.display().to_string(),
            "batches": plan.batches,
            "batch_size": plan.batch_size,
            "val_acc_before": before.validation,
            "val_acc_after": after.validation,
            "test_acc_before": before.test,
            "test_acc_after": after.test,
            "shift": args.shift.map(|shift| shift.to_string()),
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "running statistics of {} BatchNorm layer(s) averaged over {} batches of {}",
        saved.spec.batchnorm_nodes().len(),
        plan.batches,
        plan.batch_size
    );
    if let (Some(from), Some(to)) = (before.validation, after.validation) {
        println!("validation acc {from:.4} -> {to:.4}");
    }
    println!("test acc {:.4} -> {:.4}", before.test, after.test);
    println!("wrote {}", target.display());
    Ok(())
}

/// Scores before and after recalibrating `saved` on `backend`, and the recalibrated model.
fn recalibrate_on<B: Compute>(
    backend: &B,
    saved: &checkpoint::ModelCheckpoint,
    data: &Mnist,
    train_rows: usize,
    plan: Recalibration,
) -> Result<(Scores, Scores, wgnorm::graph::HostModel)> {
    let upload = |split: &Split| backend.upload_images(&split.images, PIXELS, &split.labels);
    let (train, test) = (upload(&data.train)?, upload(&data.test)?);
    let mut model = Sequential::upload(backend, &saved.spec, &saved.model)?;
    let validation_rows = (train_rows as u32)..(data.train.len() as u32);
    let score = |model: &mut Sequential<B>| -> Result<Scores> {
        let validation = match validation_rows.is_empty() {
            true => None,
            false => Some(accuracy(backend, model, &train, validation_rows.clone())?),
        };
        let test = accuracy(backend, model, &test, 0..data.test.len() as u32)?;
        Ok(Scores { validation, test })
    };
    let before = score(&mut model)?;
    recalibrate(backend, &mut model, &train, train_rows, plan)?;
    let after = score(&mut model)?;
    Ok((before, after, model.download(backend)?))
}

/// Accuracy on `rows` of `images`.
fn accuracy<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    images: &DeviceImages<B>,
    rows: std::ops::Range<u32>,
) -> Result<f64> {
    let index: Vec<u32> = rows.collect();
    let count = index.len();
    let index = backend.upload_indices(&index)?;
    Ok(evaluate(backend, model, images, &index, count)?.accuracy())
}
