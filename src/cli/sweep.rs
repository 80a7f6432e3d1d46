//! `wgnorm sweep`: one run per (model, learning rate, batch size), tabulated and plotted.

use std::path::PathBuf;

use clap::Args;

use super::experiment::{PlannedRun, check_fresh, run_all, write_text};
use super::models::{ModelChoice, RunModel, parse_norm};
use super::run_args::RunArgs;
use crate::plot::{self, Line, Panel};
use crate::report::{RunResult, summarize};
use wgnorm::graph::Norm;
use wgnorm::{Error, Result};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Batch sizes to train with (in place of --batch-size).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    batch_sizes: Vec<usize>,
    /// Models to train [default: mlp-bn,mlp; mlp with --norms or --norm].
    #[arg(long, value_enum, value_delimiter = ',')]
    models: Option<Vec<ModelChoice>>,
    /// Each of --models (mlp, cnn or a resnet) with each of these normalizations,
    /// comma-separated (bn, ln, gn<G>, in, none).
    #[arg(long, value_delimiter = ',', value_parser = parse_norm)]
    norms: Option<Vec<Norm>>,
    /// Seeds per (model, learning rate, batch size): --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    repeats: u64,
    /// Learning rates to sweep as well (in place of --lr); plots a heat map.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// Directory for sweep.json, sweep.md, sweep.png and each run's files.
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
}

pub fn run(args: SweepArgs) -> Result<()> {
    args.run.device.check()?;
    let chosen = (args.models.clone()).unwrap_or_else(|| match (&args.norms, args.run.norm) {
        (None, None) => vec![ModelChoice::MlpBn, ModelChoice::Mlp],
        _ => vec![ModelChoice::Mlp],
    });
    if args.batch_sizes.is_empty() || chosen.is_empty() || args.repeats == 0 {
        return Err(Error::InvalidArgument(
            "--batch-sizes, --models and --repeats need at least one value".to_string(),
        ));
    }
    if args.run.batch_size.is_some() {
        return Err(Error::InvalidArgument(
            "sweep takes --batch-sizes (a comma-separated list), not --batch-size".to_string(),
        ));
    }
    if args.run.lr.is_some() && !args.lrs.is_empty() {
        return Err(Error::InvalidArgument(
            "--lr has no effect beside --lrs, which sweeps the learning rate (put every rate \
             in --lrs)"
                .to_string(),
        ));
    }
    let norms: Vec<Option<Norm>> = match (&args.norms, args.run.norm) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidArgument(
                "--norm has no effect beside --norms, which lists every normalization swept"
                    .to_string(),
            ));
        }
        (Some(norms), None) => norms.iter().copied().map(Some).collect(),
        (None, norm) => vec![norm],
    };
    let mut models: Vec<RunModel> = Vec::new();
    for model in &chosen {
        for &norm in &norms {
            models.push(model.with_norm(norm)?);
        }
    }
    args.run
        .refuse_unused_batchnorm_flags(&models, "--models")?;
    check_fresh(&args.out, "sweep.json")?;
    let lrs: Vec<Option<f64>> = if args.lrs.is_empty() {
        vec![args.run.lr]
    } else {
        args.lrs.iter().copied().map(Some).collect()
    };
    let mut plan = Vec::new();
    for repeat in 0..args.repeats {
        for &model in &models {
            for &lr in &lrs {
                for &batch_size in &args.batch_sizes {
                    let mut config = args.run.config(model)?;
                    config.batch_size = batch_size;
                    config.seed = args.run.seed + repeat;
                    if let Some(lr) = lr {
                        config.optimizer = config.optimizer.with_lr(lr);
                    }
                    let dir = args.out.join(format!(
                        "{}-batch{batch_size}-lr{}-seed{}",
                        model.name(),
                        config.optimizer.lr(),
                        config.seed
                    ));
                    plan.push(PlannedRun { model, config, dir });
                }
            }
        }
    }
    let heat = !args.lrs.is_empty();
    let models: Vec<String> = models.iter().map(|m| m.name()).collect();
    let out = args.out.clone();
    let mut save = |runs: &[RunResult]| -> Result<()> {
        let json = serde_json::json!({ "runs": runs });
        write_text(&out, "sweep.json", &serde_json::to_string_pretty(&json)?)?;
        write_text(&out, "sweep.md", &markdown(runs))?;
        let png = out.join("sweep.png");
        if heat {
            plot::heat_map(
                &png,
                "Test accuracy over batch size and learning rate",
                runs,
                &models,
            )
        } else {
            lines(&png, runs, &models)
        }
    };
    let runs = run_all(&args.run, plan, &mut save)?;
    println!("{}", markdown(&runs));
    Ok(())
}

fn percent(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{:.2}", v * 100.0))
}

/// One row per run; diverged runs say so.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut md = String::from(
        "# Batch-size sweep\n\n| model | batch | lr | seed | val acc (%) | test acc (%) | test acc, \
         batch statistics (%) | val loss | s/epoch | samples/s |\n| --- | --- | --- | --- | --- | \
         --- | --- | --- | --- | --- |\n",
    );
    for r in runs {
        let last = r.last_epoch();
        if r.diverged.is_some() {
            md += &format!(
                "| {} | {} | {} | {} | diverged | diverged | – | – | – | – |\n",
                r.model, r.batch_size, r.lr, r.seed
            );
            continue;
        }
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.model,
            r.batch_size,
            r.lr,
            r.seed,
            percent(last.and_then(|e| e.val_acc)),
            percent(r.test_acc),
            percent(r.test_acc_batch_stats),
            last.and_then(|e| e.val_loss)
                .map_or("–".to_string(), |v| format!("{v:.4}")),
            r.seconds_per_epoch
                .map_or("–".to_string(), |v| format!("{v:.2}")),
            r.samples_per_second
                .map_or("–".to_string(), |v| format!("{v:.0}")),
        );
    }
    md += "\nSeconds per epoch include the validation pass; samples/s is training images per \
           second of that time. With BatchNorm, the batch-statistics accuracy normalizes each \
           test batch of the run's batch size by its own statistics instead of the running \
           ones.\n";
    md += &summary(runs);
    for r in runs {
        if let Some(reason) = &r.diverged {
            md += &format!(
                "\n- {} batch {} lr {} diverged: {reason}",
                r.model, r.batch_size, r.lr
            );
        }
    }
    md
}

/// `pick` of `model`'s runs against batch size, the mean over the seeds of each batch size.
fn seed_means(
    runs: &[RunResult],
    model: &str,
    pick: fn(&RunResult) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut batches: Vec<usize> = (runs.iter())
        .filter(|r| r.model == model)
        .map(|r| r.batch_size)
        .collect();
    batches.sort_unstable();
    batches.dedup();
    (batches.into_iter())
        .filter_map(|batch| {
            let values: Vec<f64> = (runs.iter())
                .filter(|r| r.model == model && r.batch_size == batch)
                .filter_map(pick)
                .collect();
            summarize(&values).map(|s| (batch as f64, s.mean))
        })
        .collect()
}

/// Per (model, batch size, learning rate), the mean ± standard deviation over seeds of the
/// test accuracy, with batch statistics, and the gap between the two.
fn summary(runs: &[RunResult]) -> String {
    let mut keys: Vec<(String, usize, u64)> = (runs.iter())
        .map(|r| (r.model.clone(), r.batch_size, r.lr.to_bits()))
        .collect();
    keys.dedup();
    keys.sort_by_key(|(model, batch, _)| (runs.iter().position(|r| &r.model == model), *batch));
    keys.dedup();
    let mut md = String::from(
        "\n## Over seeds\n\n| model | batch | lr | runs | test acc (%) | test acc, batch \
         statistics (%) | batch statistics − running (points) |\n| --- | --- | --- | --- | --- \
         | --- | --- |\n",
    );
    for (model, batch, lr) in keys {
        let of = (runs.iter())
            .filter(|r| r.model == model && r.batch_size == batch && r.lr.to_bits() == lr)
            .filter(|r| r.diverged.is_none());
        let (acc, stats): (Vec<f64>, Vec<Option<f64>>) = of
            .filter_map(|r| Some((r.test_acc?, r.test_acc_batch_stats)))
            .unzip();
        let stats: Vec<f64> = stats.iter().flatten().copied().collect();
        let gaps: Vec<f64> = (acc.iter().zip(&stats)).map(|(a, s)| s - a).collect();
        let cell =
            |values: &[f64]| summarize(values).map_or("–".to_string(), |s| s.format(100.0, 2));
        md += &format!(
            "| {model} | {batch} | {} | {} | {} | {} | {} |\n",
            f64::from_bits(lr),
            acc.len(),
            cell(&acc),
            cell(&stats),
            cell(&gaps)
        );
    }
    md
}

/// Accuracy and time against batch size, one line per model.
fn lines(path: &std::path::Path, runs: &[RunResult], models: &[String]) -> Result<()> {
    type Pick = fn(&RunResult) -> Option<f64>;
    let panels: [(&str, &str, Pick); 5] = [
        ("validation accuracy", "accuracy", |r| {
            r.last_epoch().and_then(|e| e.val_acc)
        }),
        ("test accuracy", "accuracy", |r| r.test_acc),
        (
            "test accuracy, BatchNorm with batch statistics",
            "accuracy",
            |r| r.test_acc_batch_stats,
        ),
        ("seconds per epoch", "seconds", |r| r.seconds_per_epoch),
        ("training samples per second", "samples/s", |r| {
            r.samples_per_second
        }),
    ];
    let panels: Vec<Panel> = panels
        .iter()
        .map(|&(title, y_label, pick)| Panel {
            title: title.to_string(),
            x_label: "batch size".to_string(),
            y_label: y_label.to_string(),
            log2_x: true,
            log10_y: false,
            lines: models
                .iter()
                .map(|model| Line {
                    label: model.clone(),
                    points: seed_means(runs, model, pick),
                })
                .collect(),
        })
        .collect();
    plot::panels(path, "batch-size sweep", &panels, 2)
}
