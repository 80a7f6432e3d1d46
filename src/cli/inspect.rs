//! `wgnorm inspect`: every BatchNorm layer of a saved model at a glance (γ, β and running
//! statistics, near-dead channels) and, with data, how far its running statistics are from
//! the batch statistics of a validation batch.

use std::path::PathBuf;

use clap::Args;

use super::DataArgs;
use super::eval::load_mnist_model;
use crate::plot::{Line, Panel, panels};
use wgnorm::checkpoint::ModelCheckpoint;
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{Mnist, PIXELS};
use wgnorm::graph::{BatchNormNode, Sequential};
use wgnorm::ops::batchnorm::BatchNormShape;
use wgnorm::ops::data::DataOps;
use wgnorm::reference::batchnorm;
use wgnorm::train::split_point;
use wgnorm::{Backend, Error, Result};

/// |γ| below this marks a channel whose output is (nearly) the constant β.
const SMALL_GAMMA: f32 = 1e-3;
/// Validation images whose batch statistics the running ones are compared with.
const GAP_IMAGES: usize = 1000;
/// A layer whose eval-mode output is this far from its training-mode output, relative to the
/// training-mode output's mean magnitude, is flagged as having stale running statistics.
const STALE_RELATIVE_GAP: f64 = 0.25;

#[derive(Args)]
pub struct InspectArgs {
    /// A model.safetensors written by `wgnorm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// With --data-dir: also compare each layer's running statistics with the batch statistics
    /// of the first 1,000 validation images (the last 10% of the training images).
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw each layer's running variance and γ per channel into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Smallest and largest value.
#[derive(Clone, Copy, serde::Serialize)]
struct Range {
    min: f32,
    max: f32,
}

impl Range {
    fn of(values: &[f32]) -> Self {
        let (min, max) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        Self { min, max }
    }
}

/// How far eval mode is from training mode on the same validation batch.
#[derive(Clone, Copy, serde::Serialize)]
struct Gap {
    /// Mean |y_train − y_eval| over the layer's outputs.
    mean_abs: f64,
    /// `mean_abs` over the mean |y_train|.
    relative: f64,
    /// Whether `relative` exceeds `STALE_RELATIVE_GAP`.
    stale: bool,
}

/// One BatchNorm layer's report.
#[derive(serde::Serialize)]
struct LayerReport {
    layer: String,
    kind: &'static str,
    features: usize,
    gamma: Range,
    beta: Range,
    running_mean: Range,
    running_var: Range,
    small_gamma_channels: Vec<usize>,
    batches_tracked: u64,
    gap: Option<Gap>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let data = &args.data;
    if data.data_dir.is_none()
        && (data.dataset != super::DatasetChoice::Mnist || !data.mirror.is_empty())
    {
        return Err(Error::InvalidArgument(
            "--dataset and --mirror have no effect without --data-dir, which inspect reads \
             validation images from"
                .to_string(),
        ));
    }
    let saved = load_mnist_model(&args.checkpoint)?;
    let layers = saved.spec.batchnorm_nodes();
    if layers.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} has no BatchNorm layer to inspect",
            args.checkpoint.display()
        )));
    }
    let gaps = match args.data.data_dir.is_some() {
        true => Some(gaps(&saved, &layers, &args.data.load()?)?),
        false => None,
    };
    let reports: Vec<LayerReport> = layers
        .iter()
        .enumerate()
        .map(|(at, layer)| report(&saved, layer, gaps.as_ref().map(|gaps| gaps[at])))
        .collect::<Result<_>>()?;
    if let Some(path) = &args.plot {
        plot(path, &saved, &layers, &reports)?;
    }
    if args.json {
        let json = serde_json::json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "architecture": saved.spec.torch_module(),
            "layers": reports,
        });
        println!("{json}");
        return Ok(());
    }
    print_table(&reports, gaps.is_some());
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// Tensor `tensor` of the BatchNorm `layer`.
fn tensor<'a>(
    saved: &'a ModelCheckpoint,
    layer: &BatchNormNode,
    tensor: &str,
) -> Result<&'a [f32]> {
    saved.model.tensor(&format!("{}.{tensor}", layer.name))
}

fn report(saved: &ModelCheckpoint, layer: &BatchNormNode, gap: Option<Gap>) -> Result<LayerReport> {
    let gamma = tensor(saved, layer, "weight")?;
    Ok(LayerReport {
        layer: layer.name.clone(),
        kind: layer.kind,
        features: layer.features,
        gamma: Range::of(gamma),
        beta: Range::of(tensor(saved, layer, "bias")?),
        running_mean: Range::of(tensor(saved, layer, "running_mean")?),
        running_var: Range::of(tensor(saved, layer, "running_var")?),
        small_gamma_channels: (gamma.iter().enumerate())
            .filter(|(_, g)| g.abs() < SMALL_GAMMA)
            .map(|(channel, _)| channel)
            .collect(),
        batches_tracked: saved.model.batches_tracked(&layer.name)?,
        gap,
    })
}

/// Each layer's gap between training-mode and eval-mode outputs on the first `GAP_IMAGES`
/// validation images, both from the float64 BatchNorm reference on the layer's input in an
/// eval-mode pass.
fn gaps(saved: &ModelCheckpoint, layers: &[BatchNormNode], data: &Mnist) -> Result<Vec<Gap>> {
    let first = split_point(data.train.len(), 0.1);
    let rows = GAP_IMAGES.min(data.train.len() - first);
    if rows < 2 {
        return Err(Error::InvalidArgument(
            "the dataset holds too few validation images to compare statistics on".to_string(),
        ));
    }
    let cpu = CpuBackend;
    let mut model = Sequential::upload(&cpu, &saved.spec, &saved.model)?;
    let images = &data.train.images[first * PIXELS..(first + rows) * PIXELS];
    let labels = &data.train.labels[first..first + rows];
    let images = cpu.upload_images(images, PIXELS, labels)?;
    let index = cpu.upload_indices(&(0..rows as u32).collect::<Vec<_>>())?;
    let mut x = cpu.scratch(rows * PIXELS)?;
    let mut gathered_labels = cpu.scratch(rows)?;
    cpu.gather(&images, &index, 0, &mut x, &mut gathered_labels)?;
    let inputs = model.batchnorm_inputs(&cpu, x, rows)?;
    let eps = f64::from(saved.spec.batchnorm_config().eps());
    (layers.iter().zip(&inputs))
        .map(|(layer, input)| {
            let (gamma, beta) = (
                tensor(saved, layer, "weight")?,
                tensor(saved, layer, "bias")?,
            );
            let mean = tensor(saved, layer, "running_mean")?;
            let var = tensor(saved, layer, "running_var")?;
            let shape = BatchNormShape::new(input.len() / layer.features, layer.features, 1);
            let train = batchnorm::forward_train(input, shape, gamma, beta, mean, var, eps, 0.0).y;
            let eval = batchnorm::forward_eval(input, shape, gamma, beta, mean, var, eps);
            Ok(gap(&train, &eval))
        })
        .collect()
}

/// The gap between one layer's training-mode and eval-mode outputs.
fn gap(train: &[f64], eval: &[f64]) -> Gap {
    let difference: f64 = train.iter().zip(eval).map(|(t, e)| (t - e).abs()).sum();
    let magnitude: f64 = train.iter().map(|t| t.abs()).sum();
    let relative = difference / magnitude.max(f64::MIN_POSITIVE);
    Gap {
        mean_abs: difference / train.len() as f64,
        relative,
        stale: relative > STALE_RELATIVE_GAP,
    }
}

fn print_table(reports: &[LayerReport], with_gap: bool) {
    let range = |r: Range| format!("[{:.3}, {:.3}]", r.min, r.max);
    print!(
        "{:>5}  {:<11}  {:>8}  {:>18}  {:>18}  {:>18}  {:>18}  {:>8}",
        "layer", "kind", "features", "γ", "β", "running mean", "running var", "|γ|<1e-3"
    );
    println!("{}", if with_gap { "  train/eval gap" } else { "" });
    for r in reports {
        print!(
            "{:>5}  {:<11}  {:>8}  {:>18}  {:>18}  {:>18}  {:>18}  {:>8}",
            r.layer,
            r.kind,
            r.features,
            range(r.gamma),
            range(r.beta),
            range(r.running_mean),
            range(r.running_var),
            r.small_gamma_channels.len()
        );
        match r.gap {
            Some(gap) => println!(
                "  {:.4} ({:.1}%){}",
                gap.mean_abs,
                100.0 * gap.relative,
                if gap.stale { "  STALE" } else { "" }
            ),
            None => println!(),
        }
    }
    if with_gap {
        println!(
            "train/eval gap: mean |y_train - y_eval| of each layer on {GAP_IMAGES} validation \
             images (relative to mean |y_train|); STALE above {:.0}%: `wgnorm recalibrate` \
             recomputes the running statistics",
            100.0 * STALE_RELATIVE_GAP
        );
    }
}

/// Each layer's running variance and γ per channel, a row of two panels per layer.
fn plot(
    path: &std::path::Path,
    saved: &ModelCheckpoint,
    layers: &[BatchNormNode],
    reports: &[LayerReport],
) -> Result<()> {
    let series = |values: &[f32]| -> Vec<(f64, f64)> {
        (values.iter().enumerate())
            .map(|(channel, &v)| (channel as f64, f64::from(v)))
            .collect()
    };
    let mut drawn = Vec::new();
    for (layer, report) in layers.iter().zip(reports) {
        let gamma = tensor(saved, layer, "weight")?;
        let panel = |what: &str, y_label: &str, values: &[f32], log10_y: bool| Panel {
            title: format!("{} {} ({})", report.kind, layer.name, what),
            x_label: "channel".to_string(),
            y_label: y_label.to_string(),
            lines: vec![Line {
                label: what.to_string(),
                points: series(values),
            }],
            log2_x: false,
            log10_y,
        };
        drawn.push(panel(
            "running variance",
            "variance",
            tensor(saved, layer, "running_var")?,
            true,
        ));
        drawn.push(panel("γ", "γ", gamma, false));
    }
    panels(path, "BatchNorm layers", &drawn, 2)
}
